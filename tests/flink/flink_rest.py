"""What the Flink tests read from the REST API and the Prometheus reporter.

The REST calls go through the project's client (``runners.flink_rest``,
which deploys with them); ``FlinkRest`` adds the reads only tests and
benchmarks need. How Beam metrics show up on Flink 1.19 with Beam 2.62
(portable runner) is written down in flink/README.md; the functions below
read them the ways described there.
"""
from __future__ import annotations

import base64
import json
import re
import time
import typing
import urllib.parse
import urllib.request

from runners.flink_rest import TERMINAL_STATES, FlinkRestClient, SubmitError

__all__ = ["FlinkRest", "wait_for", "prometheus_samples", "metric_name"]

# Flink's watermark bounds (Long.MIN_VALUE / Long.MAX_VALUE) as the REST API shows them.
MIN_WATERMARK = -(2**63)
MAX_WATERMARK = 2**63 - 1


def wait_for(predicate: typing.Callable[[], typing.Any], timeout_s: float, what: str, interval_s: float = 1.0):
    """Polls ``predicate`` until it returns a truthy value; raises after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last_error: typing.Optional[BaseException] = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, ValueError, KeyError, SubmitError) as e:  # server not answering yet, partial JSON
            last_error = e
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}" + (f" (last error: {last_error})" if last_error else ""))
        time.sleep(interval_s)


def metric_name(namespace: str, name: str) -> str:
    """The name Flink gives a Beam user metric: ``<namespace>.<name>``.

    (The REST API's metric ids show the dot as ``_``; Prometheus turns both
    into ``_`` and prefixes ``flink_taskmanager_job_task_operator_``.)
    """
    return f"{namespace}.{name}"


class FlinkRest:
    """Test reads over the project's ``FlinkRestClient`` (``self.client``)."""

    def __init__(self, base_url: str = "http://127.0.0.1:18081", timeout_s: float = 10.0):
        self.client = FlinkRestClient(base_url, timeout_s=timeout_s)
        self.base_url = self.client.base_url

    def get(self, path: str) -> typing.Any:
        return self.client.get(path)

    # ------------------------------------------------------------- jobs ---

    def jobs(self) -> typing.List[dict]:
        return self.client.jobs_overview()["jobs"]

    def job_id_by_name(self, name: str) -> typing.Optional[str]:
        """The newest job called ``name`` (Beam passes --job_name to Flink as is)."""
        matches = [j for j in self.jobs() if j["name"] == name]
        if not matches:
            return None
        return max(matches, key=lambda j: j["start-time"])["jid"]

    def job(self, jid: str) -> dict:
        job = self.client.job(jid)
        if job is None:
            raise KeyError(f"Flink does not know job {jid}")
        return job

    def state(self, jid: str) -> str:
        return self.job(jid)["state"]

    def wait_state(self, jid: str, states: typing.Iterable[str], timeout_s: float) -> str:
        wanted = set(states)
        return wait_for(lambda: (s := self.state(jid)) in wanted and s, timeout_s, f"job {jid} in {sorted(wanted)}")

    def cancel(self, jid: str) -> None:
        """Cancels ``jid`` unless it already ended."""
        self.client.cancel_if_running(jid)

    def cancel_and_wait(self, jid: str, timeout_s: float = 60) -> str:
        """Cancels ``jid`` (unless it already ended) and waits until it has; returns its state."""
        self.cancel(jid)
        return self.wait_state(jid, TERMINAL_STATES, timeout_s)

    def checkpoint_counts(self, jid: str) -> dict:
        return self.client.checkpoints(jid)["counts"]

    def exceptions(self, jid: str) -> dict:
        return self.client.exceptions(jid)

    def watermarks_settled_at_max(self, jid: str) -> typing.Optional[bool]:
        """Whether every task's input watermark is +inf (None while some are still unset).

        In a healthy unbounded job the stages after the source carry a finite
        watermark; all of them at +inf right after start-up is the Beam 2.62
        start-up race described in flink/README.md (the source never got its
        partitions; --finish_bundle_before_checkpointing prevents it).
        """
        values = []
        for vertex in self.job(jid)["vertices"]:
            values.extend(int(m["value"]) for m in self.get(f"/jobs/{jid}/vertices/{vertex['id']}/watermarks"))
        if not values or any(v <= MIN_WATERMARK for v in values):
            return None
        return all(v >= MAX_WATERMARK for v in values)

    def describe(self, jid: str) -> str:
        """State, checkpoints and per-vertex input watermarks: context for a failed assertion."""
        try:
            job = self.job(jid)
            lines = [f"job {jid} {job['state']}, checkpoints {self.checkpoint_counts(jid)}"]
            for vertex in job["vertices"]:
                marks = self.get(f"/jobs/{jid}/vertices/{vertex['id']}/watermarks")
                lines.append(f"  {vertex['name'][:70]} {vertex['status']} watermarks={[m['value'] for m in marks]}")
            return "\n".join(lines)
        except (OSError, ValueError, KeyError, SubmitError) as e:
            return f"job {jid}: no details ({e})"

    # ---------------------------------------------------------- metrics ---

    def user_metric(self, jid: str, namespace: str, name: str) -> typing.Optional[float]:
        """Sum over all operators and subtasks of a Beam user counter of a RUNNING job.

        Reads the operator metrics the TaskManagers report (they disappear when
        the job ends). None when no operator reports the metric (yet).
        """
        wanted = (f"{namespace}_{name}", metric_name(namespace, name))
        total: typing.Optional[float] = None
        for vertex in self.job(jid)["vertices"]:
            vid = vertex["id"]
            ids = {m["id"] for m in self.get(f"/jobs/{jid}/vertices/{vid}/metrics")}
            # "<subtask>.<operator name>.<metric>" -> "<operator name>.<metric>"
            per_operator = {i.split(".", 1)[1] for i in ids if i.endswith(wanted) and "." in i}
            for metric in sorted(per_operator):
                query = urllib.parse.quote(metric, safe="")
                rows = self.get(f"/jobs/{jid}/vertices/{vid}/subtasks/metrics?get={query}&agg=sum")
                for row in rows:
                    total = (total or 0.0) + float(row["sum"])
        return total

    def accumulator_user_counters(self, jid: str) -> typing.Dict[typing.Tuple[str, str], int]:
        """Beam user counters of a job from its accumulators: {(namespace, name): value}.

        Beam's Flink runner keeps every metric of the job in one accumulator,
        ``__metricscontainers``, a JSON dump of MonitoringInfos; user counters
        have urn ``beam:metric:user:sum_int64:v1``, labels NAMESPACE/NAME and
        a base64 varint payload. Available for finished jobs too.
        """
        from apache_beam.coders import VarIntCoder

        acc = self.get(f"/jobs/{jid}/accumulators")
        out: typing.Dict[typing.Tuple[str, str], int] = {}
        for entry in acc.get("user-task-accumulators", []):
            if entry["name"] != "__metricscontainers":
                continue
            dump = json.loads(entry["value"])
            for info in dump.get("metrics", {}).get("attempted", []):
                if info.get("urn") != "beam:metric:user:sum_int64:v1":
                    continue
                labels = info["labels"]
                key = (labels["NAMESPACE"], labels["NAME"])
                value = VarIntCoder().decode(base64.b64decode(info["payload"]))
                out[key] = out.get(key, 0) + value
        return out


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def prometheus_samples(url: str, metric_suffix: str, **label_filter: str) -> typing.List[typing.Tuple[dict, float]]:
    """Samples of metrics whose name ends with ``metric_suffix``, as (labels, value)."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode("utf-8")
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m or not m.group("name").endswith(metric_suffix):
            continue
        labels = dict(_LABEL.findall(m.group("labels") or ""))
        if all(labels.get(k) == v for k, v in label_filter.items()):
            out.append((labels, float(m.group("value"))))
    return out
