"""The sinks under connection failures, with the real servers.

* PostgreSQL: the writer's backend is terminated (``pg_terminate_backend``)
  between two batches, and repeatedly while a pipeline writes; every row
  still lands exactly once.
* Redis: the server is restarted between two bundles (through
  ``services/services.sh``, the only thing allowed to stop it), and is down
  when a batch is flushed and back within the retry budget; the writes after
  the restart all land and nothing comes out as failed.

The project's Redis keeps no data across a restart (``save ""``, no AOF in
services.sh), so what a restart loses is Redis' own state, not the sink's
writes; the checks below look at writes made after the restart.
"""
import os
import pathlib
import subprocess
import threading
import time
import uuid

import apache_beam as beam
import psycopg
import pytest
import redis
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp
from psycopg.conninfo import make_conninfo

from iheard_io.postgres import WriteToPostgres
from iheard_io.postgres import _WriteToPostgresFn
from iheard_io.redis_io import _WriteLiveKpisFn
from schemas.tables import TABLES

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SERVICES_SH = pathlib.Path(__file__).resolve().parents[2] / "services" / "services.sh"
BASE_TS_MS = 1_699_999_200_000


def services(*args):
    def run():
        return subprocess.run(["bash", str(SERVICES_SH), *args], env=os.environ.copy(),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=180)
    done = run()
    if done.returncode != 0 and args[0] == "up":
        # `up` is idempotent; a second call settles a readiness check that
        # raced the server's start (it then finds the server running).
        done = run()
    assert done.returncode == 0, f"services.sh {' '.join(args)}: {done.stderr}"


def rows(prefix, n):
    return [{"event_id": f"{prefix}-{i:06d}", "event_type": "page_view",
             "engagement_score": i % 100, "timestamp": BASE_TS_MS + i} for i in range(n)]


def count_rows(dsn, prefix):
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM frontend_analytics WHERE event_id LIKE %s",
            (prefix + "-%",)).fetchone()


def terminate(dsn, pid):
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]


def test_postgres_backend_terminated_between_batches(pg_dsn):
    prefix = f"it-fail-{uuid.uuid4().hex[:8]}"
    fn = _WriteToPostgresFn(pg_dsn, TABLES["frontend_analytics"], batch_size=100,
                            max_retries=5, backoff_s=0.1, pipeline="frontend", create_schema=True)
    fn.setup()
    try:
        fn.start_bundle()
        data = rows(prefix, 450)
        failed = []
        for row in data[:100]:  # the 100th row flushes batch 1
            failed.extend(fn.process(row, Timestamp(0), GlobalWindow()))
        first_backend = fn._conn.info.backend_pid
        assert terminate(pg_dsn, first_backend)
        for row in data[100:]:
            failed.extend(fn.process(row, Timestamp(0), GlobalWindow()))
        failed.extend(fn.finish_bundle() or [])
        assert failed == []
        # Batch 2 hit the dead connection, reconnected and was rewritten.
        assert fn._conn.info.backend_pid != first_backend
    finally:
        fn.teardown()
    assert count_rows(pg_dsn, prefix) == (450, 450)


def test_postgres_backends_terminated_while_pipeline_writes(pg_dsn):
    """A killer thread terminates the writer's backends (found by their
    application_name) again and again during a pipeline run; transactions
    in flight roll back and are retried, so every row is there once."""
    prefix = f"it-fail-{uuid.uuid4().hex[:8]}"
    app = f"it-writer-{uuid.uuid4().hex[:8]}"
    writer_dsn = make_conninfo(pg_dsn, application_name=app)
    n = 8_000
    kills = []
    done = threading.Event()

    def killer():
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            while not done.is_set() and len(kills) < 4:
                # Find the pids first: in one WHERE clause the planner may
                # call pg_terminate_backend before filtering by name.
                pids = [r[0] for r in conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,))]
                terminated = [pid for pid in pids if conn.execute(
                    "SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]]
                kills.extend(terminated)
                time.sleep(0.4 if terminated else 0.05)

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        with BeamTestPipeline(runner=FnApiRunner()) as p:
            failed = (p | beam.Create(rows(prefix, n))
                      | WriteToPostgres(writer_dsn, "frontend_analytics", batch_size=200,
                                        max_retries=8, retry_backoff_seconds=0.05))
            assert_that(failed, equal_to([]))
    finally:
        done.set()
        thread.join()
    assert kills, "the killer thread never saw the writer's connection"
    assert count_rows(pg_dsn, prefix) == (n, n)


def kpi_events(prefix, n, base_ms):
    return [{"event_id": f"{prefix}{i}", "session_id": f"s{i % 5}", "event_type": "page_view",
             "timestamp_ms": base_ms + i} for i in range(n)]


def run_bundle(fn, elements):
    fn.start_bundle()
    out = []
    for element in elements:
        out.extend(fn.process(element, Timestamp(0), GlobalWindow()))
    out.extend(fn.finish_bundle() or [])
    return out


@pytest.fixture()
def redis_client(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def test_redis_restart_between_bundles_and_outage_during_flush(redis_url, redis_client):
    prefix = f"it:fail:{uuid.uuid4().hex[:8]}:"
    base = (int(time.time()) // 60) * 60_000 + 1000
    minute = time.strftime("%Y%m%d%H%M", time.gmtime(base / 1000))
    key = f"{prefix}events:page_view:{minute}"
    fn = _WriteLiveKpisFn(redis_url, None, batch_size=40, max_retries=6, backoff_s=0.2,
                          pipeline="frontend", key_prefix=prefix, active_window_s=300,
                          minute_ttl_s=600, day_ttl_s=600, conversion_event_types=(),
                          approximate_counts=False)
    fn.setup()
    try:
        assert run_bundle(fn, kpi_events("a", 100, base)) == []
        assert redis_client.scard(key) == 100

        # Restart between bundles: the pooled connections are dead now.
        services("down", "redis")
        services("up", "redis")
        assert run_bundle(fn, kpi_events("b", 100, base)) == []
        members = redis_client.smembers(key)
        assert {f"b{i}" for i in range(100)} <= members

        # Down while a bundle flushes; back 1.5 s later, inside the retry
        # budget (0.2 + 0.4 + 0.8 + 1.6 + ... s).
        services("down", "redis")
        restarter = threading.Timer(1.5, services, args=("up", "redis"))
        restarter.start()
        try:
            assert run_bundle(fn, kpi_events("c", 100, base)) == []
        finally:
            restarter.join()
        assert redis_client.scard(key) == 100
        assert redis_client.smembers(key) == {f"c{i}" for i in range(100)}
    finally:
        fn.teardown()
        # Whatever happened above, leave Redis running for the other tests.
        services("up", "redis")
        for k in redis_client.scan_iter(match=prefix + "*"):
            redis_client.delete(k)
