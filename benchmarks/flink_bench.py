"""A streaming job (frontend or text agent) on the local Flink cluster: throughput, latency, memory.

    python benchmarks/flink_bench.py                      # 1,000,000 events
    python benchmarks/flink_bench.py --events=100000 --latency-events=1000
    python benchmarks/flink_bench.py --pipeline=text_agent --events=100000
    python benchmarks/flink_bench.py --services=both --events=100000   # plaintext, then TLS+SASL

Starts the services and the cluster if needed (``services/services.sh up``,
``flink/cluster.sh up``), then:

1. produces ``--events`` generated frontend events (2 % malformed, 1 %
   duplicated), or text-agent turns with ``--pipeline=text_agent``, to a
   fresh topic of ``--partitions`` partitions (timed on its own); with
   ``--backlog-rate`` (the default) each record's Kafka timestamp is its
   event time, as a collector producing events as they happen gives, so the
   reader's watermark follows event time (``record_times``);
2. submits ``python -m beam_pipelines.<pipeline> --profile=flink-local
   --streaming`` (LOOPBACK: the Python SDK worker runs inside that child
   process) against Kafka, PostgreSQL, Redis and the S3 archive, and measures
   the sustained rate at which the backlog drains (events/s = events / time
   from the first PostgreSQL row to the moment every sink is done: every
   distinct valid event a PostgreSQL row, and the archive's and the Redis
   sinks' written counters at their expected totals). CPU counts every
   process the job uses: TaskManagers, the JobManager, and the job process
   with all its children (LOOPBACK SDK workers, the job-server JVM). The
   state size of the job's checkpoints is printed at the start and the end
   of the drain;
3. then produces ``--latency-events`` more at ``--latency-rate`` events/s and
   polls Redis (the per-minute KPI set of each event) and PostgreSQL for each
   one: p50/p95 latency from the producer's send to the first poll that sees
   it (polling every 100 ms, so figures are +-0.1 s), and beside it each
   sink's own p50/p95 write time per batch (PostgreSQL, Redis, ...) from its
   latency-bucket counters (iheard_io.sink_base; resolution: the buckets);
4. reads peak RSS (VmHWM) of the TaskManager JVM and of the child Python
   process hosting the SDK worker, and, with ``--profile-seconds`` > 0 and
   py-spy installed, samples the worker process during the drain and prints
   the functions it spent most time in;
5. next to it, on the same topic: raw kafka-python consume + JSON decode
   rate, and the naive per-event consumer (decode, INSERT, COMMIT per event)
   on ``--naive-events`` events, both from benchmarks/io_bench.py.

``--services=secure`` runs the drain against ``services.sh up --secure``
(SASL_SSL Kafka, TLS PostgreSQL and Redis with passwords, signed HTTPS S3;
the job gets every setting and secret from that set's environment, none as a
flag), ``--services=both`` runs the plaintext drain and then the secure one
on the same cluster and prints events/s and events per CPU-second of each
(drain only: steps 3-5 speak plaintext). CPU counts the job's processes,
not the servers' side of TLS.

Rows are written under session ids unique to the run; the job is cancelled and
the topic deleted at the end. Figures vary with machine load: the 2-core
machine here also runs Kafka, PostgreSQL, Redis, the S3 server and Flink.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import typing
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import io_bench  # noqa: E402  (raw consume and naive consumer, shared with io_bench)

from iheard_io import settings  # noqa: E402

from tests.flink.flink_rest import FlinkRest, wait_for  # noqa: E402
from tests.support import (  # noqa: E402
    end_process,
    parse_exports,
    jobmanager_pids,
    proc_status_kib,
    script_env,
    taskmanager_pids,
)

KPI_PREFIX = "iheard:kpi:"
# The streaming archive's window (iheard_io.archive.DEFAULT_STREAMING_WINDOW_S).
ARCHIVE_WINDOW_S = 300


def _vertex_load(rest: FlinkRest, jid: str) -> typing.Dict[str, typing.Tuple[float, float]]:
    """Per vertex name: (records in per second, back-pressured ms per second), summed
    resp. maxed over subtasks. (Flink reports busy and idle time as NaN for the
    tasks that run Beam stages; back pressure on a vertex points at the first
    vertex after it that is not back-pressured as the bottleneck.)"""
    out = {}
    for v in rest.job(jid)["vertices"]:
        rows = rest.get(f"/jobs/{jid}/vertices/{v['id']}/subtasks/metrics"
                        "?get=numRecordsInPerSecond,backPressuredTimeMsPerSecond&agg=sum,max")
        vals = {r["id"]: r for r in rows}

        def num(metric, agg):
            try:
                value = float(vals.get(metric, {}).get(agg))
            except (TypeError, ValueError):
                return 0.0
            return 0.0 if value != value else value  # NaN -> 0

        out[v["name"]] = (num("numRecordsInPerSecond", "sum"), num("backPressuredTimeMsPerSecond", "max"))
    return out


# What each pipeline is benchmarked on: its module, the PostgreSQL table whose
# rows mark the drain, and the Redis sink whose written counter must reach
# the number of distinct valid events.
PIPELINES = {
    "frontend": {"module": "beam_pipelines.frontend", "table": "frontend_analytics", "redis": "WriteLiveKpis"},
    "text_agent": {"module": "beam_pipelines.text_agent", "table": "agent_turns", "redis": None},
}
# sample_turns makes 1-6 turns per conversation: about 3.5 lines each.
TURNS_PER_CONVERSATION = 3.5


def _generated_lines(pipeline: str, n: int, seed: int, start_ms: int) -> typing.Iterator[str]:
    from beam_pipelines.generate import frontend_events, sample_turns

    if pipeline == "frontend":
        return frontend_events(n, seed=seed, start_ms=start_ms)
    # A fifth more conversations than the mean needs, then the first n lines.
    return iter(sample_turns(int(n / TURNS_PER_CONVERSATION * 1.2) + 1, seed=seed, start_ms=start_ms)[:n])


def _events(n: int, run_id: str, seed: int, start_ms: int, pipeline: str = "frontend",
            span_ms: typing.Optional[int] = None) -> typing.Iterator[typing.Tuple[str, typing.Optional[dict]]]:
    """Generated lines with the run id in every session id: (line, payload or
    None if malformed). ``span_ms``: event times rescaled to run from
    ``start_ms`` over this many milliseconds (a backlog as dense as a live
    stream); None keeps the generator's spacing (a visit every ~10 s, so
    1,000,000 events span a month)."""
    lines = _generated_lines(pipeline, n, seed, start_ms)
    if span_ms is not None:
        lines = _rescaled(list(lines), start_ms, span_ms)
    for line in lines:
        try:
            payload = json.loads(line)
        except ValueError:
            yield line, None
            continue
        if isinstance(payload, dict) and isinstance(payload.get("session_id"), str):
            payload["session_id"] = f"{run_id}-{payload['session_id']}"
            yield json.dumps(payload, separators=(",", ":")), payload
        else:
            yield line, None


def record_times(lines: typing.Iterable[str]) -> typing.Iterator[typing.Tuple[str, typing.Optional[int]]]:
    """(line, Kafka record timestamp in ms): the payload's integer
    ``timestamp``, and for a line without one (malformed, ISO string) the
    last such time before it (None before the first: the producer's clock).

    The reader's watermark follows the record timestamps (``ReadFromKafka``
    has no payload ``timestamp_fn``) while ParseEvents re-stamps each event
    with its payload time. Records stamped at produce time would put the
    watermark minutes past a backlog's event times as soon as the first
    records are read, every later event would be late data, and the archive
    would write one small file set per late firing instead of one per
    window. A collector produces events when they happen, so the record
    timestamp is the event time (within seconds) there."""
    last: typing.Optional[int] = None
    for line in lines:
        try:
            payload = json.loads(line)
        except ValueError:
            payload = None
        ts = payload.get("timestamp") if isinstance(payload, dict) else None
        if isinstance(ts, int) and not isinstance(ts, bool) and ts >= 0:
            last = ts
        yield line, last


def _produce(kafka_config: typing.Mapping, topic: str, lines: typing.Iterable[str],
             event_times: bool = False) -> int:
    """Sends ``lines``; with ``event_times`` each record carries its event
    time (``record_times``), else the producer's clock."""
    from kafka import KafkaProducer

    producer = KafkaProducer(**kafka_config, linger_ms=20, batch_size=512 * 1024, acks=1)
    n = 0
    stamped = record_times(lines) if event_times else ((line, None) for line in lines)
    for line, timestamp_ms in stamped:
        producer.send(topic, line.encode(), timestamp_ms=timestamp_ms)
        n += 1
    producer.flush()
    producer.close()
    return n


