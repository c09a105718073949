"""Upgrading a streaming job *without* its state: stop, rewind the consumer group, start fresh.

The README's "procedure when the state cannot be carried over", on the local
Flink cluster, for the frontend and the text-agent job:

1. the job (``runners.submit``, LOOPBACK) reads the first part of an input on
   a topic of the test's own into a PostgreSQL database of the test's own, and
   is stopped with a savepoint (``runners.submit stop``) that is not used;
2. ``runners.submit rewind --to_open_windows`` reads that database and moves
   the group back to the start of the oldest window still open;
3. the job starts again without a savepoint on the same group, and the rest
   of the input is sent.

The input has two phases two hours apart, so that at the stop the first
phase's sessions (conversations, billing hour) have fired and the second
phase's are open, some with events on both sides of the stop; between them
one fired session and one open session whose start falls inside the fired
one's window, so the rewind must widen the oldest open window's start to
the fired window's (the frontend) or to the billing hour (the text agent). The tables
must equal a run of the whole input without a stop (the same module on the
DirectRunner, into DuckDB): the fired windows are not written twice or cut,
and the open ones come out whole. The rewind must land at the second phase's
start, not at the beginning of the topic (which would be trivially right).

``without_rewind`` runs step 3 straight after step 1, which is what happens
when step 2 is skipped: the sessions open at the stop lose the events read
before it (they never fired, and the state is gone).

Times: tomorrow on an hour (ahead of the wall clock: an idle partition's
watermark never closes a window), the second phase at +2 h (past the 30 min
gap and the 1 h allowed lateness of the first), and a closer record 3 h after
the last one, in a session and tenant of its own left out of the comparison,
which moves the watermark past every window.

Run: ``python -m pytest tests/flink/test_rewind.py`` (~3 minutes, three jobs stopped and restarted).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
import typing
import uuid

import psycopg
import pytest

from iheard_io import settings
from runners.rewind import iso
from tests.flink.flink_rest import wait_for
from tests.flink.test_frontend_streaming import services_env  # noqa: F401  (a fixture)
from tests.flink.test_upgrade import (  # noqa: F401  (job_server_jar and submitter are fixtures)
    REPO_ROOT,
    RESULT_TIMEOUT_S,
    _create_topic,
    _frontend_input,
    _job_args,
    _plain,
    _produce,
    _reference_tables,
    _text_agent_input,
    _wait_equal,
    job_server_jar,
    submitter,
)

pytestmark = [pytest.mark.flink, pytest.mark.integration, pytest.mark.slow]

HOUR_MS = 3_600_000
GAP_MS = 30 * 60_000
FIRST_PHASE_MS = 10 * 60_000
SECOND_PHASE_AT_MS = 2 * HOUR_MS
SECOND_PHASE_MS = 40 * 60_000
STOP_AT_MS = SECOND_PHASE_AT_MS + 20 * 60_000
BRIDGES = [(90 * 60_000, 15 * 60_000), (100 * 60_000, 15 * 60_000)]  # (start after t0, span)
FIRED_BY = STOP_AT_MS - 5 * 60_000  # a window ending before this has fired at the stop


def _two_phases(records: typing.List[dict], t0_ms: int) -> typing.List[dict]:
    """The first third of the sessions (in order of appearance) in [t0, t0 + 10 min], the
    others in [t0 + 2 h, t0 + 2 h 40 min], each phase keeping the input's order; and two
    sessions of several records in between: FIRED_BRIDGE in [1 h 30, 1 h 45] (fired at the
    stop) and OPEN_BRIDGE in [1 h 40, 1 h 55] (open at the stop: the oldest open window,
    and it cuts FIRED_BRIDGE's, so the rewind must go back to FIRED_BRIDGE's start)."""
    records = sorted(records, key=lambda r: r["timestamp"])
    sessions = list(dict.fromkeys(r["session_id"] for r in records))
    early = set(sessions[: len(sessions) // 3])
    sizes = {s: sum(1 for r in records if r["session_id"] == s) for s in sessions}
    bridges = [s for s in sessions if s not in early and sizes[s] >= 2][:2]
    spans = [(0, FIRST_PHASE_MS), (SECOND_PHASE_AT_MS, SECOND_PHASE_MS), *BRIDGES]
    phases = [[r for r in records if r["session_id"] in early],
              [r for r in records if r["session_id"] not in early and r["session_id"] not in bridges],
              *([r for r in records if r["session_id"] == b] for b in bridges)]
    out = []
    for phase, (offset, span) in zip(phases, spans):
        start = t0_ms + offset
        for i, record in enumerate(phase):
            out.append(dict(record, timestamp=start + i * span // max(len(phase) - 1, 1)))
    return sorted(out, key=lambda r: r["timestamp"])


class _Job(typing.NamedTuple):
    module: str
    make_input: typing.Callable
    queries: typing.Mapping[str, str]       # the compared tables, PostgreSQL and DuckDB alike
    read_count: str                         # rows written per record read (before the stop)
    read_key: typing.Callable[[dict], tuple]
    fired_at_stop: typing.Mapping[str, typing.Callable[[tuple, int], bool]]
    rewind_to: int                          # after t0: the oldest open window, widened to whole windows


JOBS = {
    "frontend": _Job(
        "frontend", _frontend_input,
        {
            "frontend_analytics": "SELECT event_id, session_id, event_type, timestamp FROM frontend_analytics "
                                  "WHERE session_id NOT LIKE '%-closer'",
            "frontend_sessions": "SELECT session_id, window_start, window_end, event_count FROM frontend_sessions "
                                 "WHERE session_id NOT LIKE '%-closer'",
        },
        "SELECT count(*) FROM frontend_analytics",
        lambda e: json.dumps(e, sort_keys=True),  # generated events carry no event_id
        {"frontend_sessions": lambda row, t0: row[2] <= t0 + FIRED_BY},
        BRIDGES[0][0],  # OPEN_BRIDGE's start (1 h 40) cuts FIRED_BRIDGE's window: back to 1 h 30
    ),
    "text_agent": _Job(
        "text_agent", _text_agent_input,
        {
            "agent_conversations": "SELECT session_id, window_start, window_end, turn_count, tokens_in, tokens_out, "
                                   "estimated_cost_usd FROM agent_conversations WHERE session_id NOT LIKE '%-closer'",
            "agent_billing_hourly": "SELECT tenant_id, model, hour, turns, tokens_in, tokens_out, estimated_cost_usd "
                                    "FROM agent_billing_hourly WHERE tenant_id NOT LIKE '%-closer'",
        },
        "SELECT count(*) FROM agent_turns",
        lambda t: (t["session_id"], t["turn_id"]),
        {"agent_conversations": lambda row, t0: row[2] <= t0 + FIRED_BY,
         "agent_billing_hourly": lambda row, t0: row[2] + HOUR_MS <= t0 + FIRED_BY},
        HOUR_MS,  # OPEN_BRIDGE's start (1 h 40) floored to its billing hour, which starts before FIRED_BRIDGE
    ),
}


@pytest.fixture
def fresh_db(services_env):  # noqa: F811
    """A PostgreSQL database of the test's own: ``--to_open_windows`` reads whole tables."""
    admin = settings.postgres_dsn(services_env)
    name = f"rewind_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield dict(services_env, POSTGRES_DB=name)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _pg(env, sql: str):
    with psycopg.connect(settings.postgres_dsn(env)) as conn:
        return conn.execute(sql).fetchall()


