"""Aggregates recomputed from all their events: the pure core.

A replay of dead letters, or a re-run of part of the archive, adds or
changes a few events of a session, a conversation or an hour of billing that
other events already filled. Writing the aggregate of those few events would
overwrite a whole session or hour with a part of it. So the aggregates such
a run touches are recomputed from *every* event the per-event tables hold
(``frontend_analytics``, ``agent_turns``), with the same functions a clean
bounded run uses, and replace the stored rows of those keys::

    touched events --touched_keys--> TouchedKeys(sessions, billing_hours)
    per-event rows of those keys (the tables) --*_from_row--> event dicts
        -> sessions.visit_rows            frontend_sessions rows
        -> conversation_rows_from_turns   agent_conversations rows
        -> billing_rows_from_turns        agent_billing_hourly rows

Which aggregates a pipeline has, and their keys:

=====================  ==========================  ===========================
table                  key                         recomputed from
=====================  ==========================  ===========================
frontend_sessions      session_id (every visit)    frontend_analytics, session
agent_conversations    session_id (every visit)    agent_turns, session
agent_billing_hourly   tenant_id, model, UTC hour  agent_turns in that hour
=====================  ==========================  ===========================

Sessions and conversations are recomputed per session id, all its visits at
once (``split_sessions``: the visits Beam's ``Sessions(gap)`` windows give),
so an event that bridges two visits merges them and a stored row of a visit
that no longer exists is replaced too. ``gap_seconds`` must be the run's
``--session_gap_seconds``.

Reading a row back: the tables store some floats as ``REAL`` (4 bytes):
``latency_ms``, ``user_sentiment_compound``, ``conversion_probability``. Their
shortest 4-byte decimal text gives back the value the pipeline had (VADER
scores have 4 decimals, latencies a few digits), so a mean rounded to 4
decimals lands on the same side of a tie as in the clean run
(``real_value``). Costs are ``DECIMAL(10,6)`` and the pipeline rounds them to
6 decimals before writing, so ``float(Decimal)`` is the pipeline's value.

The stored database I/O (which rows to read, replacing rows in one
transaction) is ``beam_pipelines.aggregates.recompute_aggregates``.
"""
from __future__ import annotations

import collections
import dataclasses
import datetime as _dt
import decimal
import json
import struct
import typing

from transforms.frontend_enrich import EnrichmentConfig
from transforms.sessions import visit_rows
from transforms.text_agent import turn_key
from transforms.text_agent_aggregates import (
    ONE_HOUR_SECONDS,
    billing_entry,
    billing_row,
    conversation_entry,
    conversation_row,
    summarise_conversation,
)
from transforms.sessions import split_sessions

__all__ = [
    "AGGREGATE_TABLES",
    "TouchedKeys",
    "touched_keys",
    "hour_start_ms",
    "epoch_ms",
    "real_value",
    "frontend_event_from_row",
    "turn_from_row",
    "session_rows_from_events",
    "conversation_rows_from_turns",
    "billing_rows_from_turns",
]

# The aggregate tables of each pipeline (marketo has none: one row per lead).
AGGREGATE_TABLES: typing.Dict[str, typing.Tuple[str, ...]] = {
    "frontend": ("frontend_sessions",),
    "text_agent": ("agent_conversations", "agent_billing_hourly"),
    "marketo": (),
}

_HOUR_MS = ONE_HOUR_SECONDS * 1000
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


@dataclasses.dataclass(frozen=True)
class TouchedKeys:
    """The aggregate keys a set of events belongs to.

    ``sessions``: session ids (``frontend_sessions`` for the frontend,
    ``agent_conversations`` for the text agent); ``billing_hours``:
    ``(tenant_id, model, hour_start_ms)`` of ``agent_billing_hourly``."""

    sessions: typing.FrozenSet[str] = frozenset()
    billing_hours: typing.FrozenSet[typing.Tuple[str, str, int]] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.sessions or self.billing_hours)

    def __or__(self, other: "TouchedKeys") -> "TouchedKeys":
        return TouchedKeys(self.sessions | other.sessions,
                           self.billing_hours | other.billing_hours)


def hour_start_ms(timestamp_ms: int) -> int:
    """The start of the UTC hour of an epoch-ms time (the billing window)."""
    return int(timestamp_ms) // _HOUR_MS * _HOUR_MS


def epoch_ms(value) -> typing.Optional[int]:
    """A stored timestamp (aware or naive-UTC datetime, epoch ms, ISO text) as
    integer epoch ms, without float rounding."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, str):
        value = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=_dt.timezone.utc)
    return (value - _EPOCH) // _dt.timedelta(milliseconds=1)


def touched_keys(pipeline: str, events: typing.Iterable[typing.Mapping]) -> TouchedKeys:
    """The aggregate keys of ``events`` (event dicts after parsing, or
    per-event table rows: ``timestamp_ms`` or ``timestamp``)."""
    sessions: typing.Set[str] = set()
    hours: typing.Set[typing.Tuple[str, str, int]] = set()
    if pipeline not in AGGREGATE_TABLES:
        raise ValueError(f"unknown pipeline {pipeline!r}; known: {sorted(AGGREGATE_TABLES)}")
    if not AGGREGATE_TABLES[pipeline]:
        return TouchedKeys()
    for event in events:
        if event.get("session_id") is not None:
            sessions.add(str(event["session_id"]))
        if pipeline == "text_agent":
            ts = event.get("timestamp_ms")
            ts = epoch_ms(ts if ts is not None else event.get("timestamp"))
            if ts is not None and event.get("tenant_id") is not None and event.get("model"):
                hours.add((str(event["tenant_id"]), str(event["model"]), hour_start_ms(ts)))
    return TouchedKeys(frozenset(sessions), frozenset(hours))


def real_value(value) -> typing.Optional[float]:
    """A float read from a 4-byte ``REAL`` column -> the value the pipeline
    wrote (the shortest decimal that rounds to the same 4-byte float)."""
    if value is None:
        return None
    value = float(value)
    single = _as_real(value)
    if single != single or single in (float("inf"), float("-inf")):
        return single
    for digits in range(1, 10):  # 9 significant digits always round-trip a REAL
        text = f"{single:.{digits}g}"
        if _as_real(float(text)) == single:
            return float(text)
    return single


def _as_real(value: float) -> float:
    """``value`` rounded to a 4-byte float, as a ``REAL`` column stores it."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