class _JobCpu:
    """CPU seconds of every process a job uses, split into the TaskManagers
    and the rest (JobManager, the job process and all its descendants: SDK
    workers, job-server JVM). A process that exits keeps the CPU it used."""

    def __init__(self, tm_pids: typing.Sequence[int], jm_pids: typing.Sequence[int], job_pid: int):
        self._tm, self._jm, self._job = list(tm_pids), list(jm_pids), job_pid
        self._last: typing.Dict[int, float] = {}

    def _descendants(self) -> typing.List[int]:
        children: typing.Dict[int, typing.List[int]] = collections.defaultdict(list)
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children[ppid].append(int(entry))
        out, todo = [], [self._job]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo.extend(children.get(pid, ()))
        return out

    def now(self) -> typing.Tuple[float, float, float]:
        """(TaskManagers, JobManager, job process tree) CPU seconds so far."""
        cluster = set(self._tm + self._jm)
        for pid in cluster | set(self._descendants()):
            value = _cpu_seconds(pid)
            if value > 0:
                self._last[pid] = value
        # The job's tree: every process seen that is not a cluster daemon,
        # including descendants that have exited since.
        tree = set(self._last) - cluster
        return (sum(self._last.get(p, 0.0) for p in self._tm),
                sum(self._last.get(p, 0.0) for p in self._jm),
                sum(self._last.get(p, 0.0) for p in tree))


