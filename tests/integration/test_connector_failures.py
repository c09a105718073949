"""The sinks under connection failures and outages, with real servers.

* PostgreSQL (the project's server): the writer's backend is terminated
  (``pg_terminate_backend``) between two batches, and repeatedly while a
  pipeline writes; every row still lands exactly once.
* Outages, on private servers (tests/integration/private_servers.py: the
  shared ones are never stopped, other sessions use them): a PostgreSQL or
  Redis server stopped between two batches of a bundle and started again
  while the sink retries; every row lands once and nothing is a dead letter.
  Redis stays down for 30 s (the outage issue 20's fault tests need to
  survive) under the default 60 s budget.
* Past the retry budget (a closed port): PostgreSQL fails the bundle, Redis
  dead-letters the batch as ``StoreUnavailable`` (or fails the bundle with
  ``on_exhausted="fail"``): the policy table of iheard_io.sink_base.

A private Redis keeps no data across a restart (``--save ""``), so the
checks look at writes made after the restart.
"""
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
from iheard_io.redis_io import WriteLiveKpis
from iheard_io.redis_io import _WriteLiveKpisFn
from schemas.tables import TABLES
from tests.integration.private_servers import closed_port
from tests.integration.private_servers import private_postgres
from tests.integration.private_servers import private_redis

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

BASE_TS_MS = 1_699_999_200_000


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
                            backoff_s=0.1, pipeline="frontend", create_schema=True)
    fn.setup()
    try:
        fn.start_bundle()
        data = rows(prefix, 450)
        failed = []
        for row in data[:100]:  # the 100th row flushes batch 1
            failed.extend(fn.process(row, Timestamp(0), GlobalWindow()))
        first_backend = fn._client.info.backend_pid
        assert terminate(pg_dsn, first_backend)
        for row in data[100:]:
            failed.extend(fn.process(row, Timestamp(0), GlobalWindow()))
        failed.extend(fn.finish_bundle() or [])
        assert failed == []
        # Batch 2 hit the dead connection, reconnected and was rewritten.
        assert fn._client.info.backend_pid != first_backend
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
                                        retry_backoff_seconds=0.05))
            assert_that(failed, equal_to([]))
    finally:
        done.set()
        thread.join()
    assert kills, "the killer thread never saw the writer's connection"
    assert count_rows(pg_dsn, prefix) == (n, n)


def kpi_events(prefix, n, base_ms):
    return [{"event_id": f"{prefix}{i}", "session_id": f"s{i % 5}", "event_type": "page_view",
             "timestamp_ms": base_ms + i} for i in range(n)]


def run_bundle(fn, elements, during_flush=None):
    """One bundle; ``during_flush()`` runs right after the first batch was
    flushed (the stop of a server between two batches)."""
    fn.start_bundle()
    out = []
    flushed = False
    for element in elements:
        out.extend(fn.process(element, Timestamp(0), GlobalWindow()))
        if during_flush is not None and not flushed and not fn._buffer:
            flushed = True
            during_flush()
    out.extend(fn.finish_bundle() or [])
    return out


def kpi_fn(redis_url, prefix, batch_size=40, **retry):
    return _WriteLiveKpisFn(key_prefix=prefix, active_window_s=300, minute_ttl_s=600,
                            day_ttl_s=600, conversion_event_types=(), approximate_counts=False,
                            redis_url=redis_url, client_kwargs=None, batch_size=batch_size,
                            pipeline="frontend", **retry)


