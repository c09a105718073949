"""Recomputing the aggregates a partial run touched, from all their events.

A dead-letter replay (``beam_pipelines.replay``) or a re-run of part of the
archive writes per-event rows (``frontend_analytics``, ``agent_turns``) for a
subset of events. Their aggregates are *not* written from that subset (it
would overwrite a whole session or billing hour with a part of it); instead,
after the per-event rows are stored::

    keys = touched_keys(pipeline, events)        # transforms/recompute.py
    recompute_aggregates(pipeline, keys, conns, gap_seconds=opts.session_gap_seconds)

reads every stored event of those keys and replaces the aggregate rows:

- ``frontend_sessions``: every row of each touched session id, from its
  ``frontend_analytics`` rows (all visits, so merged or split visits are right);
- ``agent_conversations``: every row of each touched session id, from its
  ``agent_turns``;
- ``agent_billing_hourly``: each touched (tenant, model, hour), from the
  ``agent_turns`` of that hour.

The rows are those a clean bounded run over all those events gives (the same
functions: ``transforms.sessions.visit_rows``, ``summarise_conversation``,
``billing_row``), except ``updated_at``. Each table's delete + upsert is one
transaction. Idempotent: recomputing twice writes the same rows.

Works on PostgreSQL (``conns.postgres_dsn``) and the embedded DuckDB file
(``conns.embedded_db``); Redis live state (session panes, today's cost) is
not rewritten (it expires on its own).
"""
from __future__ import annotations

import logging
import typing

from iheard_io.sql_tables import SqlTables
from schemas.tables import to_utc_datetime
from transforms.recompute import (
    AGGREGATE_TABLES,
    TouchedKeys,
    billing_rows_from_turns,
    conversation_rows_from_turns,
    frontend_event_from_row,
    session_rows_from_events,
    touched_keys,
    turn_from_row,
)
from transforms.sessions import DEFAULT_GAP_SECONDS

__all__ = ["recompute_aggregates", "touched_keys", "TouchedKeys", "AGGREGATE_TABLES",
           "open_tables"]

_LOG = logging.getLogger(__name__)

_FRONTEND_COLUMNS = ('session_id, "timestamp", user_id, page_url, event_type, '
                     "conversion_stage, engagement_score")
# What conversation_entry and billing_entry read of a turn.
_TURN_COLUMNS = ('session_id, turn_id, "timestamp", tenant_id, model, model_family, '
                 "model_provider, tokens_in, tokens_out, cached_tokens_in, estimated_cost_usd, "
                 "price_book_version, latency_ms, user_sentiment_compound, topics, tools_used, "
                 "quality_factors, quality_score, business_value_score, lead_captured, "
                 "user_id, channel, conversion_probability")


def open_tables(conns) -> SqlTables:
    """A ``SqlTables`` client on the run's database (``Connections``)."""
    return SqlTables.open(dsn=conns.postgres_dsn, embedded_db=conns.embedded_db)


def recompute_aggregates(pipeline: str, touched: TouchedKeys, conns,
                         gap_seconds: int = DEFAULT_GAP_SECONDS,
                         tables: typing.Optional[SqlTables] = None) -> typing.Dict[str, int]:
    """Replaces the aggregate rows of ``touched`` (``touched_keys(pipeline,
    events)``) with rows recomputed from all their stored events.

    ``conns``: the run's ``Connections`` (PostgreSQL or the DuckDB file);
    ``gap_seconds``: the run's ``--session_gap_seconds``; ``tables``: an open
    client to use instead of opening one. Returns the rows written per table
    (marketo has no aggregates: an empty dict)."""
    if pipeline not in AGGREGATE_TABLES:
        raise ValueError(f"unknown pipeline {pipeline!r}; known: {sorted(AGGREGATE_TABLES)}")
    if gap_seconds is None or gap_seconds <= 0:
        raise ValueError("gap_seconds must be positive")
    if not AGGREGATE_TABLES[pipeline] or not touched:
        return {table: 0 for table in AGGREGATE_TABLES[pipeline]}
    own = tables is None
    db = open_tables(conns) if own else tables
    try:
        if pipeline == "frontend":
            return {"frontend_sessions": _recompute_sessions(db, touched.sessions, gap_seconds)}
        return {
            "agent_conversations": _recompute_conversations(db, touched.sessions, gap_seconds),
            "agent_billing_hourly": _recompute_billing(db, touched.billing_hours),
        }
    finally:
        if own:
            db.close()


def _by_session(rows) -> typing.Dict[str, typing.List[dict]]:
    out: typing.Dict[str, typing.List[dict]] = {}
    for row in rows:
        out.setdefault(str(row["session_id"]), []).append(row)
    return out


def _recompute_sessions(db: SqlTables, session_ids, gap_seconds) -> int:
    ids = sorted(session_ids)
    events = db.select_in(
        f"SELECT {_FRONTEND_COLUMNS} FROM frontend_analytics WHERE session_id IN ({{}})", ids)
    rows = []
    for session_id, stored in sorted(_by_session(events).items()):
        rows.extend(session_rows_from_events(
            session_id, [frontend_event_from_row(r) for r in stored], gap_seconds))
    db.replace("frontend_sessions", "session_id", ids, rows)
    _LOG.info("recomputed %d frontend_sessions rows of %d sessions", len(rows), len(ids))
    return len(rows)


def _recompute_conversations(db: SqlTables, session_ids, gap_seconds) -> int:
    ids = sorted(session_ids)
    stored = db.select_in(
        f"SELECT {_TURN_COLUMNS} FROM agent_turns WHERE session_id IN ({{}})", ids)
    rows = []
    for session_id, turns in sorted(_by_session(stored).items()):
        rows.extend(conversation_rows_from_turns(
            session_id, [turn_from_row(t) for t in turns], gap_seconds))
    db.replace("agent_conversations", "session_id", ids, rows)
    _LOG.info("recomputed %d agent_conversations rows of %d sessions", len(rows), len(ids))
    return len(rows)


def _recompute_billing(db: SqlTables, keys) -> int:
    by_hour: typing.Dict[int, set] = {}
    for tenant_id, model, hour_ms in keys:
        by_hour.setdefault(hour_ms, set()).add((tenant_id, model))
    rows = []
    for hour_ms, pairs in sorted(by_hour.items()):
        models = sorted({model for _, model in pairs})
        turns = db.select_in(
            f'SELECT {_TURN_COLUMNS} FROM agent_turns WHERE "timestamp" >= %s '
            f'AND "timestamp" < %s AND model IN ({{}})', models,
            params=[to_utc_datetime(hour_ms), to_utc_datetime(hour_ms + 3_600_000)])
        turns = [turn_from_row(t) for t in turns if (t["tenant_id"], t["model"]) in pairs]
        rows.extend(billing_rows_from_turns(turns))
    with db.transaction():
        # A key whose turns are all gone loses its row; the others are replaced.
        db.executemany(
            'DELETE FROM agent_billing_hourly WHERE tenant_id = %s AND model = %s AND "hour" = %s',
            [(t, m, to_utc_datetime(h)) for t, m, h in sorted(keys)])
        db.upsert("agent_billing_hourly", rows)
    _LOG.info("recomputed %d agent_billing_hourly rows", len(rows))
    return len(rows)