def _checkpoint_state(rest: FlinkRest, jid: str) -> typing.Optional[str]:
    """The latest completed checkpoint: state size and duration, as text."""
    try:
        latest = (rest.get(f"/jobs/{jid}/checkpoints").get("latest") or {}).get("completed")
    except Exception:  # REST busy: the figure is optional
        return None
    if not latest:
        return None
    size = latest.get("checkpointed_size") or latest.get("state_size") or 0
    full = latest.get("state_size") or size
    return (f"checkpoint {latest.get('id')}: {full / 2**20:,.1f} MiB state "
            f"({size / 2**20:,.1f} MiB written), {latest.get('end_to_end_duration', 0) / 1000:.1f} s")


def _rescaled(lines: typing.List[str], start_ms: int, span_ms: int) -> typing.List[str]:
    """``lines`` with every integer ``timestamp`` mapped linearly from the
    lines' own range onto [start_ms, start_ms + span_ms] (order kept)."""
    def stamp(line):
        try:
            payload = json.loads(line)
        except ValueError:
            return None, None
        ts = payload.get("timestamp") if isinstance(payload, dict) else None
        return (payload, ts) if isinstance(ts, int) and not isinstance(ts, bool) else (None, None)

    parsed = [stamp(line) for line in lines]
    stamps = [ts for _, ts in parsed if ts is not None]
    if not stamps:
        return lines
    lo, hi = min(stamps), max(stamps)
    scale = span_ms / max(1, hi - lo)
    out = []
    for line, (payload, ts) in zip(lines, parsed):
        if payload is None:
            out.append(line)
            continue
        payload["timestamp"] = start_ms + int((ts - lo) * scale)
        out.append(json.dumps(payload, separators=(",", ":")))
    return out


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (all its threads), from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After the command name: state is field 3, utime and stime fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rate_between(samples: typing.List[typing.Tuple[float, int]], lo: int, hi: int) -> typing.Optional[float]:
    """Rows per second between the first samples with >= lo and >= hi rows."""
    t_lo = next((t for t, n in samples if n >= lo), None)
    hit = next(((t, n) for t, n in samples if n >= hi), None)
    if t_lo is None or hit is None or hit[0] <= t_lo:
        return None
    n_lo = next(n for t, n in samples if t == t_lo)
    return (hit[1] - n_lo) / (hit[0] - t_lo)


def _distinct_valid_ids(lines: typing.Iterable[str], pipeline: str = "frontend") -> int:
    """How many rows the pipeline's table must end up with: distinct keys
    (frontend: event id; text agent: session and turn) of the lines the
    pipeline's own parser accepts (the rest are dead letters)."""
    from schemas.events import FrontendEvent
    from schemas.text_agent import TextAgentTurn
    from transforms.parse import parse_record
    from transforms.text_agent import turn_key

    model, key = (FrontendEvent, lambda e: e["event_id"]) if pipeline == "frontend" else (TextAgentTurn, turn_key)
    ids = set()
    for line in lines:
        try:
            ids.add(key(parse_record(line, model)))
        except ValueError:
            continue
    return len(ids)


def _rows(conn, run_id: str, table: str = "frontend_analytics") -> int:
    return conn.execute(
        f"SELECT count(*) FROM {table} WHERE session_id LIKE %s", (run_id + "-%",)
    ).fetchone()[0]