def current_minute_base():
    base = (int(time.time()) // 60) * 60_000 + 1000
    return base, time.strftime("%Y%m%d%H%M", time.gmtime(base / 1000))


@pytest.mark.parametrize("outage_s, budget", [
    (2, dict(retry_budget_s=30, backoff_s=0.1)),
    # the default policy (60 s, first wait 0.2 s doubling to 5 s) rides out
    # the 30 s outage of issue 20's fault tests
    (30, dict()),
])
def test_redis_stopped_mid_write_and_restarted_loses_nothing(outage_s, budget):
    with private_redis() as server:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        prefix = "it:outage:"
        base, minute = current_minute_base()
        key = f"{prefix}events:page_view:{minute}"
        fn = kpi_fn(server.url, prefix, **budget)
        fn.setup()
        restarter = threading.Timer(outage_s, server.start)
        try:
            assert run_bundle(fn, kpi_events("a", 100, base)) == []
            assert client.scard(key) == 100

            # Stopped after the first batch of a bundle; the second batch
            # waits for it; back after outage_s.
            def stop():
                server.stop()
                restarter.start()
            assert run_bundle(fn, kpi_events("b", 120, base), during_flush=stop) == []
            restarter.join()
            # the first 40 went to the old server; the 80 after the restart land
            assert {f"b{i}" for i in range(40, 120)} <= client.smembers(key)
            assert run_bundle(fn, kpi_events("c", 10, base)) == []
            assert {f"c{i}" for i in range(10)} <= client.smembers(key)
        finally:
            restarter.cancel()
            fn.teardown()
            client.close()


def test_redis_down_past_the_budget_dead_letters_or_by_choice_fails():
    url = f"redis://127.0.0.1:{closed_port()}/0"
    events = kpi_events("x", 3, current_minute_base()[0])
    fn = kpi_fn(url, "it:closed:", retry_budget_s=0.5, backoff_s=0.05)
    fn.setup()
    out = run_bundle(fn, events)
    assert [o.value.value.error_class for o in out] == ["StoreUnavailable"] * 3
    assert "Redis unavailable past the 0.5 s retry budget" in out[0].value.value.error_message
    fn.teardown()

    with pytest.raises(Exception) as raised:
        with BeamTestPipeline(runner=FnApiRunner()) as p:
            _ = p | beam.Create(events) | WriteLiveKpis(
                url, key_prefix="it:closed:", retry_budget_seconds=0.5,
                retry_backoff_seconds=0.05, on_exhausted="fail")
    assert "Connection refused" in str(raised.value) or "Error 111" in str(raised.value)


def test_postgres_stopped_mid_write_and_restarted_loses_nothing():
    """``pg_ctl stop -m fast`` between two batches; the second batch is
    retried on fresh connections until the server is back."""
    with private_postgres() as server:
        prefix = f"it-outage-{uuid.uuid4().hex[:8]}"
        fn = _WriteToPostgresFn(server.dsn, TABLES["frontend_analytics"], batch_size=100,
                                retry_budget_s=60, backoff_s=0.1, pipeline="frontend")
        fn.setup()
        restarter = threading.Timer(3, server.start)

        def stop():
            server.stop()
            restarter.start()
        try:
            assert run_bundle(fn, rows(prefix, 350), during_flush=stop) == []
            restarter.join()
        finally:
            restarter.cancel()
            fn.teardown()
        assert count_rows(server.dsn, prefix) == (350, 350)


def test_postgres_down_past_the_budget_fails_the_bundle():
    dsn = f"host=127.0.0.1 port={closed_port()} user=iheard dbname=analytics connect_timeout=2"
    fn = _WriteToPostgresFn(dsn, TABLES["frontend_analytics"], batch_size=10,
                            retry_budget_s=0.5, backoff_s=0.05, pipeline="frontend")
    fn.setup()  # down at setup: not an error yet, the write retries
    with pytest.raises(psycopg.OperationalError):
        run_bundle(fn, rows("it-closed", 3))
    fn.teardown()


def test_engagement_lookup_down_past_the_budget_fails_the_bundle():
    """A lead is never scored on made-up engagement: the lookup retries a
    database that is down for its budget, then the bundle fails."""
    from iheard_io.engagement import LookupEngagement

    dsn = f"host=127.0.0.1 port={closed_port()} user=iheard dbname=analytics connect_timeout=2"
    with pytest.raises(Exception, match="(?i)connection refused|connection failed"):
        with BeamTestPipeline(runner=FnApiRunner()) as p:
            _ = p | beam.Create([{"id": 1, "_keys": ["u1"]}]) | LookupEngagement(
                "_keys", "_engagement", postgres_dsn=dsn, retry_budget_seconds=0.5,
                retry_backoff_seconds=0.05)
