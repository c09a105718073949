"""The Flink REST client the project deploys with (Flink 1.19 API, ``/v1`` paths).

``FlinkRestClient`` makes the calls a deploy needs: cluster config, job
overview and state, exceptions, checkpoints, jar upload and run, stop with
savepoint, cancel. Reads are retried through a short outage (a JobManager
failing over, a port-forward reconnecting); writes are not, they may have
happened. Every failed call raises ``SubmitError`` with the method, URL and
Flink's answer.

The pure helpers read Flink's answers: ``JobProgress`` (what ``GET
/jobs/<id>`` says, reduced to what a deploy waits for), ``root_exception`` /
``blocking_failure`` (``GET /jobs/<id>/exceptions``), ``savepoint_outcome``,
``running_jobs_named``, ``jar_id_from_upload``.

Used by ``runners.submit`` (the command line), ``runners.uberjar`` (the
upload and run of a pipeline's jar) and the Flink tests
(``tests/flink/flink_rest.py``).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
import typing

import requests

__all__ = [
    "FlinkRestClient",
    "JobProgress",
    "SubmitError",
    "TERMINAL_STATES",
    "blocking_failure",
    "check_job_id",
    "jar_id_from_upload",
    "normalize_master",
    "root_exception",
    "running_jobs_named",
    "savepoint_outcome",
]

_LOG = logging.getLogger("runners.flink_rest")

# Requests to the REST API are small except the jar upload (about 100 MB).
REST_TIMEOUT_S = 30
UPLOAD_TIMEOUT_S = 600
GET_ATTEMPTS = 4
GET_RETRY_DELAY_S = 2.0

TERMINAL_STATES = frozenset({"FINISHED", "FAILED", "CANCELED", "SUSPENDED"})
_FAILED_STATES = frozenset({"FAILED", "CANCELED", "SUSPENDED", "FAILING", "CANCELLING"})
_TASK_OK_STATES = frozenset({"RUNNING", "FINISHED"})


class SubmitError(RuntimeError):
    """A submission, stop or status request that did not succeed; ``str`` is the reason."""


def normalize_master(flink_master: str) -> str:
    """``host:port`` or ``http(s)://host:port[/]`` -> ``http(s)://host:port``."""
    master = flink_master.strip().rstrip("/")
    if not master:
        raise ValueError("--flink_master is empty")
    if "://" not in master:
        master = "http://" + master
    if not master.startswith(("http://", "https://")):
        raise ValueError(f"--flink_master must be an http(s) URL or host:port, got {flink_master!r}")
    return master


def check_job_id(job_id: str) -> str:
    if len(job_id) != 32 or any(c not in "0123456789abcdef" for c in job_id):
        raise ValueError(f"a Flink job id is 32 lowercase hex digits, got {job_id!r}")
    return job_id


def jar_id_from_upload(response: typing.Mapping[str, typing.Any]) -> str:
    """``POST /jars/upload`` answers ``{"filename": "/tmp/.../<id>_beam.jar", "status": "success"}``."""
    if response.get("status") != "success" or not response.get("filename"):
        raise SubmitError(f"jar upload was not accepted: {response}")
    return str(response["filename"]).rstrip("/").split("/")[-1]


def _shorten(text: str, max_lines: int) -> str:
    # A Beam Python error sits deep in the Java stack trace, so the lines that
    # name exceptions (``...Error:``, ``Caused by``) are kept after the head.
    lines = [line.rstrip() for line in str(text).splitlines() if line.strip()]
    head = lines[:max_lines]
    named = [
        line
        for line in lines[max_lines:]
        if ("Error" in line or "Exception" in line) and not line.lstrip().startswith("at ")
    ]
    return "\n".join(head + named[-max_lines:])