def _number(value) -> typing.Optional[float]:
    if value is None:
        return None
    return float(value) if isinstance(value, decimal.Decimal) else value


def _json(value):
    # DuckDB returns JSON columns as text, psycopg as Python objects.
    return json.loads(value) if isinstance(value, str) else value


# -- frontend ------------------------------------------------------------------
_CONFIG: typing.Optional[EnrichmentConfig] = None


def _stage_of_type(event_type: str) -> str:
    global _CONFIG
    if _CONFIG is None:
        _CONFIG = EnrichmentConfig()
    return _CONFIG.stage_of_type(event_type)


def frontend_event_from_row(row: typing.Mapping,
                            config: typing.Optional[EnrichmentConfig] = None) -> dict:
    """A ``frontend_analytics`` row -> the fields a session summary reads
    (``sessions.SESSION_FIELDS``). ``event_stage`` (what the event type alone
    implies) is not stored: it is derived again from ``event_type`` with the
    enrichment rules (``config``, default the bundled ones, as the job)."""
    event_type = row.get("event_type") or ""
    return {
        "session_id": row.get("session_id"),
        "timestamp_ms": epoch_ms(row.get("timestamp")),
        "user_id": row.get("user_id"),
        "page_url": row.get("page_url"),
        "event_stage": (config.stage_of_type(event_type) if config is not None
                        else _stage_of_type(event_type)),
        "conversion_stage": row.get("conversion_stage"),
        "engagement_score": row.get("engagement_score"),
    }


def session_rows_from_events(session_id: str, events: typing.Iterable[dict],
                             gap_seconds: int) -> typing.List[dict]:
    """Every ``frontend_sessions`` row of one session id, as a clean bounded
    run computes them (``sessions.visit_rows``)."""
    return [row for row, _ in visit_rows(session_id, events, int(gap_seconds * 1000))]


# -- text agent ----------------------------------------------------------------
def turn_from_row(row: typing.Mapping) -> dict:
    """An ``agent_turns`` row -> the turn fields ``conversation_entry`` and
    ``billing_entry`` read (the ``REAL`` columns restored, ``real_value``)."""
    turn = dict(row)
    turn["timestamp_ms"] = epoch_ms(row.get("timestamp"))
    for name in ("estimated_cost_usd",):
        turn[name] = _number(row.get(name))
    for name in ("latency_ms", "user_sentiment_compound", "conversion_probability"):
        turn[name] = real_value(row.get(name))
    for name in ("topics", "tools_used", "quality_factors"):
        turn[name] = _json(row.get(name))
    return turn


def conversation_rows_from_turns(session_id: str, turns: typing.Iterable[dict],
                                 gap_seconds: int) -> typing.List[dict]:
    """Every ``agent_conversations`` row of one session id: one per visit
    (session window) over all its turns, as the bounded job's on-time pane
    (``pane_index`` 0; ``is_final`` False, as there: with allowed lateness
    the on-time pane is not the window's last possible one)."""
    gap_ms = int(gap_seconds * 1000)
    # One entry per turn key, as the combiner keeps them.
    unique = {t["turn_id"]: t for t in turns}
    rows = []
    for visit in split_sessions(list(unique.values()), gap_ms):
        entries = {t["turn_id"]: conversation_entry(t) for t in visit}
        summary = summarise_conversation(entries)
        start_ms = min(e.timestamp_ms for e in entries.values())
        end_ms = max(e.timestamp_ms for e in entries.values()) + gap_ms
        rows.append(conversation_row(session_id, summary, start_ms, end_ms,
                                     pane_index=0, is_final=False))
    return rows


def billing_rows_from_turns(turns: typing.Iterable[dict]) -> typing.List[dict]:
    """``agent_billing_hourly`` rows, one per (tenant, model, UTC hour) of
    ``turns`` (all the turns of those hours)."""
    groups: typing.Dict[tuple, dict] = collections.defaultdict(dict)
    for turn in turns:
        key = (turn["tenant_id"], turn["model"], hour_start_ms(turn["timestamp_ms"]))
        groups[key][turn_key(turn)] = billing_entry(turn)
    rows = []
    for (tenant_id, model, hour_ms), entries in sorted(groups.items()):
        row = billing_row(tenant_id, model, hour_ms, entries)
        row["pane_index"] = 0
        row["updated_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat()
        rows.append(row)
    return rows