def _count(env, sql: str) -> int:
    try:
        return _pg(env, sql)[0][0]
    except psycopg.errors.UndefinedTable:
        return -1


def _tables(env, queries):
    return {name: sorted(_plain(row) for row in _pg(env, sql)) for name, sql in queries.items()}


def _rewind(env, master: str, group: str, topic: str, job: str, job_name: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "runners.submit", "rewind", f"--job={job}", f"--kafka_group_id={group}",
         f"--topic={topic}", "--to_open_windows", f"--postgres_dsn={settings.postgres_dsn(env)}",
         f"--kafka_bootstrap={env['KAFKA_BOOTSTRAP']}", f"--job_name={job_name}", f"--flink_master={master}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("0: "), done.stdout  # "partition: old -> new", then the JSON line
    return json.loads(lines[-1])


@pytest.mark.parametrize("pipeline,rewind", [
    ("frontend", True),
    ("frontend", False),
    ("text_agent", True),
], ids=["frontend", "frontend-without_rewind", "text_agent"])
def test_restart_without_savepoint_after_rewind_equals_a_run_without_stop(
    pipeline, rewind, fresh_db, flink_cluster, submitter, tmp_path
):
    job = JOBS[pipeline]
    env = fresh_db
    run_id = uuid.uuid4().hex[:10]
    t0 = (int(time.time()) // 3600 + 24) * HOUR_MS  # tomorrow, on an hour
    records = _two_phases(job.make_input(run_id, t0, tmp_path), t0)
    before = [r for r in records if r["timestamp"] < t0 + STOP_AT_MS]
    after = [r for r in records if r["timestamp"] >= t0 + STOP_AT_MS]
    closer = dict(records[-1], session_id=f"upg-{run_id}-closer", timestamp=records[-1]["timestamp"] + 3 * HOUR_MS)
    if "tenant_id" in closer:
        closer["tenant_id"] = f"upg-{run_id}-closer"  # its billing hour stays open
    reference = _reference_tables(job.module, [*before, *after, closer], tmp_path, job.queries)
    fired_at_stop = {table: sum(1 for row in reference[table] if fired(row, t0))
                     for table, fired in job.fired_at_stop.items()}
    # (frontend) the sessions with events on both sides of the stop: window_end is the last event + gap
    spanning = [row for row in reference["frontend_sessions"]
                if row[1] < t0 + STOP_AT_MS <= row[2] - GAP_MS] if pipeline == "frontend" else None
    assert all(fired_at_stop.values()) and spanning != [], (fired_at_stop, spanning)

    topic = _create_topic(env["KAFKA_BOOTSTRAP"])
    group = f"rewind-{pipeline}-{run_id}"
    args = _job_args(env, topic, group, f"rewind-test/{run_id}")
    _produce(env["KAFKA_BOOTSTRAP"], topic, before)
    proc, job_id, job_name = submitter.start(f"beam_pipelines.{job.module}:run", args, f"iheard-rewind-{pipeline}")
    # Everything before the stop read, and the first phase's windows fired (so they are in the tables).
    wait_for(lambda: _count(env, job.read_count) == len({job.read_key(r) for r in before}), RESULT_TIMEOUT_S,
             "the first part read")
    wait_for(lambda: all(_count(env, f"SELECT count(*) FROM {table}") == n for table, n in fired_at_stop.items()),
             RESULT_TIMEOUT_S, f"the first phase's windows fired: {fired_at_stop}")
    submitter.stop_with_savepoint(proc, job_id, job_name, tmp_path / "savepoints")

    if rewind:
        report = _rewind(env, submitter.master, group, topic, pipeline, job_name)
        # Not the topic's start: the group goes back from the stop to the first record of
        # the oldest window still open, widened so that no fired window is read in part.
        assert report["rewind_to"] == iso(t0 + job.rewind_to), report
        first_open = next(i for i, r in enumerate(before) if r["timestamp"] >= t0 + job.rewind_to)
        assert first_open > 0
        assert report["moved"] == {"0": [len(before), first_open]}, report

    proc, job_id, job_name = submitter.start(f"beam_pipelines.{job.module}:run", args,
                                             f"iheard-rewind-{pipeline}-next")
    _produce(env["KAFKA_BOOTSTRAP"], topic, [*after, closer])
    tail = lambda: submitter.background.log_tail(job_name, 40)  # noqa: E731
    fetch = lambda: _tables(env, job.queries)  # noqa: E731
    if rewind:
        _wait_equal(f"{pipeline} tables equal to the run without a stop", fetch, reference, tail)
        return

    # Without step 2: every event is there, but the sessions open at the stop lost their first part.
    after_sessions = {r["session_id"] for r in after}

    def fired_after_stop():
        rows = fetch()["frontend_sessions"]
        return after_sessions <= {row[0] for row in rows if row[2] - GAP_MS >= t0 + STOP_AT_MS}

    wait_for(fired_after_stop, RESULT_TIMEOUT_S, "the sessions with events after the stop fired")
    wait_for(lambda: fetch()["frontend_analytics"] == reference["frontend_analytics"], RESULT_TIMEOUT_S,
             "every event in frontend_analytics")
    got = {(row[0], row[1]): row for row in fetch()["frontend_sessions"]}
    for row in spanning:
        assert (row[0], row[1]) not in got, f"session {row[0]} spanning the stop came out whole without a rewind"
        rest = [r for key, r in got.items() if key[0] == row[0]]
        assert rest and all(r[1] >= t0 + STOP_AT_MS and r[3] < row[3] for r in rest), (row, rest)
    # Sessions open at the stop without events after it never fired and are not re-read: gone.
    only_before = {row[0] for row in reference["frontend_sessions"]
                   if row[2] > t0 + FIRED_BY and row[2] - GAP_MS < t0 + STOP_AT_MS}
    assert not only_before & {key[0] for key in got}, only_before