def _failure_texts(exceptions: typing.Mapping[str, typing.Any]) -> typing.List[str]:
    """Stack traces in a ``GET /jobs/<id>/exceptions`` answer, newest first.

    Flink 1.19 answers with ``exceptionHistory.entries`` (newest first) and
    the older ``root-exception`` field.
    """
    entries = (exceptions.get("exceptionHistory") or {}).get("entries") or []
    texts = [str(text) for text in (e.get("stacktrace") or e.get("exceptionName") for e in entries) if text]
    if not texts and exceptions.get("root-exception"):
        texts = [str(exceptions["root-exception"])]
    return texts


# Flink restarts a job whose slots are not there yet (e.g. while a stopped
# job's slots are being released); the job runs once they are. Not a failure
# of the submitted code, so waiting goes on until the timeout.
_TRANSIENT_FAILURES = ("NoResourceAvailableException",)


def failure_texts(exceptions: typing.Mapping[str, typing.Any]) -> typing.List[str]:
    """Every stack trace Flink recorded for a job, newest first, unshortened."""
    return _failure_texts(exceptions)


def root_exception(exceptions: typing.Mapping[str, typing.Any], max_lines: int = 12) -> typing.Optional[str]:
    """The first lines of the newest failure recorded for a job, if any."""
    texts = _failure_texts(exceptions)
    return _shorten(texts[0], max_lines) if texts else None


def blocking_failure(exceptions: typing.Mapping[str, typing.Any], max_lines: int = 12) -> typing.Optional[str]:
    """The newest recorded failure that is not a transient shortage of slots, if any."""
    for text in _failure_texts(exceptions):
        if not any(marker in text for marker in _TRANSIENT_FAILURES):
            return _shorten(text, max_lines)
    return None


def savepoint_outcome(status: typing.Mapping[str, typing.Any]) -> typing.Optional[str]:
    """Reads ``GET /jobs/<id>/savepoints/<trigger>``: None while in progress, the path when done.

    Raises SubmitError with Flink's failure cause when the savepoint failed.
    """
    state = (status.get("status") or {}).get("id")
    if state == "IN_PROGRESS":
        return None
    if state != "COMPLETED":
        raise SubmitError(f"unexpected savepoint status: {status}")
    operation = status.get("operation") or {}
    if operation.get("location"):
        return str(operation["location"])
    cause = operation.get("failure-cause") or {}
    reason = cause.get("stack-trace") or cause.get("class") or json.dumps(operation)
    raise SubmitError("savepoint failed: " + "\n".join(str(reason).splitlines()[:12]))


@dataclasses.dataclass(frozen=True)
class JobProgress:
    """What ``GET /jobs/<id>`` says about a job, reduced to what a deploy waits for."""

    state: str
    tasks_total: int
    tasks_ok: int

    @classmethod
    def from_job(cls, job: typing.Mapping[str, typing.Any]) -> "JobProgress":
        vertices = job.get("vertices") or []
        ok = sum(1 for v in vertices if v.get("status") in _TASK_OK_STATES)
        return cls(state=str(job.get("state", "UNKNOWN")), tasks_total=len(vertices), tasks_ok=ok)

    @property
    def all_running(self) -> bool:
        """Job RUNNING and every vertex deployed (RUNNING, or FINISHED for bounded parts)."""
        return self.state == "RUNNING" and self.tasks_total > 0 and self.tasks_ok == self.tasks_total

    @property
    def failed(self) -> bool:
        return self.state in _FAILED_STATES

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


def running_jobs_named(overview: typing.Mapping[str, typing.Any], name: str) -> typing.List[str]:
    """Ids of the jobs called ``name`` in ``GET /jobs/overview`` that are not in a terminal state."""
    return [
        job["jid"]
        for job in overview.get("jobs", [])
        if job.get("name") == name and job.get("state") not in TERMINAL_STATES
    ]


