"""The JSONL source and the embedded DuckDB sink, on the in-process FnApiRunner."""
import gzip

import apache_beam as beam
import duckdb
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from iheard_io.embedded import WriteToEmbeddedDb, close_embedded, ensure_embedded_schema
from iheard_io.files import ReadFromJsonLines
from schemas.tables import ddl_statements


def test_jsonl_source_numbers_lines_and_skips_blanks(tmp_path):
    plain = tmp_path / "a.jsonl"
    plain.write_text('{"a":1}\n\n{"a":2}\r\nnot json\n')
    packed = tmp_path / "b.jsonl.gz"
    with gzip.open(packed, "wt") as handle:
        handle.write('{"b":1}\n{"b":2}\n')
    with beam.Pipeline(runner=FnApiRunner()) as p:
        records = p | ReadFromJsonLines(str(tmp_path / "*.jsonl*"))
        assert_that(
            records | beam.Map(lambda r: (r.topic.rsplit("/", 1)[-1], r.offset, r.value)),
            equal_to([
                ("a.jsonl", 1, b'{"a":1}'), ("a.jsonl", 3, b'{"a":2}'), ("a.jsonl", 4, b"not json"),
                ("b.jsonl.gz", 1, b'{"b":1}'), ("b.jsonl.gz", 2, b'{"b":2}'),
            ]),
        )


def test_jsonl_source_rejects_empty_pattern():
    with pytest.raises(ValueError):
        ReadFromJsonLines("")


def test_duckdb_dialect_keeps_checks_and_maps_jsonb():
    statements = ddl_statements("duckdb")
    assert not any("JSONB" in s for s in statements)
    assert any("CHECK (engagement_score >= 0" in s for s in statements)
    with pytest.raises(ValueError):
        ddl_statements("mysql")


def _row(event_id, session="s1", score=50, ts=1_767_225_600_000):
    return {"event_id": event_id, "session_id": session, "event_type": "page_view",
            "engagement_score": score, "timestamp": ts,
            "transformation_metadata": {"steps_applied": ["parse"]}}


def test_embedded_sink_upserts_and_returns_rejected_rows(tmp_path):
    path = str(tmp_path / "db" / "t.duckdb")
    ensure_embedded_schema(path)
    rows = [_row(f"e{i}", score=i * 9) for i in range(12)]  # scores 0..99
    rows.append(_row("bad", score=500))  # violates the CHECK
    rows.append(_row("e1", session="s2", score=77))  # same key: replaces e1
    with beam.Pipeline(runner=FnApiRunner()) as p:
        failed = p | beam.Create(rows) | WriteToEmbeddedDb(path, "frontend_analytics", batch_size=5)
        assert_that(
            failed | beam.Map(lambda f: (f.stage, f.error_class, '"bad"' in f.raw)),
            equal_to([("sink:embedded", "ConstraintException", True)]),
        )
    close_embedded(path)
    con = duckdb.connect(path)
    assert con.execute("select count(*) from frontend_analytics").fetchone()[0] == 12
    # e1 was written twice (possibly in different batches); whichever came last wins,
    # and there is exactly one row for it.
    assert con.execute("select count(*) from frontend_analytics where event_id='e1'").fetchone()[0] == 1
    meta = con.execute("select transformation_metadata from frontend_analytics where event_id='e3'").fetchone()[0]
    assert '"steps_applied"' in meta
    con.close()


def test_embedded_sink_is_idempotent_under_replay(tmp_path):
    path = str(tmp_path / "r.duckdb")
    rows = [_row(f"e{i}", score=i) for i in range(30)]
    for _ in range(2):
        ensure_embedded_schema(path)
        with beam.Pipeline(runner=FnApiRunner()) as p:
            _ = p | beam.Create(rows) | WriteToEmbeddedDb(path, "frontend_analytics", batch_size=7)
        close_embedded(path)
    con = duckdb.connect(path)
    assert con.execute("select count(*), sum(engagement_score) from frontend_analytics").fetchone() == (30, sum(range(30)))
    con.close()


def test_embedded_sink_rejects_unknown_table():
    with pytest.raises(ValueError):
        WriteToEmbeddedDb("/tmp/x.duckdb", "no_such_table")


def test_a_stale_session_pane_does_not_overwrite_a_fuller_one(tmp_path):
    from iheard_io.embedded import _database, upsert_rows
    from iheard_io.postgres import upsert_sql
    from schemas.tables import TABLES

    spec = TABLES["frontend_sessions"]
    assert upsert_sql(spec, "src").endswith(
        "WHERE excluded.event_count >= frontend_sessions.event_count")
    path = str(tmp_path / "s.duckdb")
    cursor = _database(path).cursor()

    def pane(count, updated):
        return {"session_id": "A", "window_start": 1_767_225_600_000,
                "window_end": 1_767_227_400_000, "event_count": count, "updated_at": updated}

    upsert_rows(cursor, spec, [pane(4, 1_767_230_000_000)])
    upsert_rows(cursor, spec, [pane(3, 1_767_230_500_000)])  # older pane, delivered late
    assert cursor.execute("select event_count from frontend_sessions").fetchall() == [(4,)]
    upsert_rows(cursor, spec, [pane(5, 1_767_231_000_000)])  # a fuller restatement wins
    assert cursor.execute("select event_count from frontend_sessions").fetchall() == [(5,)]
    close_embedded(path)
