"""Upgrading a running streaming job from a savepoint, on the local Flink cluster.

For the frontend and the text-agent job: the job (submitted with
``python -m runners.submit``, LOOPBACK workers in the submitting process)
reads the first part of a generated input from a topic of the test's own,
is stopped with a savepoint (``runners.submit stop``) while every session is
still open, the next build is submitted from that savepoint on the same
consumer group and reads the rest. Its tables must equal those of a run of
the whole input without an upgrade (the same module on the DirectRunner,
into an embedded DuckDB): every event once, and every session, conversation
and billing hour whole, including the ones with turns or events on both
sides of the stop, and the duplicates sent after the stop of events read
before it dropped (the de-duplication ids came through the savepoint).

Input: the generators' events (``beam_pipelines.generate``, and the
text agent's ``--generate``), with this run's ids and dated from tomorrow on:
event time then stays ahead of the wall clock, so no window closes on an
idle partition and every session is open at the stop. After the second part,
one record three hours later moves the watermark past every window (a
record of its own session, left out of the comparison), so the final rows
are written without waiting for real time.

The next build: for the frontend, a copy of the job with a stateless step
added after the source (``tests/flink/upgrade_variants.py``: a refactor whose
savepoint still maps); for the text agent, the current code, first submitted
as the *frontend* job from the text agent's savepoint, which ``runners.submit``
refuses before anything is started. The running job's vertex ids must hold
every operator id ``flink/state_ids.json`` lists for it (the uids are what
the savepoint is keyed by).

Run: ``python -m pytest tests/flink/test_upgrade.py`` (~5 minutes).
"""
from __future__ import annotations

import datetime
import json
import pathlib
import subprocess
import sys
import time
import typing
import uuid

import pytest

from iheard_io import settings
from runners import state_ids
from runners.submit import new_job_id
from tests.flink.flink_rest import wait_for
from tests.flink.test_frontend_streaming import (  # noqa: F401  (services_env is a fixture)
    _pg_connect,
    services_env,
)

pytestmark = [pytest.mark.flink, pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
RESULT_TIMEOUT_S = 240
CLOSER_DELAY_MS = 3 * 3600 * 1000  # past the 30 min session gap plus the 1 h allowed lateness


# ------------------------------------------------------------------ the input


def _frontend_input(run_id: str, start_ms: int, tmp_path) -> typing.List[dict]:
    out = tmp_path / "frontend-generated.jsonl"
    subprocess.run(
        [sys.executable, "-m", "beam_pipelines.generate", "--events=300", "--malformed_ratio=0",
         f"--start_ms={start_ms}", f"--output={out}"],
        cwd=REPO_ROOT, check=True, capture_output=True, timeout=120,
    )
    events = [json.loads(line) for line in out.read_text().splitlines()]
    for event in events:
        event["session_id"] = f"upg-{run_id}-{event['session_id']}"
        event["user_id"] = f"upg-{run_id}-{event['user_id']}"
    return sorted(events, key=lambda e: e["timestamp"])


def _text_agent_input(run_id: str, start_ms: int, tmp_path) -> typing.List[dict]:
    out = tmp_path / "turns-generated.jsonl"
    subprocess.run(
        [sys.executable, "-m", "beam_pipelines.text_agent", "--generate=20", f"--output={out}"],
        cwd=REPO_ROOT, check=True, capture_output=True, timeout=120,
    )
    # The sample also holds turns dated as text and a turn without a session (a dead
    # letter); valid turns in epoch milliseconds are all this test needs.
    turns = [t for t in map(json.loads, out.read_text().splitlines())
             if isinstance(t.get("timestamp"), int) and t.get("session_id")]
    first = min(t["timestamp"] for t in turns)
    for turn in turns:
        turn["timestamp"] = turn["timestamp"] - first + start_ms
        turn["session_id"] = f"upg-{run_id}-{turn['session_id']}"
        turn["tenant_id"] = f"upg-{run_id}"
    return sorted(turns, key=lambda t: t["timestamp"])


def _split(records: typing.List[dict], session_key: str):
    """(before the stop, after it): the first 55 % in time; after it, three
    exact copies of records read before it (producer retries) and the rest."""
    cut = len(records) * 55 // 100
    before, after = records[:cut], records[cut:]
    spanning = {r[session_key] for r in before} & {r[session_key] for r in after}
    assert spanning, "the input must have sessions on both sides of the stop"
    return before, [*before[-3:], *after], spanning


def _closer(record: dict, run_id: str, latest_ms: int) -> dict:
    closer = dict(record, session_id=f"upg-{run_id}-closer", timestamp=latest_ms + CLOSER_DELAY_MS)
    return closer


def _create_topic(bootstrap: str) -> str:
    """A one-partition topic of the test's own that takes record timestamps from tomorrow
    (Kafka 4 refuses records more than an hour ahead by default)."""
    from kafka.admin import KafkaAdminClient, NewTopic

    topic = f"flink-upgrade-{uuid.uuid4().hex[:10]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, 1, 1, topic_configs={
            "message.timestamp.after.max.ms": str(2**63 - 1)})])
    finally:
        admin.close()
    return topic