class FlinkRestClient:
    """The Flink REST calls a deploy needs (Flink 1.19 API, ``/v1`` paths);
    ``get`` reads any other path (tests and benchmarks read metrics, watermarks
    and accumulators with it)."""

    def __init__(self, flink_master: str, timeout_s: float = REST_TIMEOUT_S):
        self.base_url = normalize_master(flink_master)
        self.timeout_s = timeout_s
        self._session = requests.Session()

    def _call(self, method: str, path: str, expected: typing.Collection[int] = (200,), **kwargs):
        url = f"{self.base_url}/v1/{path.lstrip('/')}"
        kwargs.setdefault("timeout", self.timeout_s)
        # Reads are retried through a short outage (a JobManager failing over,
        # a port-forward reconnecting); writes are not, they may have happened.
        attempts = GET_ATTEMPTS if method == "GET" else 1
        for attempt in range(1, attempts + 1):
            try:
                response = self._session.request(method, url, **kwargs)
                break
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt == attempts:
                    raise SubmitError(f"{method} {url}: {exc}") from exc
                _LOG.warning("%s %s failed (%s); retrying", method, url, exc)
                time.sleep(GET_RETRY_DELAY_S)
            except requests.RequestException as exc:
                raise SubmitError(f"{method} {url}: {exc}") from exc
        if response.status_code not in expected:
            raise SubmitError(f"{method} {url} answered {response.status_code}: {response.text[:2000]}")
        return response.json() if response.content else {}

    def get(self, path: str) -> typing.Any:
        """``GET <path>`` (relative to ``/v1``, query string allowed) as JSON."""
        return self._call("GET", path)

    def config(self) -> dict:
        return self._call("GET", "config")

    def jobs_overview(self) -> dict:
        return self._call("GET", "jobs/overview")

    def job(self, job_id: str) -> typing.Optional[dict]:
        """``GET /jobs/<id>``, or None while Flink does not know the job yet."""
        url_path = f"jobs/{job_id}"
        try:
            return self._call("GET", url_path)
        except SubmitError as exc:
            if " answered 404" in str(exc):
                return None
            raise

    def exceptions(self, job_id: str) -> dict:
        return self._call("GET", f"jobs/{job_id}/exceptions")

    def checkpoints(self, job_id: str) -> dict:
        return self._call("GET", f"jobs/{job_id}/checkpoints")

    def upload_jar(self, jar_path: str) -> str:
        with open(jar_path, "rb") as jar:
            answer = self._call(
                "POST",
                "jars/upload",
                files={"jarfile": ("beam-pipeline.jar", jar, "application/x-java-archive")},
                timeout=UPLOAD_TIMEOUT_S,
            )
        return jar_id_from_upload(answer)

    def run_jar(self, jar_id: str, body: typing.Mapping[str, typing.Any]) -> str:
        # Flink runs the jar's main() inside this request; Beam translates the
        # pipeline there, so allow more than a plain call.
        answer = self._call("POST", f"jars/{jar_id}/run", json=dict(body), timeout=UPLOAD_TIMEOUT_S)
        return str(answer["jobid"])

    def delete_jar(self, jar_id: str) -> None:
        self._call("DELETE", f"jars/{jar_id}")

    def trigger_stop(self, job_id: str, savepoint_dir: typing.Optional[str], drain: bool) -> str:
        body: typing.Dict[str, typing.Any] = {"drain": drain}
        if savepoint_dir:
            body["targetDirectory"] = savepoint_dir
        return str(self._call("POST", f"jobs/{job_id}/stop", expected=(200, 202), json=body)["request-id"])

    def savepoint_status(self, job_id: str, trigger_id: str) -> dict:
        return self._call("GET", f"jobs/{job_id}/savepoints/{trigger_id}")

    def cancel(self, job_id: str) -> None:
        self._call("PATCH", f"jobs/{job_id}", expected=(200, 202), params={"mode": "cancel"})

    def cancel_if_running(self, job_id: str) -> bool:
        """Cancels ``job_id`` unless Flink does not know it or it has ended;
        True when a cancel was sent."""
        job = self.job(job_id)
        if job is None or JobProgress.from_job(job).terminal:
            return False
        self.cancel(job_id)
        return True
