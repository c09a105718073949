"""The streaming frontend job on the real local Flink cluster, against the real services.

``python -m beam_pipelines.frontend --profile=flink-local --streaming ...`` runs
in the background (LOOPBACK: its process hosts the Python workers) reading a
Kafka topic made for the test, holding a hand-made set of events whose
expected rows are worked out below: records 1-8 are on the topic before the
job starts (a backlog it catches up on), 9-10 are produced while it runs. Then
PostgreSQL, Redis and
the S3 archive must hold exactly those results, the job must be RUNNING with
its Beam counters visible through Flink's REST API and the Prometheus
reporter, and it is cancelled. The second test kills the TaskManager in the
middle of the stream and checks that, after Flink restores the job from its
last checkpoint on a new TaskManager, PostgreSQL holds no lost and no
duplicated row.

Input, one visit set per run (session ids carry a random run id, so rows of
earlier runs never count; times are seconds after T0, three hours ago, and
each record's Kafka timestamp is its event time)::

    n   session  t     event          notes
    1   A        0     page_view      e-mail address in element_text
    2   A        30    widget_open
    3   A        90    message_sent   phone number in element_text
    4   A        90    message_sent   exact copy of 3 (a producer retry)
    5   A        200   conversion
    6   B        10    page_view
    7   -        -     (broken JSON)  -> dead letter
    8   B        -     page_view      timestamp "yesterday" -> dead letter
    9   B        2500  page_view      2490 s after 6 > 1800 s gap: second session window
    10  C        40    page_view

Expected:
- counters: received 10, valid 8, dead_letters 2, duplicates_dropped 1,
  pii_redacted_email >= 1, pii_redacted_phone >= 1;
- frontend_analytics: 7 rows (1, 2, 3, 5, 6, 9, 10);
- frontend_sessions: A [0 ...) 4 events; B [10 ...) and [2500 ...) 1 event
  each; C [40 ...) 1 event;
- failed_events from the test's topic: 2 rows;
- Redis: one session hash per session (B's holds its newer window), every
  event id in its per-minute KPI set;
- archive: Avro files under the run's own prefix holding exactly the 7 events.

Why the backlog: records produced while the job runs are three hours behind
its watermark (an idle partition's watermark follows the wall clock), so they
are late data. A late event that joins a multi-event session restates it in
one more pane per event, and PostgreSQL keeps whichever pane's upsert lands
last (seen here: session A stored with 3 events while Redis, whose sink
checks versions, had 4). The live records (9, 10) each open a session of
their own, so their single late pane is deterministic.

Run: ``python -m pytest tests/flink/test_frontend_streaming.py`` (starts the
services and the cluster when they are not up).
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import time
import uuid

import pytest

from iheard_io import settings
from tests.flink.conftest import REPO_ROOT
from tests.flink.flink_rest import prometheus_samples, wait_for
from tests.support import script_env

pytestmark = [pytest.mark.flink, pytest.mark.integration, pytest.mark.slow]

SERVICES_SH = REPO_ROOT / "services" / "services.sh"
NS = "frontend"  # the frontend pipeline's counter namespace
SESSION_PREFIX = "iheard:frontend:session:"
KPI_PREFIX = "iheard:kpi:"
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
RESULT_TIMEOUT_S = 240
BACKLOG = set(range(8))  # records 1-8 of the table: on the topic before the job starts
LIVE = {8, 9}  # records 9-10: produced while it runs


# ------------------------------------------------------------------ services


@pytest.fixture(scope="module")
def services_env():
    up = subprocess.run(["bash", str(SERVICES_SH), "up"], capture_output=True, text=True, timeout=900)
    if up.returncode != 0:
        pytest.fail(f"services/services.sh up failed:\n{up.stdout}\n{up.stderr[-3000:]}")
    return script_env(str(SERVICES_SH))


# -------------------------------------------------------------------- events


def _event(run_id, t0_ms, session, seconds, event_type, path, **extra):
    body = {
        "event_type": event_type, "session_id": f"flk-{run_id}-{session}", "user_id": f"user-{run_id}",
        "page_url": f"https://shop.example.com{path}", "page_title": "Shop", "referrer": "",
        "user_agent": UA, "screen_resolution": "1920x1080", "viewport_size": "1903x969",
        "widget_id": "sales-assistant", "interaction_type": "click",
        "timestamp": t0_ms + seconds * 1000 if seconds is not None else "yesterday",
        "time_on_page": 5, "element_id": None, "element_class": None, "element_text": None,
        "click_coordinates": None, "country": "US", "timezone": "America/New_York",
    }
    body.update(extra)
    return body


class Visits:
    """The table in the module docstring, for one run id and T0."""

    def __init__(self, run_id: str, t0_ms: int):
        self.run_id = run_id
        self.t0_ms = t0_ms
        e = lambda *a, **k: _event(run_id, t0_ms, *a, **k)  # noqa: E731
        msg = e("A", 90, "message_sent", "/pricing", element_text="call me on +1 415 555 0132")
        self.records = [  # (payload text, kafka timestamp ms)
            (e("A", 0, "page_view", "/pricing", element_text="mail jane.doe@acme-corp.com"), 0),
            (e("A", 30, "widget_open", "/pricing"), 30),
            (msg, 90),
            (msg, 90),
            (e("A", 200, "conversion", "/cart"), 200),
            (e("B", 10, "page_view", "/blog/x"), 10),
            ("{not json", 15),
            (e("B", None, "page_view", "/blog/y"), 20),
            (e("B", 2500, "page_view", "/docs/y"), 2500),
            (e("C", 40, "page_view", "/"), 40),
        ]

    def session(self, name):
        return f"flk-{self.run_id}-{name}"

    @property
    def sessions(self):
        return [self.session(s) for s in "ABC"]

    @property
    def expected_events(self):
        """(session_id, event_type, epoch ms) of the rows frontend_analytics must hold."""
        rows = set()
        for payload, _ in self.records:
            if isinstance(payload, dict) and isinstance(payload["timestamp"], int):
                rows.add((payload["session_id"], payload["event_type"], payload["timestamp"]))
        return rows

    @property
    def expected_sessions(self):
        """(session_id, window_start ms, event_count)."""
        s, t0 = self.session, self.t0_ms
        return {(s("A"), t0, 4), (s("B"), t0 + 10_000, 1), (s("B"), t0 + 2_500_000, 1), (s("C"), t0 + 40_000, 1)}

    def produce(self, bootstrap: str, topic: str, indexes=None) -> None:
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        for i, (payload, seconds) in enumerate(self.records):
            if indexes is not None and i not in indexes:
                continue
            text = payload if isinstance(payload, str) else json.dumps(payload)
            producer.send(topic, value=text.encode(), timestamp_ms=self.t0_ms + seconds * 1000)
        producer.flush()
        producer.close()


def _new_run():
    run_id = uuid.uuid4().hex[:10]
    t0_ms = (int(time.time()) // 60 - 180) * 60_000  # three hours ago, on a minute
    return Visits(run_id, t0_ms)


def _create_topic(bootstrap: str, partitions: int = 1) -> str:
    """A topic of the test's own; one partition keeps each session's events in order."""
    from kafka.admin import KafkaAdminClient, NewTopic

    topic = f"flink-frontend-{uuid.uuid4().hex[:10]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        admin.close()
    return topic


# ------------------------------------------------------------------- readers


def _pg_connect(env):
    import psycopg

    return psycopg.connect(settings.postgres_dsn(env), autocommit=True)


def _analytics_rows(env, visits):
    with _pg_connect(env) as conn:
        rows = conn.execute(
            "SELECT session_id, event_type, (extract(epoch FROM timestamp) * 1000)::bigint, event_id "
            "FROM frontend_analytics WHERE session_id = ANY(%s)",
            (visits.sessions,),
        ).fetchall()
    return [(s, e, int(t), i) for s, e, t, i in rows]


def _session_rows(env, visits):
    with _pg_connect(env) as conn:
        rows = conn.execute(
            "SELECT session_id, (extract(epoch FROM window_start) * 1000)::bigint, event_count "
            "FROM frontend_sessions WHERE session_id = ANY(%s)",
            (visits.sessions,),
        ).fetchall()
    return [(s, int(t), n) for s, t, n in rows]


def _failed_count(env, topic):
    with _pg_connect(env) as conn:
        return conn.execute("SELECT count(*) FROM failed_events WHERE source_topic = %s", (topic,)).fetchone()[0]


def _s3(env):
    import boto3

    return boto3.client(
        "s3", endpoint_url=env["SPACES_ENDPOINT"], aws_access_key_id=env["SPACES_ACCESS_KEY"],
        aws_secret_access_key=env["SPACES_SECRET_KEY"], region_name=env.get("SPACES_REGION", "us-east-1"),
    )


def _archived_events(env, prefix):
    """(session_id, event_type, timestamp_ms) of every record in the Avro files under prefix."""
    import fastavro

    s3 = _s3(env)
    out = []
    listing = s3.list_objects_v2(Bucket=env["ARCHIVE_BUCKET"], Prefix=prefix + "/")
    for obj in listing.get("Contents", []):
        if not obj["Key"].endswith(".avro"):
            continue
        body = s3.get_object(Bucket=env["ARCHIVE_BUCKET"], Key=obj["Key"])["Body"].read()
        for rec in fastavro.reader(io.BytesIO(body)):
            ts = rec["timestamp_ms"]  # a timestamp-millis logical type: fastavro gives a datetime
            ts_ms = round(ts.timestamp() * 1000) if hasattr(ts, "timestamp") else int(ts)
            out.append((rec["session_id"], rec["event_type"], ts_ms))
    return out


# ---------------------------------------------------------------- the job


def _frontend_args(env, topic, archive_prefix, group_id, checkpointing_interval_ms=3000):
    return [
        "--profile=flink-local", "--streaming",
        f"--checkpointing_interval={checkpointing_interval_ms}",
        f"--kafka_bootstrap={env['KAFKA_BOOTSTRAP']}", f"--kafka_topic={topic}",
        f"--kafka_group_id={group_id}",
        f"--postgres_dsn={settings.postgres_dsn(env)}", f"--redis_url={settings.redis_url(env)}",
        f"--archive_path=s3://{env['ARCHIVE_BUCKET']}/{archive_prefix}",
        f"--s3_endpoint_url={env['SPACES_ENDPOINT']}",
        f"--s3_access_key_id={env['SPACES_ACCESS_KEY']}",
        f"--s3_secret_access_key={env['SPACES_SECRET_KEY']}",
        f"--s3_region_name={env.get('SPACES_REGION', 'us-east-1')}",
    ]


def _start_frontend(background_pipelines, env, topic, archive_prefix, job_prefix):
    return background_pipelines.start_streaming(
        # A consumer group per job (named after it): no job starts from
        # offsets another one committed.
        "beam_pipelines.frontend", lambda name: _frontend_args(env, topic, archive_prefix, name), job_prefix
    )


def _wait_results(what, fetch, expected, rest, jid, background_pipelines, job_name):
    try:
        return wait_for(lambda: (rows := fetch()) == expected and rows, RESULT_TIMEOUT_S, what)
    except TimeoutError as e:
        raise AssertionError(
            f"{e}\n got: {sorted(fetch())}\n expected: {sorted(expected)}\n{rest.describe(jid)}\n"
            f"{background_pipelines.log_tail(job_name, 40)}"
        ) from e


def test_streaming_frontend_job_fills_postgres_redis_and_s3(flink_cluster, background_pipelines, services_env):
    env = services_env
    rest = flink_cluster.rest
    visits = _new_run()
    topic = _create_topic(env["KAFKA_BOOTSTRAP"])
    archive_prefix = f"flink-test/{visits.run_id}"
    visits.produce(env["KAFKA_BOOTSTRAP"], topic, BACKLOG)
    proc, jid, job_name = _start_frontend(background_pipelines, env, topic, archive_prefix, "iheard-test-frontend")
    visits.produce(env["KAFKA_BOOTSTRAP"], topic, LIVE)

    # PostgreSQL: exactly the 7 accepted events, the 4 session windows, the 2 dead letters.
    events = lambda: sorted((s, e, t) for s, e, t, _ in _analytics_rows(env, visits))  # noqa: E731
    _wait_results("frontend_analytics rows", events, sorted(visits.expected_events), rest, jid, background_pipelines, job_name)
    _wait_results(
        "frontend_sessions rows", lambda: sorted(_session_rows(env, visits)), sorted(visits.expected_sessions),
        rest, jid, background_pipelines, job_name,
    )
    wait_for(lambda: _failed_count(env, topic) == 2, RESULT_TIMEOUT_S, "2 failed_events rows")
    event_ids = {(s, e, t): i for s, e, t, i in _analytics_rows(env, visits)}
    assert len(set(event_ids.values())) == len(visits.expected_events)

    # Redis: session hashes and per-minute KPI sets.
    import redis

    r = redis.Redis.from_url(settings.redis_url(env), decode_responses=True)
    expected_counts = {visits.session("A"): "4", visits.session("B"): "1", visits.session("C"): "1"}

    def session_counts():
        return {sid: r.hget(SESSION_PREFIX + sid, "event_count") for sid in expected_counts}

    wait_for(lambda: session_counts() == expected_counts, RESULT_TIMEOUT_S, f"Redis session hashes {expected_counts}")
    # B's hash holds its newer window (the sink keeps the newest version).
    assert r.hget(SESSION_PREFIX + visits.session("B"), "window_start") is not None

    def minute_key(event_type, ts_ms):
        return f"{KPI_PREFIX}events:{event_type}:{time.strftime('%Y%m%d%H%M', time.gmtime(ts_ms / 1000))}"

    def kpis_present():
        return all(r.sismember(minute_key(e, t), i) for (s, e, t), i in event_ids.items())

    wait_for(kpis_present, 60, "every event id in its per-minute KPI set")

    # S3 archive: exactly the accepted events, under this run's prefix.
    wait_for(
        lambda: set(_archived_events(env, archive_prefix)) == visits.expected_events,
        RESULT_TIMEOUT_S, f"the archive under {archive_prefix} to hold the 7 events",
    )

    # The job runs, and its Beam counters are Flink metrics (REST and Prometheus).
    assert rest.state(jid) == "RUNNING"
    expected_counters = {"received": 10, "valid": 8, "dead_letters": 2, "duplicates_dropped": 1}
    for name, value in expected_counters.items():
        wait_for(lambda: rest.user_metric(jid, NS, name) == value, 60, f"counter {NS}.{name} == {value} via REST")
    for name in ("pii_redacted_email", "pii_redacted_phone"):
        assert (rest.user_metric(jid, NS, name) or 0) >= 1, name

    def scraped(name):
        return sum(v for _, v in prometheus_samples(flink_cluster.prometheus_url, f"_{NS}_{name}", job_id=jid))

    for name, value in expected_counters.items():
        wait_for(lambda: scraped(name) == value, 60, f"{NS}_{name} == {value} in the Prometheus scrape")

    rest.cancel(jid)
    assert rest.wait_state(jid, {"CANCELED"}, 60) == "CANCELED"
    proc.wait(timeout=60)

    # Each sink's per-batch write latency: cumulative bucket counters, read
    # back into p50/p95 as benchmarks/flink_bench.py does (from the job's
    # accumulators, which Beam's Flink runner fills in when the job ends).
    from iheard_io.sink_base import latency_by_sink

    def sink_latency():
        return latency_by_sink(rest.accumulator_user_counters(jid))

    wait_for(lambda: {"WriteToPostgres", "WriteLiveKpis", "WriteSessionState"} <= set(sink_latency()),
             60, "latency buckets of the PostgreSQL and Redis sinks")
    for sink, (batches, q) in sink_latency().items():
        assert batches >= 1 and 0 <= q[0.5] <= q[0.95] <= 10_000, (sink, batches, q)


def test_taskmanager_killed_mid_stream_loses_and_duplicates_nothing(flink_cluster, background_pipelines, services_env):
    env = services_env
    rest = flink_cluster.rest
    visits = _new_run()
    topic = _create_topic(env["KAFKA_BOOTSTRAP"])
    # Records 1-6 (A's visit and B's first page view) as a backlog ...
    first = set(range(6))
    visits.produce(env["KAFKA_BOOTSTRAP"], topic, first)
    proc, jid, job_name = _start_frontend(
        background_pipelines, env, topic, f"flink-test/{visits.run_id}", "iheard-test-restart"
    )
    events = lambda: sorted((s, e, t) for s, e, t, _ in _analytics_rows(env, visits))  # noqa: E731
    expected_first = sorted({
        (p["session_id"], p["event_type"], p["timestamp"]) for i, (p, _) in enumerate(visits.records)
        if i in first and isinstance(p, dict)
    })
    _wait_results("rows before the kill", events, expected_first, rest, jid, background_pipelines, job_name)
    done_before = rest.checkpoint_counts(jid)["completed"]
    wait_for(lambda: rest.checkpoint_counts(jid)["completed"] > done_before, 60, "a checkpoint after the first rows")

    # ... then records 7-10 go out while the job runs and the TaskManager dies
    # at once, so part of them is processed after the last checkpoint and
    # replayed (each opens a session of its own or is a dead letter: see the
    # module docstring on late data).
    visits.produce(env["KAFKA_BOOTSTRAP"], topic, set(range(6, len(visits.records))))
    pids = flink_cluster.taskmanager_pids()
    assert pids, "no TaskManager to kill"
    for pid in pids:
        os.kill(pid, 9)
    wait_for(lambda: rest.state(jid) in {"RESTARTING", "FAILING"} or rest.job(jid)["vertices"][0]["status"] != "RUNNING",
             60, "Flink to notice the lost TaskManager")

    flink_cluster.cluster_sh("up")  # starts a new TaskManager (the JobManager still runs)
    wait_for(lambda: rest.checkpoint_counts(jid)["restored"] >= 1, 180, "the job restored from a checkpoint")
    wait_for(
        lambda: rest.state(jid) == "RUNNING" and all(v["status"] == "RUNNING" for v in rest.job(jid)["vertices"]),
        180, "the restored job RUNNING",
    )

    # No row lost, none twice: the accepted events exactly, each event id once.
    _wait_results("rows after the restore", events, sorted(visits.expected_events), rest, jid, background_pipelines, job_name)
    rows = _analytics_rows(env, visits)
    assert len(rows) == len({i for *_, i in rows}) == len(visits.expected_events)
    _wait_results(
        "frontend_sessions rows after the restore", lambda: sorted(_session_rows(env, visits)),
        sorted(visits.expected_sessions), rest, jid, background_pipelines, job_name,
    )
    wait_for(lambda: _failed_count(env, topic) == 2, RESULT_TIMEOUT_S, "2 failed_events rows after the restore")

    rest.cancel(jid)
    rest.wait_state(jid, {"CANCELED"}, 60)
    proc.wait(timeout=60)