def _percentile(values: typing.List[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def _print_sink_write_latency(rest: FlinkRest, jid: str) -> None:
    """p50/p95 of each sink's per-batch write time over the whole run, from
    its cumulative ``write_ms_le_<N>`` counters (iheard_io.sink_base), read
    from the ended job's accumulators."""
    from iheard_io.sink_base import latency_by_sink

    try:
        counters = rest.accumulator_user_counters(jid)
    except Exception as e:  # figures are optional; REST may be busy
        print(f"sink write latency: counters not readable ({e})")
        return
    for sink, (batches, q) in latency_by_sink(counters).items():
        print(f"write latency per batch, {sink}: p50 {q[0.5]:.1f} ms, p95 {q[0.95]:.1f} ms "
              f"over {batches:,} batches (bucket counters {sink}/write_ms_le_*)", flush=True)


def _pyspy_summary(path: str, top: int = 15) -> typing.List[str]:
    """Self-time per function from py-spy's collapsed stacks ("a;b;c 12")."""
    self_time: typing.Counter[str] = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            if not stack:
                continue
            n = int(count)
            total += n
            self_time[stack.split(";")[-1]] += n
    return [f"{100.0 * n / total:5.1f}%  {frame}" for frame, n in self_time.most_common(top)] if total else []


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", choices=sorted(PIPELINES), default="frontend")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--latency-events", type=int, default=2000)
    parser.add_argument("--latency-rate", type=float, default=200.0, help="events/s while measuring latency")
    parser.add_argument("--naive-events", type=int, default=5000)
    parser.add_argument("--profile-seconds", type=int, default=30, help="py-spy sampling of the worker (0: off)")
    parser.add_argument("--drain-timeout-s", type=int, default=3600)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--backlog-rate", type=float, default=1000.0,
                        help="events per second of event time in the backlog, which ends 6 minutes ago (a "
                             "job that was down while a live stream went on); 0: the generator's own "
                             "spacing from 6 h ago (a visit every ~10 s: 1,000,000 events span a month, "
                             "as in the figures before December 2026)")
    parser.add_argument("--job-arg", action="append", default=[], metavar="FLAG",
                        help="extra pipeline flag for the job (repeatable), e.g. --job-arg=--max_bundle_size=5000")
    parser.add_argument("--services", choices=("plain", "secure", "both"), default="plain",
                        help="the plaintext set, the secure set (services.sh up --secure: TLS+SASL Kafka, TLS "
                             "PostgreSQL and Redis, signed HTTPS S3), or both one after the other (drain only)")
    parser.add_argument("--drain-only", action="store_true",
                        help="stop after the drain (no latency, raw-consume or naive-consumer figures)")
    args = parser.parse_args(argv)
    if args.services == "secure":
        args.drain_only = True  # the latency and consumer comparisons speak plaintext only
    if args.services != "both":
        _run(args, args.services)
        return 0
    args.drain_only = True
    figures = {mode: _run(args, mode) for mode in ("plain", "secure")}
    print(f"\n{'services':10} {'events/s':>9} {'events per CPU-s':>17} {'CPU-s':>7}")
    for mode, f in figures.items():
        print(f"{mode:10} {f.get('events_per_s', float('nan')):9,.0f} {f.get('events_per_cpu_s', float('nan')):17,.0f} "
              f"{f.get('cpu_s', float('nan')):7.1f}")
    plain, secure = figures["plain"], figures["secure"]
    if plain.get("events_per_s") and secure.get("events_per_s"):
        print(f"secure / plain: {secure['events_per_s'] / plain['events_per_s']:.2f}x events/s, "
              f"{secure['events_per_cpu_s'] / plain['events_per_cpu_s']:.2f}x events per CPU-s")
    return 0


# Settings a secure run must not inherit from the calling shell.
_SERVICE_VARIABLE_PREFIXES = ("KAFKA_", "POSTGRES_", "REDIS_", "SPACES_", "S3_", "AWS_")


def _kafka_config(env: typing.Mapping[str, str]) -> dict:
    """kafka-python settings for the set's broker (SASL_SSL in the secure set)."""
    config = {"bootstrap_servers": env["KAFKA_BOOTSTRAP"]}
    if env.get("KAFKA_SECURITY_PROTOCOL"):
        config.update(security_protocol=env["KAFKA_SECURITY_PROTOCOL"],
                      sasl_mechanism=env.get("KAFKA_SASL_MECHANISM"), sasl_plain_username=env.get("KAFKA_USER"),
                      sasl_plain_password=env.get("KAFKA_PASSWORD"), ssl_cafile=env.get("KAFKA_SSL_CAFILE"))
    return {k: v for k, v in config.items() if v is not None}


