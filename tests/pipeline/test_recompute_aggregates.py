"""Aggregates stay whole: a run over part of the events, then the recompute,
gives the aggregate rows of a clean run over all of them (embedded DuckDB).

For each pipeline with aggregates (frontend sessions; text-agent
conversations and hourly billing):

- clean: one run over every line -> the reference rows;
- split: a run over every line but one event X, then a run over X alone
  (what a replay of X does), then ``recompute_aggregates`` of X's keys.

The run over X alone writes a one-event aggregate for X's billing hour over
the whole hour (checked: the bug the recompute exists for); after the
recompute every aggregate row equals the clean run's, ``updated_at`` aside.
"""
import json
import types

import pytest

from beam_pipelines import frontend, text_agent
from beam_pipelines.aggregates import recompute_aggregates, touched_keys
from beam_pipelines.generate import frontend_events, sample_turns
from iheard_io.embedded import close_embedded
from iheard_io.sql_tables import SqlTables

GAP_S = 1800
SECRET = "test-secret-0123456789"

KEYS = {
    "frontend_sessions": ("session_id", "window_start"),
    "agent_conversations": ("session_id", "window_start"),
    "agent_billing_hourly": ("tenant_id", "model", "hour"),
}


def _run(module, lines, out, tmp_path, name):
    path = tmp_path / f"{name}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    module.run([f"--input={path}", f"--output_dir={out}", f"--pii_secret={SECRET}",
                f"--session_gap_seconds={GAP_S}", "--runner=DirectRunner"])


def snapshot(db: SqlTables, table: str) -> dict:
    out = {}
    for row in db.select(f"SELECT * FROM {table}"):
        row.pop("updated_at")
        out[tuple(str(row[k]) for k in KEYS[table])] = row
    return out


def _pick(lines, same_hour_key):
    """An event whose session and (tenant, model, hour) hold other events too."""
    parsed = []
    for i, line in enumerate(lines):
        try:
            parsed.append((i, json.loads(line)))
        except ValueError:
            continue
    sessions = {}
    for i, obj in parsed:
        if isinstance(obj, dict):
            sessions.setdefault(obj.get("session_id") or obj.get("sessionId"), []).append(i)
    counts = {}
    for i, obj in parsed:
        if isinstance(obj, dict):
            counts.setdefault(same_hour_key(obj), []).append(i)
    for i, obj in parsed:
        if (isinstance(obj, dict) and len(sessions.get(obj.get("session_id"), [])) >= 3
                and len(counts.get(same_hour_key(obj), [])) >= 3
                and lines.count(lines[i]) == 1):
            return i
    raise AssertionError("no suitable event in the sample")


def _hour(obj):
    ts = obj.get("timestamp")
    return int(ts) // 3_600_000 if isinstance(ts, (int, float)) else None


CASES = {
    "frontend": (frontend, lambda: frontend_events(400, seed=11, malformed_ratio=0.0,
                                                  duplicate_ratio=0.0),
                 lambda o: (o.get("session_id"), _hour(o)), ("frontend_sessions",)),
    "text_agent": (text_agent, lambda: sample_turns(60, seed=11, malformed_share=0.0,
                                                    duplicate_share=0.0),
                   lambda o: (o.get("tenant_id"), o.get("model_name"), _hour(o)),
                   ("agent_conversations", "agent_billing_hourly")),
}


@pytest.mark.parametrize("pipeline", sorted(CASES))
def test_partial_run_then_recompute_equals_clean_run(pipeline, tmp_path):
    module, make_lines, hour_key, tables = CASES[pipeline]
    lines = list(make_lines())
    x = _pick(lines, hour_key)
    clean_out, split_out = tmp_path / "clean", tmp_path / "split"

    _run(module, lines, clean_out, tmp_path, "all")
    clean_db = str(clean_out / "iheardai.duckdb")
    close_embedded(clean_db)
    with SqlTables.open(embedded_db=clean_db) as db:
        clean = {t: snapshot(db, t) for t in tables}
    close_embedded(clean_db)

    _run(module, lines[:x] + lines[x + 1:], split_out, tmp_path, "rest")
    _run(module, [lines[x]], split_out, tmp_path, "x")
    split_db = str(split_out / "iheardai.duckdb")
    close_embedded(split_db)
    with SqlTables.open(embedded_db=split_db) as db:
        partial = {t: snapshot(db, t) for t in tables}
        assert partial != clean  # the one-event run overwrote a fuller aggregate
        event_table = "frontend_analytics" if pipeline == "frontend" else "agent_turns"
        x_obj = json.loads(lines[x])
        x_rows = db.select(f"SELECT * FROM {event_table} WHERE session_id = %s",
                           [x_obj["session_id"]])
        keys = touched_keys(pipeline, x_rows)
        assert keys.sessions == {x_obj["session_id"]}
        conns = types.SimpleNamespace(postgres_dsn=None, embedded_db=split_db)
        written = recompute_aggregates(pipeline, keys, conns, gap_seconds=GAP_S, tables=db)
        assert set(written) == set(tables) and all(n > 0 for n in written.values())
        recomputed = {t: snapshot(db, t) for t in tables}
        # Twice: the same rows (idempotent).
        recompute_aggregates(pipeline, keys, conns, gap_seconds=GAP_S, tables=db)
        again = {t: snapshot(db, t) for t in tables}
    close_embedded(split_db)
    for table in tables:
        assert recomputed[table].keys() == clean[table].keys(), table
        for key, row in clean[table].items():
            assert recomputed[table][key] == row, (table, key)
    assert again == recomputed