def _produce(bootstrap: str, topic: str, records: typing.Iterable[dict]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for record in records:
        producer.send(topic, value=json.dumps(record).encode(), timestamp_ms=record["timestamp"])
    producer.flush()
    producer.close()


# -------------------------------------------------------------- the reference


def _reference_tables(module: str, records: typing.List[dict], tmp_path, queries: typing.Mapping[str, str]):
    """The same input through ``module`` on the DirectRunner (no upgrade), into DuckDB."""
    import duckdb

    path = tmp_path / f"{module}-input.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    out_dir = tmp_path / f"{module}-reference"
    done = subprocess.run(
        [sys.executable, "-m", f"beam_pipelines.{module}", f"--input={path}", f"--output_dir={out_dir}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    con = duckdb.connect(str(out_dir / "iheardai.duckdb"), read_only=True)
    try:
        return {name: sorted(_plain(row) for row in con.execute(sql).fetchall()) for name, sql in queries.items()}
    finally:
        con.close()


def _plain(row):
    """Rows of DuckDB and PostgreSQL in one form: datetimes as epoch ms, numbers rounded."""
    out = []
    for value in row:
        if isinstance(value, datetime.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=datetime.timezone.utc)
            value = round(value.timestamp() * 1000)
        elif isinstance(value, float) or type(value).__name__ == "Decimal":
            value = round(float(value), 6)
        out.append(value)
    return tuple(out)


def _pg_tables(env, queries: typing.Mapping[str, str], param):
    with _pg_connect(env) as conn:
        return {name: sorted(_plain(row) for row in conn.execute(sql, (param,)).fetchall())
                for name, sql in queries.items()}


# ----------------------------------------------------------------- the jobs


def _job_args(env, topic: str, group_id: str, archive_prefix: str) -> typing.List[str]:
    return [
        "--streaming", "--checkpointing_interval=3000", "--parallelism=1",
        f"--kafka_bootstrap={env['KAFKA_BOOTSTRAP']}", f"--kafka_topic={topic}",
        f"--kafka_group_id={group_id}",
        f"--postgres_dsn={settings.postgres_dsn(env)}", f"--redis_url={settings.redis_url(env)}",
        f"--archive_path=s3://{env['ARCHIVE_BUCKET']}/{archive_prefix}",
        f"--s3_endpoint_url={env['SPACES_ENDPOINT']}",
        f"--s3_access_key_id={env['SPACES_ACCESS_KEY']}",
        f"--s3_secret_access_key={env['SPACES_SECRET_KEY']}",
        f"--s3_region_name={env.get('SPACES_REGION', 'us-east-1')}",
    ]


@pytest.fixture(scope="module")
def job_server_jar():
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "flink" / "uberjar" / "build.sh")], capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


class _Submitter:
    """``runners.submit submit`` in the background (LOOPBACK: the process hosts the workers)."""

    def __init__(self, background_pipelines, flink_cluster, jar: str):
        self.background = background_pipelines
        self.rest = flink_cluster.rest
        self.master = flink_cluster.rest.base_url
        self.jar = jar

    def _own_args(self, pipeline: str, job_id: str, savepoint: typing.Optional[str]) -> typing.List[str]:
        return [
            "submit", f"--flink_master={self.master}", f"--pipeline={pipeline}", f"--job_id={job_id}",
            "--environment_type=LOOPBACK", f"--job_server_jar={self.jar}", "--settle_s=3", "--timeout_s=300",
            *([f"--from_savepoint={savepoint}"] if savepoint else []),
        ]

    def start(self, pipeline: str, job_args, job_prefix: str, savepoint: typing.Optional[str] = None):
        job_id = new_job_id()
        job_name = f"{job_prefix}-{uuid.uuid4().hex[:8]}"
        # BackgroundPipelines appends --job_name: after "--" it names the job.
        proc = self.background.start("runners.submit", [*self._own_args(pipeline, job_id, savepoint), "--",
                                                        *job_args], job_name)

        def running():
            if proc.poll() is not None:
                raise AssertionError(f"submit exited ({proc.returncode}):\n{self.background.log_tail(job_name)}")
            job = self.rest.job(job_id) if self.rest.job_id_by_name(job_name) else None
            return job and job["state"] == "RUNNING" and all(v["status"] == "RUNNING" for v in job["vertices"])

        wait_for(running, 300, f"job {job_name} RUNNING")
        return proc, job_id, job_name

    def refused(self, pipeline: str, job_args, savepoint: str) -> str:
        """Submits and expects a refusal; returns the CLI's error line(s)."""
        done = subprocess.run(
            [sys.executable, "-m", "runners.submit", *self._own_args(pipeline, new_job_id(), savepoint),
             "--", *job_args, f"--job_name=upg-refused-{uuid.uuid4().hex[:8]}"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        )
        assert done.returncode == 1, done.stdout + done.stderr[-3000:]
        return done.stderr[done.stderr.rindex("runners.submit: "):]

    def stop_with_savepoint(self, proc, job_id: str, job_name: str, savepoint_dir) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "runners.submit", "stop", f"--flink_master={self.master}",
             f"--job_id={job_id}", f"--savepoint_dir=file://{savepoint_dir}"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        savepoint = json.loads(done.stdout.strip().splitlines()[-1])["savepoint_path"]
        # The job ended FINISHED, so the LOOPBACK submit process exits by itself, 0.
        assert proc.wait(timeout=120) == 0, self.background.log_tail(job_name)
        return savepoint

    def check_state_ids(self, job_id: str, pipeline_name: str) -> None:
        """Keyed steps head their chain (a keyBy precedes them), so their operator id is a
        vertex id of the running job; the Kafka read may be chained after the Impulse."""
        vertices = {node["id"] for node in self.rest.get(f"/jobs/{job_id}/plan")["plan"]["nodes"]}
        keyed = {s["flink_operator_id"]: s["label"] for s in state_ids.recorded()["jobs"][pipeline_name]
                 if s["kind"] != "splittable_pardo"}
        missing = {label: op for op, label in keyed.items() if op not in vertices}
        assert not missing, (
            f"operator ids of flink/state_ids.json not in the running {pipeline_name} job's graph: {missing}; "
            "the uids Beam's job server gives differ from runners/state_ids.py's reading"
        )

    @staticmethod
    def check_savepoint_holds_state_ids(savepoint: str, pipeline_name: str) -> None:
        metadata = state_ids.savepoint_metadata(savepoint)
        assert metadata is not None, savepoint
        assert not state_ids.missing_in_savepoint(metadata, state_ids.expected_operator_ids(pipeline_name))

    def check_restored(self, job_id: str, savepoint: str) -> None:
        restored = self.rest.get(f"/jobs/{job_id}/checkpoints")["latest"]["restored"]
        assert restored is not None and restored["is_savepoint"], restored
        assert restored["external_path"].rstrip("/").endswith(savepoint.rstrip("/").split("/")[-1])


@pytest.fixture
def submitter(background_pipelines, flink_cluster, job_server_jar):
    return _Submitter(background_pipelines, flink_cluster, job_server_jar)


def _wait_equal(what: str, fetch, expected, log_tail):
    try:
        wait_for(lambda: fetch() == expected, RESULT_TIMEOUT_S, what)
    except TimeoutError as exc:
        got = fetch()
        lines = [str(exc)]
        for table in expected:
            mine, theirs = set(got.get(table, [])), set(expected[table])
            lines.append(f"{table}: {len(got.get(table, []))} rows, reference {len(expected[table])}; "
                         f"only after the upgrade {sorted(mine - theirs)[:10]}; "
                         f"only in the reference {sorted(theirs - mine)[:10]}")
        raise AssertionError("\n".join(lines) + "\n" + log_tail()) from exc


def _count(env, sql: str, param) -> int:
    with _pg_connect(env) as conn:
        return conn.execute(sql, (param,)).fetchone()[0]


# ---------------------------------------------------------------------- tests

FRONTEND_PG = {
    "frontend_analytics": "SELECT event_id, session_id, event_type, timestamp FROM frontend_analytics "
                          "WHERE session_id LIKE %s AND session_id NOT LIKE '%%-closer'",
    "frontend_sessions": "SELECT session_id, window_start, window_end, event_count FROM frontend_sessions "
                         "WHERE session_id LIKE %s AND session_id NOT LIKE '%%-closer'",
}


def test_frontend_job_upgraded_from_a_savepoint_equals_a_run_without_upgrade(
    services_env, flink_cluster, submitter, tmp_path
):
    env = services_env
    run_id = uuid.uuid4().hex[:10]
    start_ms = (int(time.time()) // 60 + 24 * 60) * 60_000  # tomorrow: ahead of the wall clock
    events = _frontend_input(run_id, start_ms, tmp_path)
    before, after, spanning = _split(events, "session_id")
    closer = _closer(events[-1], run_id, events[-1]["timestamp"])
    pattern = f"upg-{run_id}-%"
    duck = {name: sql.replace("%s", f"'{pattern}'").replace("%%", "%") for name, sql in FRONTEND_PG.items()}
    reference = _reference_tables("frontend", [*before, *after, closer], tmp_path, duck)

    topic = _create_topic(env["KAFKA_BOOTSTRAP"])
    args = _job_args(env, topic, f"upg-frontend-{run_id}", f"upgrade-test/{run_id}")
    _produce(env["KAFKA_BOOTSTRAP"], topic, before)
    proc, job_id, job_name = submitter.start("beam_pipelines.frontend:run", args, "iheard-upgrade-frontend")
    submitter.check_state_ids(job_id, "frontend")
    # Every event before the stop is read (its row is written in the source's stage).
    wait_for(lambda: _count(env, "SELECT count(*) FROM frontend_analytics WHERE session_id LIKE %s", pattern)
             == len({json.dumps(e, sort_keys=True) for e in before}), RESULT_TIMEOUT_S, "the first part read")
    assert _count(env, "SELECT count(*) FROM frontend_sessions WHERE session_id LIKE %s", pattern) == 0, (
        "a session closed before the stop: the test means every session to be open across it")
    savepoint = submitter.stop_with_savepoint(proc, job_id, job_name, tmp_path / "savepoints")
    submitter.check_savepoint_holds_state_ids(savepoint, "frontend")

    proc, job_id, job_name = submitter.start("tests.flink.upgrade_variants:run_frontend_with_extra_step", args,
                                             "iheard-upgrade-frontend-next", savepoint=savepoint)
    submitter.check_restored(job_id, savepoint)
    _produce(env["KAFKA_BOOTSTRAP"], topic, [*after, closer])

    tail = lambda: submitter.background.log_tail(job_name, 40)  # noqa: E731
    fetch = lambda: _pg_tables(env, FRONTEND_PG, pattern)  # noqa: E731
    _wait_equal("frontend tables equal to the run without upgrade", fetch, reference, tail)
    sessions = {row[0] for row in reference["frontend_sessions"]}
    assert spanning <= sessions and len(reference["frontend_sessions"]) == len(sessions), (
        "every session spanning the stop is one row, as without the upgrade")


TEXT_AGENT_PG = {
    "agent_conversations": "SELECT session_id, window_start, window_end, turn_count, tokens_in, tokens_out, estimated_cost_usd "
                           "FROM agent_conversations WHERE session_id LIKE %s AND session_id NOT LIKE '%%-closer'",
    "agent_billing_hourly": "SELECT tenant_id, model, hour, turns, tokens_in, tokens_out, estimated_cost_usd FROM agent_billing_hourly "
                            "WHERE tenant_id = %s",
}


def test_text_agent_job_upgraded_from_a_savepoint_equals_a_run_without_upgrade(
    services_env, flink_cluster, submitter, tmp_path
):
    env = services_env
    run_id = uuid.uuid4().hex[:10]
    start_ms = (int(time.time()) // 3600 + 24) * 3_600_000  # tomorrow, on an hour
    turns = _text_agent_input(run_id, start_ms, tmp_path)
    before, after, spanning = _split(turns, "session_id")
    # The closer bills to a tenant of its own: its hour stays open.
    closer = dict(_closer(turns[-1], run_id, turns[-1]["timestamp"]), tenant_id=f"upg-{run_id}-closer")
    tenant = f"upg-{run_id}"
    queries = dict(TEXT_AGENT_PG)
    duck = {
        "agent_conversations": queries["agent_conversations"].replace("%s", f"'upg-{run_id}-%'").replace("%%", "%"),
        "agent_billing_hourly": queries["agent_billing_hourly"].replace("%s", f"'{tenant}'"),
    }
    reference = _reference_tables("text_agent", [*before, *after, closer], tmp_path, duck)

    topic = _create_topic(env["KAFKA_BOOTSTRAP"])
    args = _job_args(env, topic, f"upg-text-agent-{run_id}", f"upgrade-test/{run_id}")
    _produce(env["KAFKA_BOOTSTRAP"], topic, before)
    proc, job_id, job_name = submitter.start("beam_pipelines.text_agent:run", args, "iheard-upgrade-text-agent")
    submitter.check_state_ids(job_id, "text_agent")
    distinct_turns = len({(t["session_id"], t["turn_id"]) for t in before})
    wait_for(lambda: _count(env, "SELECT count(*) FROM agent_turns WHERE session_id LIKE %s", f"upg-{run_id}-%")
             == distinct_turns, RESULT_TIMEOUT_S, "the first part read")
    savepoint = submitter.stop_with_savepoint(proc, job_id, job_name, tmp_path / "savepoints")
    submitter.check_savepoint_holds_state_ids(savepoint, "text_agent")

    # Another job's savepoint: refused before anything starts, naming what would be lost.
    reason = submitter.refused("beam_pipelines.frontend:run", args, savepoint)
    assert "holds no state for the stateful step(s)" in reason and "DedupeEvents/DropDuplicateBatches" in reason
    assert 'README, "Upgrading a running job"' in reason, reason

    proc, job_id, job_name = submitter.start("beam_pipelines.text_agent:run", args,
                                             "iheard-upgrade-text-agent-next", savepoint=savepoint)
    submitter.check_restored(job_id, savepoint)
    _produce(env["KAFKA_BOOTSTRAP"], topic, [*after, closer])

    tail = lambda: submitter.background.log_tail(job_name, 40)  # noqa: E731
    fetch = lambda: {  # noqa: E731
        **_pg_tables(env, {"agent_conversations": queries["agent_conversations"]}, f"upg-{run_id}-%"),
        **_pg_tables(env, {"agent_billing_hourly": queries["agent_billing_hourly"]}, tenant),
    }
    _wait_equal("text-agent tables equal to the run without upgrade", fetch, reference, tail)
    sessions = {row[0] for row in reference["agent_conversations"]}
    assert spanning <= sessions
