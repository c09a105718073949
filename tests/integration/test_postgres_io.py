"""WriteToPostgres against the project's PostgreSQL.

The sink writes into the real project tables; every test uses its own
``event_id`` / ``failure_id`` prefix and only looks at its own rows, so it
neither sees nor disturbs rows of the pipeline tests.
"""
import datetime as dt
import threading
import uuid

import apache_beam as beam
import psycopg
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to

from beam_pipelines.options import IheardOptions
from beam_pipelines.options import resolve_connections
from iheard_io.postgres import WriteToPostgres
from iheard_io.postgres import ensure_schema
from schemas.records import FailedRecord
from schemas.tables import failure_row

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

BASE_TS_MS = 1_699_999_200_000  # 2023-11-14T22:00:00Z


def event_row(prefix, i, **overrides):
    row = {
        "event_id": f"{prefix}-{i:05d}",
        "session_id": f"{prefix}-s{i % 7}",
        "event_type": "page_view",
        "engagement_score": i % 100,
        "quality_score": 80,
        "transformation_metadata": {"version": "1", "i": i},
        "timestamp": BASE_TS_MS + i * 1000,
        "country": "DE",
        "_source": {"topic": "frontend_user_interaction", "partition": i % 8, "offset": i},
    }
    row.update(overrides)
    return row


def table_state(dsn, prefix):
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT event_id, session_id, event_type, engagement_score, quality_score, "
            "transformation_metadata, timestamp, country FROM frontend_analytics "
            "WHERE event_id LIKE %s ORDER BY event_id", (prefix + "-%",)).fetchall()


def write(dsn, rows, **kwargs):
    with BeamTestPipeline(runner=FnApiRunner()) as p:
        failed = p | beam.Create(rows) | WriteToPostgres(dsn, "frontend_analytics", **kwargs)
        assert_that(failed, equal_to([]), label="NoFailures")


@pytest.fixture()
def prefix():
    return f"it-pg-{uuid.uuid4().hex[:8]}"


def test_upsert_is_idempotent_and_updates_in_place(pg_dsn, prefix):
    rows = [event_row(prefix, i) for i in range(250)]
    write(pg_dsn, rows, batch_size=64, pipeline="frontend")
    first = table_state(pg_dsn, prefix)
    assert len(first) == 250
    assert first[3][:4] == (f"{prefix}-00003", f"{prefix}-s3", "page_view", 3)
    assert first[3][5] == {"version": "1", "i": 3}
    assert first[3][6] == dt.datetime(2023, 11, 14, 22, 0, 3, tzinfo=dt.timezone.utc)

    # Replay the same rows (what Flink does after a restore): same table.
    write(pg_dsn, rows, batch_size=64, pipeline="frontend")
    assert table_state(pg_dsn, prefix) == first

    # A newer version of some rows replaces them; nothing is duplicated.
    changed = [event_row(prefix, i, event_type="widget_open") for i in range(0, 250, 10)]
    write(pg_dsn, changed, batch_size=64)
    after = table_state(pg_dsn, prefix)
    assert len(after) == 250
    assert sum(1 for r in after if r[2] == "widget_open") == 25


def run_fn(dsn, table, rows, batch_size=100):
    """Drives the write DoFn like a runner: setup, one bundle, teardown."""
    from apache_beam.transforms.window import GlobalWindow
    from apache_beam.utils.timestamp import Timestamp

    from iheard_io.postgres import _WriteToPostgresFn
    from schemas.tables import TABLES

    fn = _WriteToPostgresFn(dsn, TABLES[table], batch_size, backoff_s=0.1,
                            pipeline="frontend", create_schema=True)
    fn.setup()
    try:
        fn.start_bundle()
        out = []
        for row in rows:
            out.extend(fn.process(row, Timestamp(0), GlobalWindow()))
        out.extend(fn.finish_bundle() or [])
        return fn, out
    finally:
        fn.teardown()


def test_same_key_twice_in_one_batch_keeps_the_last(pg_dsn, prefix):
    rows = [event_row(prefix, 1, engagement_score=10), event_row(prefix, 2),
            event_row(prefix, 1, engagement_score=55)]
    # One batch holds both versions of row 1: a plain INSERT ... ON CONFLICT
    # would fail ("cannot affect row a second time"); the sink keeps the last.
    _, failed = run_fn(pg_dsn, "frontend_analytics", rows, batch_size=100)
    assert failed == []
    state = {r[0]: r[3] for r in table_state(pg_dsn, prefix)}
    assert state == {f"{prefix}-00001": 55, f"{prefix}-00002": 2}