def _run(args, mode: str) -> dict:
    """One drain (and, unless ``args.drain_only``, the latency and consumer
    figures) against the ``mode`` set of services; returns its figures."""
    secure = mode == "secure"
    figures: typing.Dict[str, float] = {}
    services_sh = os.path.join(REPO, "services/services.sh")
    flag = ["--secure"] if secure else []
    subprocess.run(["bash", services_sh, "up", *flag], check=True)
    subprocess.run(["bash", os.path.join(REPO, "flink/cluster.sh"), "up"], check=True)
    env = parse_exports(subprocess.run(["bash", services_sh, "env", *flag], check=True, capture_output=True,
                                       text=True).stdout)
    flink_env = script_env(os.path.join(REPO, "flink/cluster.sh"))
    bootstrap, dsn = env["KAFKA_BOOTSTRAP"], settings.postgres_dsn(env)
    kafka_config = _kafka_config(env)
    rest = FlinkRest("http://127.0.0.1:" + flink_env["FLINK_MASTER"].rsplit(":", 1)[1])
    print(f"services: {mode} (Kafka {bootstrap}{', ' + kafka_config['security_protocol'] if secure else ''})",
          flush=True)

    import psycopg
    import redis
    from kafka.admin import KafkaAdminClient, NewTopic

    run_id = f"fb{uuid.uuid4().hex[:8]}"
    topic = f"flink-bench-{run_id}"
    admin = KafkaAdminClient(**kafka_config)
    admin.create_topics([NewTopic(topic, args.partitions, 1)])
    if args.backlog_rate > 0:
        # The backlog ends one archive window (plus a minute) ago, so that
        # once it is read, the idle watermark closes every archive window it
        # touches and the drain can wait for the archive too.
        span_ms = int(args.events / args.backlog_rate * 1000)
        start_ms = int(time.time() * 1000) - span_ms - (ARCHIVE_WINDOW_S + 60) * 1000
    else:
        span_ms, start_ms = None, (int(time.time()) - 6 * 3600) * 1000

    spec = PIPELINES[args.pipeline]
    print(f"run {run_id}: {args.events} {args.pipeline} events -> topic {topic} ({args.partitions} partitions)",
          flush=True)
    lines = [line for line, _ in _events(args.events, run_id, args.seed, start_ms, args.pipeline, span_ms)]
    print(f"backlog event times: {'the generator spacing from 6 h ago' if span_ms is None else f'the last {span_ms / 1000:,.0f} s ({args.backlog_rate:,.0f} events/s)'}",
          flush=True)
    expected_rows = _distinct_valid_ids(lines, args.pipeline)
    t = time.perf_counter()
    # A dense backlog (--backlog-rate) ends in the past: its records carry
    # their event times. The generator spacing runs on past now (months for
    # 1,000,000 events), which a broker may refuse as record timestamps.
    _produce(kafka_config, topic, lines, event_times=span_ms is not None)
    produce_s = time.perf_counter() - t
    print(f"produce (kafka-python, acks=1): {args.events / produce_s:,.0f} events/s", flush=True)

    workdir = tempfile.mkdtemp(prefix="flink-bench-")
    job_name = f"iheard-bench-{run_id}"
    job_args = [
        sys.executable, "-m", spec["module"], "--profile=flink-local", "--streaming",
        f"--parallelism={args.parallelism}", f"--job_name={job_name}",
        f"--kafka_bootstrap={bootstrap}", f"--kafka_topic={topic}", f"--kafka_group_id={topic}",
        f"--archive_path=s3://{env['ARCHIVE_BUCKET']}/flink-bench/{run_id}",
    ]
    if secure:
        # As a deployment runs it: every connection setting and secret from
        # the set's environment (resolve_connections), none on the command line.
        child_env = {k: v for k, v in os.environ.items() if not k.startswith(_SERVICE_VARIABLE_PREFIXES)}
        child_env.update(flink_env, **env, PYTHONPATH=REPO)
    else:
        child_env = dict(os.environ, **flink_env, PYTHONPATH=REPO)
        job_args += [
            f"--postgres_dsn={dsn}", f"--redis_url={settings.redis_url(env)}",
            f"--s3_endpoint_url={env['SPACES_ENDPOINT']}", f"--s3_access_key_id={env['SPACES_ACCESS_KEY']}",
            f"--s3_secret_access_key={env['SPACES_SECRET_KEY']}",
            f"--s3_region_name={env.get('SPACES_REGION', 'us-east-1')}"]
    job_args += args.job_arg
    log = open(os.path.join(workdir, "job.log"), "w")
    submitted = time.perf_counter()
    proc = subprocess.Popen(job_args, cwd=REPO, env=child_env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    jid = None
    sustained = None
    try:
        jid = wait_for(lambda: rest.job_id_by_name(job_name), 300, "the Flink job")
        wait_for(lambda: all(v["status"] == "RUNNING" for v in rest.job(jid)["vertices"]), 300, "tasks RUNNING")
        running = time.perf_counter()
        print(f"job {jid}: tasks running {running - submitted:.1f} s after submission", flush=True)
        if rest.watermarks_settled_at_max(jid):
            print("WARNING: every watermark at +inf from the start (the Beam 2.62 start-up race, see "
                  "flink/README.md; was --finish_bundle_before_checkpointing dropped?)", flush=True)

        profile_path = os.path.join(workdir, "worker.collapsed")
        profiler = None
        if args.profile_seconds > 0 and shutil.which("py-spy"):
            profiler = subprocess.Popen(
                ["py-spy", "record", "--pid", str(proc.pid), "--duration", str(args.profile_seconds),
                 "--rate", "50", "--format", "raw", "--output", profile_path, "--nonblocking", "--subprocesses",
                 "--gil"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )

        tm_pids = taskmanager_pids(REPO)
        job_cpu = _JobCpu(tm_pids, jobmanager_pids(REPO), proc.pid)
        cpu_now = job_cpu.now
        print(f"state at the start of the drain: {_checkpoint_state(rest, jid) or 'no checkpoint yet'}", flush=True)

        def sinks_behind() -> typing.List[str]:
            """The sinks whose written counter is still below the expected
            total (Beam counters reach Flink's REST API a few seconds late)."""
            behind = []
            checks = [("archive", "WriteToArchive", "records")]
            if spec["redis"]:
                checks.append(("Redis", spec["redis"], "written"))
            for what, namespace, name in checks:
                try:
                    value = rest.user_metric(jid, namespace, name) or 0
                except Exception:  # REST busy: ask again next time
                    value = 0
                if value < expected_rows:
                    behind.append(f"{what} {int(value):,}")
            return behind

        conn = psycopg.connect(dsn, autocommit=True)
        row_samples: typing.List[typing.Tuple[float, int]] = []
        cpu_at_first_row = cpu_at_last_change = None
        load_samples: typing.Dict[str, typing.List[typing.Tuple[float, float]]] = collections.defaultdict(list)
        first_row_at = None
        last_count, last_change = -1, time.perf_counter()
        deadline = time.monotonic() + args.drain_timeout_s
        rows_done_at = None
        behind: typing.List[str] = []
        while time.monotonic() < deadline:
            count = _rows(conn, run_id, spec["table"])
            now = time.perf_counter()
            cpu = cpu_now()
            if count and first_row_at is None:
                first_row_at, cpu_at_first_row = now, cpu
            if count != last_count:
                last_count, last_change, cpu_at_last_change = count, now, cpu
                row_samples.append((now, count))
            # Rows first: every distinct valid event a row (rows arrive in
            # bursts); then the other sinks' counters. Two minutes without a
            # new row, or without the other sinks catching up, end the wait.
            if count >= expected_rows or (count and now - last_change > 120):
                rows_done_at = rows_done_at or now
                behind = sinks_behind()
                if not behind:
                    last_change, cpu_at_last_change = now, cpu
                    break
                if now - max(last_change, rows_done_at) > 120:
                    break
            try:
                for name, sample in _vertex_load(rest, jid).items():
                    load_samples[name].append(sample)
            except Exception:  # a sample is optional; REST may be busy
                pass
            time.sleep(1)
        drained_at = last_change
        valid = int(rest.user_metric(jid, args.pipeline, "valid") or 0)
        dups = int(rest.user_metric(jid, args.pipeline, "duplicates_dropped") or 0)
        dead = int(rest.user_metric(jid, args.pipeline, "dead_letters") or 0)
        print(f"drain: {last_count:,} of {expected_rows:,} expected rows in {spec['table']} (counters: received "
              f"{args.events:,}, valid {valid:,}, duplicates dropped {dups:,}, dead letters {dead:,})"
              + (f"; sinks still behind after 120 s: {', '.join(behind)}" if behind else
                 "; archive and Redis counters complete"), flush=True)
        if rows_done_at is not None and drained_at > rows_done_at:
            print(f"other sinks done {drained_at - rows_done_at:.1f} s after the last PostgreSQL row", flush=True)
        print(f"state at the end of the drain: {_checkpoint_state(rest, jid) or 'no checkpoint'}", flush=True)
        if first_row_at is not None and drained_at > first_row_at:
            sustained = args.events / (drained_at - first_row_at)
            figures["events_per_s"] = sustained
            print(f"sustained: {sustained:,.0f} events/s "
                  f"(first to last row {drained_at - first_row_at:.1f} s; "
                  f"{args.events / (drained_at - running):,.0f} events/s counting from tasks running)", flush=True)
            tm_s, jm_s, job_s = (b - a for a, b in zip(cpu_at_first_row, cpu_at_last_change))
            cpu_s = tm_s + jm_s + job_s
            if cpu_s > 0:
                figures.update(events_per_cpu_s=args.events / cpu_s, cpu_s=cpu_s)
                print(f"events per CPU-second (every process of the job, first row to drained): "
                      f"{args.events / cpu_s:,.0f} ({cpu_s:.1f} CPU-s: TaskManager {tm_s:.1f}, "
                      f"JobManager {jm_s:.1f}, job process with its workers and job server {job_s:.1f})",
                      flush=True)
            tenth = max(1, expected_rows // 10)
            first = _rate_between(row_samples, 1, tenth)
            last = _rate_between(row_samples, expected_rows - tenth, expected_rows)
            if first and last:
                print(f"rows/s over the first 10 % of rows {first:,.0f}, over the last 10 % {last:,.0f} "
                      f"(last/first {last / first:.2f})", flush=True)
        if load_samples:
            print("vertices while reading the backlog (mean of per-second samples): "
                  "records in/s, back-pressured ms/s (busiest subtask)")
            for name, samples in load_samples.items():
                rate = statistics.mean(r for r, _ in samples)
                bp = statistics.mean(p for _, p in samples)
                print(f"   {rate:8.0f} {bp:6.0f}  {name[:100]}")
        if profiler is not None:
            profiler.wait(timeout=args.profile_seconds + 60)

        if not args.drain_only:
            # Latency: live events at a fixed rate, each looked up in PostgreSQL
            # (and, for the frontend, in Redis's per-minute KPI set).
            from schemas.events import FrontendEvent
            from schemas.text_agent import TextAgentTurn
            from transforms.parse import parse_record
            from transforms.text_agent import turn_key

            frontend = args.pipeline == "frontend"
            model, key_of = (FrontendEvent, lambda e: e["event_id"]) if frontend else (TextAgentTurn, turn_key)
            pg_lookup = ("SELECT event_id FROM frontend_analytics WHERE event_id = ANY(%s)" if frontend else
                         "SELECT session_id || chr(31) || turn_id FROM agent_turns "
                         "WHERE session_id || chr(31) || turn_id = ANY(%s)")
            # Event times as the events are sent (the live stream's own rate).
            latency_lines = list(_events(args.latency_events, run_id + "L", args.seed + 1,
                                         int(time.time() * 1000), args.pipeline,
                                         int(args.latency_events / args.latency_rate * 1000)))
            sent: typing.Dict[str, float] = {}
            keys: typing.Dict[str, str] = {}
            line_ids: typing.Dict[int, str] = {}
            for n, (line, payload) in enumerate(latency_lines):
                try:
                    parsed = parse_record(line, model)
                except ValueError:  # malformed on purpose: a dead letter, never a row
                    continue
                eid, ts = key_of(parsed), parsed["timestamp_ms"]
                line_ids[n] = eid
                if frontend:
                    keys[eid] = (f"{KPI_PREFIX}events:{parsed['event_type']}:"
                                 f"{time.strftime('%Y%m%d%H%M', time.gmtime(ts / 1000))}")

            from kafka import KafkaProducer

            producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks=1)
            seen_redis: typing.Dict[str, float] = {}
            seen_pg: typing.Dict[str, float] = {}
            stop = threading.Event()

            def poll():
                r = redis.Redis.from_url(settings.redis_url(env))
                pg = psycopg.connect(dsn, autocommit=True)
                while not stop.is_set():
                    now = time.perf_counter()
                    pending_r = [e for e in list(sent) if e not in seen_redis] if frontend else []
                    if pending_r:
                        pipe = r.pipeline()
                        for e in pending_r:
                            pipe.sismember(keys[e], e)
                        for e, hit in zip(pending_r, pipe.execute()):
                            if hit:
                                seen_redis[e] = now
                    pending_p = [e for e in list(sent) if e not in seen_pg]
                    if pending_p:
                        for (e,) in pg.execute(pg_lookup, (pending_p,)).fetchall():
                            seen_pg[e] = now
                    time.sleep(0.1)

            poller = threading.Thread(target=poll, daemon=True)
            poller.start()
            interval = 1.0 / args.latency_rate
            next_at = time.perf_counter()
            for n, (line, _) in enumerate(latency_lines):
                eid = line_ids.get(n)
                while time.perf_counter() < next_at:
                    time.sleep(min(interval, next_at - time.perf_counter()))
                producer.send(topic, line.encode())
                producer.flush()
                if eid is not None and eid not in sent:  # a duplicate keeps its first send time
                    sent[eid] = time.perf_counter()
                next_at += interval
            producer.close()
            try:
                wait_for(lambda: len(seen_pg) >= len(sent) and (not frontend or len(seen_redis) >= len(sent)),
                         300, "latency events in Redis and PostgreSQL", interval_s=0.5)
            except TimeoutError:
                print(f"after 300 s: {len(sent) - len(seen_redis)} events missing in Redis, "
                      f"{len(sent) - len(seen_pg)} in PostgreSQL; percentiles over the rest", flush=True)
            stop.set()
            poller.join()
            to_redis = [seen_redis[e] - sent[e] for e in sent if e in seen_redis] or [float("nan")]
            to_pg = [seen_pg[e] - sent[e] for e in sent if e in seen_pg] or [float("nan")]
            to_redis_text = (f"to Redis p50 {_percentile(to_redis, 50):.2f} s p95 {_percentile(to_redis, 95):.2f} s; "
                             if frontend else "")
            print(f"latency over {len(sent)} events at {args.latency_rate:.0f}/s: {to_redis_text}"
                  f"to PostgreSQL p50 {_percentile(to_pg, 50):.2f} s p95 {_percentile(to_pg, 95):.2f} s", flush=True)

            for pid in tm_pids:
                print(f"TaskManager {pid} peak RSS {(proc_status_kib(pid, 'VmHWM') or 0) / 1024:,.0f} MiB (since it started)")
            print(f"Python SDK worker (job process {proc.pid}) peak RSS {(proc_status_kib(proc.pid, 'VmHWM') or 0) / 1024:,.0f} MiB")
            if os.path.exists(profile_path):
                print(f"worker profile ({args.profile_seconds} s of the drain, self time, py-spy):")
                for line in _pyspy_summary(profile_path):
                    print("   " + line)
    finally:
        if jid:
            try:
                rest.cancel_and_wait(jid)
                # the job's accumulators hold its counters once it has ended
                _print_sink_write_latency(rest, jid)
            except Exception as e:  # keep going: the process is ended below
                print(f"cancel failed: {e}")
        end_process(proc)
        log.close()

    if args.drain_only:
        admin.delete_topics([topic])
        admin.close()
        print(f"job log: {workdir}", flush=True)
        return figures
    # Beside it: the raw consumer and the seed's naive per-event consumer, same topic.
    def decode(rec):
        try:
            json.loads(rec.value)
        except ValueError:  # the generated malformed lines
            pass

    raw_s = io_bench.consume(bootstrap, topic, args.partitions, args.events, decode)
    print(f"raw kafka-python consume + json decode: {args.events / raw_s:,.0f} events/s")
    # io_bench's naive consumer expects io_bench's event shape: give it its own topic.
    naive = min(args.naive_events, args.events)
    naive_topic = topic + "-naive"
    admin.create_topics([NewTopic(naive_topic, args.partitions, 1)])
    io_bench.produce(bootstrap, naive_topic, io_bench.make_events(naive, run_id + "n"))
    naive_s = io_bench.bench_naive(dsn, bootstrap, naive_topic, args.partitions, naive)
    print(f"naive consumer (decode, INSERT, COMMIT per event): {naive / naive_s:,.0f} events/s over {naive:,} events")
    if sustained:
        print(f"pipeline / raw consume: {sustained / (args.events / raw_s):.2f}x; "
              f"pipeline / naive consumer: {sustained / (naive / naive_s):.2f}x")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM frontend_analytics WHERE event_id LIKE %s", (run_id + "n-%",))
    admin.delete_topics([naive_topic])
    admin.delete_topics([topic])
    admin.close()
    print(f"job log and profile: {workdir}")
    return figures


if __name__ == "__main__":
    sys.exit(main())