def test_first_writer_wins_keeps_the_first_copy_across_and_within_batches(pg_dsn, prefix):
    # The streaming hot path writes frontend_analytics before de-duplication
    # (beam_pipelines/frontend.py): a duplicate with other content must not
    # replace the copy that de-duplication passes on to sessions and archive.
    first = [event_row(prefix, i, engagement_score=10) for i in range(3)]
    write(pg_dsn, first, batch_size=64, first_writer_wins=True)
    later = [event_row(prefix, 1, engagement_score=99), event_row(prefix, 3, engagement_score=7),
             event_row(prefix, 3, engagement_score=8)]  # row 3 twice in one batch: the first stays
    write(pg_dsn, later, batch_size=64, first_writer_wins=True)
    state = {r[0]: r[3] for r in table_state(pg_dsn, prefix)}
    assert state == {f"{prefix}-00000": 10, f"{prefix}-00001": 10, f"{prefix}-00002": 10,
                     f"{prefix}-00003": 7}
    # The default (bounded runs, re-runs): the newest copy replaces it.
    write(pg_dsn, [event_row(prefix, 1, engagement_score=99)], batch_size=64)
    assert {r[0]: r[3] for r in table_state(pg_dsn, prefix)}[f"{prefix}-00001"] == 99


def test_bad_rows_go_to_failed_output_and_good_rows_land(pg_dsn, prefix):
    rows = [event_row(prefix, i) for i in range(200)]
    rows[17]["engagement_score"] = 140          # CHECK violation
    rows[88]["event_type"] = None               # NOT NULL violation
    rows[120]["timestamp"] = "not a time"       # row_values cannot convert
    rows[150]["country"] = "X" * 40             # value too long (DataError)
    rows[160]["country"] = {"nested": True}     # psycopg cannot adapt a dict
    rows[170]["session_id"] = "a\x00b"          # NUL byte in text
    expected = [
        (17, "CheckViolation"), (88, "NotNullViolation"), (120, "ValueError"),
        (150, "StringDataRightTruncation"), (160, "ProgrammingError"), (170, "DataError")]

    def summary(f: FailedRecord):
        assert f'"event_id": "{prefix}-{f.source_offset:05d}"' in f.raw
        return (f.source_offset, f.error_class, f.stage, f.pipeline, f.source_topic,
                f.source_partition)

    with BeamTestPipeline(runner=FnApiRunner()) as p:
        failed = (p | beam.Create(rows)
                  | WriteToPostgres(pg_dsn, "frontend_analytics", batch_size=50, pipeline="frontend"))
        assert_that(
            failed | beam.Map(summary),
            equal_to([(o, cls, "sink:postgres", "frontend", "frontend_user_interaction", o % 8)
                      for o, cls in expected]))
        # The dead letters land in failed_events through the same sink.
        _ = (failed | beam.Map(failure_row)
             | "WriteDeadLetters" >> WriteToPostgres(pg_dsn, "failed_events"))

    bad = {o for o, _ in expected}
    landed = [r[0] for r in table_state(pg_dsn, prefix)]
    assert landed == [f"{prefix}-{i:05d}" for i in range(200) if i not in bad]
    with psycopg.connect(pg_dsn) as conn:
        stored = conn.execute(
            "SELECT source_offset, stage, error_class FROM failed_events "
            "WHERE raw_payload LIKE %s ORDER BY source_offset", (f'%"{prefix}-%',)).fetchall()
    assert stored == [(o, "sink:postgres", cls) for o, cls in expected]


def test_ensure_schema_is_idempotent_under_concurrency(pg_dsn):
    errors = []

    def apply():
        try:
            ensure_schema(pg_dsn)
        except Exception as exc:  # pylint: disable=broad-except
            errors.append(exc)

    threads = [threading.Thread(target=apply) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with psycopg.connect(pg_dsn) as conn:
        tables = {r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"frontend_analytics", "frontend_sessions", "failed_events", "marketo_leads"} <= tables


def test_dsn_from_environment_connects(pg_dsn):
    info = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    dsn = resolve_connections(IheardOptions([]), env={
        "POSTGRES_HOST": info["host"], "POSTGRES_PORT": str(info["port"]),
        "POSTGRES_USER": info["user"], "POSTGRES_PASSWORD": info.get("password", ""),
        "POSTGRES_DB": info["dbname"], "POSTGRES_SSLMODE": "disable",
    }).postgres_dsn
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0] == info["dbname"]
    with pytest.raises(ValueError):
        WriteToPostgres(dsn, "no_such_table")


def test_sessions_table_composite_key(pg_dsn):
    session = f"it-pg-{uuid.uuid4().hex[:8]}"
    start = BASE_TS_MS
    rows = [
        {"session_id": session, "window_start": start, "window_end": start + 60_000,
         "event_count": n, "pane_index": n, "updated_at": start + n}
        for n in (1, 2, 3)
    ] + [{"session_id": session, "window_start": start + 3_600_000,
          "window_end": start + 3_660_000, "event_count": 9}]
    with BeamTestPipeline(runner=FnApiRunner()) as p:
        failed = p | beam.Create(rows) | WriteToPostgres(pg_dsn, "frontend_sessions", batch_size=2)
        assert_that(failed, equal_to([]))
    with psycopg.connect(pg_dsn) as conn:
        counts = conn.execute(
            "SELECT window_start, event_count FROM frontend_sessions WHERE session_id = %s "
            "ORDER BY window_start", (session,)).fetchall()
    assert len(counts) == 2
    assert counts[1][1] == 9
    assert counts[0][1] in (1, 2, 3)
