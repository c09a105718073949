"""Text-agent aggregates: conversations (session windows) and hourly billing.

Pure core (``conversation_entry`` / ``summarise_conversation``,
``billing_entry`` / ``billing_row``), then the Beam wrappers.

``AggregateConversations`` - turns -> ``agent_conversations`` rows, one per
session window and pane::

    turns -> KeyBySession -> Sessions(gap) [early: processing time,
             late: every late turn, accumulating] -> CombineTurns -> rows

``AggregateBillingHourly`` - turns -> ``agent_billing_hourly`` rows::

    turns -> KeyByTenantAndModel -> FixedWindows(1 h, event time) [late: every
             late turn, accumulating] -> CombineUsage -> rows

Why both are idempotent under replay: panes accumulate, so every pane carries
the whole window's aggregate and the sink upserts it on (session_id,
window_start) / (tenant_id, model, hour); and both combiners keep their
turns keyed by their identity (session_id, turn_id), so a duplicate delivered
twice (producer retry, Flink replay of a range the dedupe step has forgotten)
is counted once.
Memory: the accumulators hold one small named tuple per turn of the window
(``ConversationEntry``, ``BillingEntry``), so a session or a
tenant-model-hour with 10k turns is about 1 MB of state.
"""
from __future__ import annotations

import collections
import typing

import apache_beam as beam
from apache_beam.transforms import trigger as beam_trigger
from apache_beam.transforms import window as beam_window

from schemas.records import ms_to_iso, utc_now_iso
from schemas.tables import to_utc_datetime
from transforms.text_agent import turn_key
from transforms.text_agent_outcomes import (
    conversation_conversion_probability,
    conversation_cost_per_interaction,
    conversation_user_satisfaction,
)

__all__ = [
    "AggregateConversations",
    "AggregateBillingHourly",
    "ConversationEntry",
    "BillingEntry",
    "conversation_entry",
    "billing_entry",
    "summarise_conversation",
    "conversation_version",
    "conversation_row",
    "billing_row",
    "ONE_HOUR_SECONDS",
]

ONE_HOUR_SECONDS = 60 * 60


# -- conversations ---------------------------------------------------------
class ConversationEntry(typing.NamedTuple):
    """What a session aggregate keeps of one turn (small and picklable)."""
    timestamp_ms: int
    tokens_in: int
    tokens_out: int
    cost_usd: typing.Optional[float]
    latency_ms: float
    user_sentiment_compound: typing.Optional[float]
    topics: typing.Tuple[str, ...]
    tools_used: typing.Tuple[str, ...]
    tool_calls: int
    tool_successes: int
    quality_score: int
    business_value_score: int
    lead_captured: bool
    model: str
    user_id: typing.Optional[str]
    tenant_id: str
    channel: typing.Optional[str]
    # Added after the first release: a default, so entries pickled in older
    # state still load.
    conversion_probability: typing.Optional[float] = None


def conversation_entry(turn: typing.Mapping) -> ConversationEntry:
    """The ``ConversationEntry`` of one enriched turn."""
    factors = turn.get("quality_factors") or {}
    return ConversationEntry(
        int(turn["timestamp_ms"]),
        int(turn["tokens_in"]),
        int(turn["tokens_out"]),
        turn.get("estimated_cost_usd"),
        float(turn["latency_ms"]),
        turn.get("user_sentiment_compound"),
        tuple(turn.get("topics") or ()),
        tuple(turn.get("tools_used") or ()),
        int(factors.get("tool_calls") or 0),
        int(factors.get("tool_successes") or 0),
        int(turn["quality_score"]),
        int(turn["business_value_score"]),
        bool(turn.get("lead_captured")),
        turn["model"],
        turn.get("user_id"),
        turn["tenant_id"],
        turn.get("channel"),
        turn.get("conversion_probability"),
    )


def _slope(values: typing.Sequence[float]) -> typing.Optional[float]:
    """Least-squares slope of values against their index 0..n-1."""
    n = len(values)
    if n < 2:
        return None
    mean_x = (n - 1) / 2.0
    mean_y = sum(values) / n
    num = sum((i - mean_x) * (y - mean_y) for i, y in enumerate(values))
    den = sum((i - mean_x) ** 2 for i in range(n))
    return num / den


def summarise_conversation(entries: typing.Mapping[str, ConversationEntry]) -> dict:
    """Aggregate of one session's turns (``turn_id -> conversation_entry``).

    ``sentiment_trend`` = last minus first user-message compound score (turns
    in time order; turns without a user message skipped); ``sentiment_slope``
    = least-squares slope of those scores per turn.
    """
    ordered = sorted(entries.items(), key=lambda kv: (kv[1].timestamp_ms, kv[0]))
    rows = [e for _, e in ordered]
    n = len(rows)
    costs = [r.cost_usd for r in rows if r.cost_usd is not None]
    latencies = [r.latency_ms for r in rows]
    sentiments = [r.user_sentiment_compound for r in rows if r.user_sentiment_compound is not None]
    topic_counts: collections.Counter = collections.Counter()
    tool_counts: collections.Counter = collections.Counter()
    for r in rows:
        topic_counts.update(set(r.topics))
        tool_counts.update(r.tools_used)
    tool_calls = sum(r.tool_calls for r in rows)
    tool_successes = sum(r.tool_successes for r in rows)
    user_ids = [r.user_id for r in rows if r.user_id]
    first, last = rows[0].timestamp_ms, rows[-1].timestamp_ms
    sentiment_last = sentiments[-1] if sentiments else None
    sentiment_trend = round(sentiments[-1] - sentiments[0], 4) if sentiments else None
    lead_captured = any(r.lead_captured for r in rows)
    return {
        "tenant_id": rows[0].tenant_id,
        "user_id": user_ids[-1] if user_ids else None,
        "channel": rows[-1].channel,
        "turn_count": n,
        "first_turn_at": first,
        "last_turn_at": last,
        "duration_seconds": round((last - first) / 1000.0, 3),
        "tokens_in": sum(r.tokens_in for r in rows),
        "tokens_out": sum(r.tokens_out for r in rows),
        "total_tokens": sum(r.tokens_in + r.tokens_out for r in rows),
        "estimated_cost_usd": round(sum(costs), 6) if costs else None,
        "unpriced_turns": n - len(costs),
        "mean_latency_ms": round(sum(latencies) / n, 3),
        "max_latency_ms": max(latencies),
        "sentiment_first": sentiments[0] if sentiments else None,
        "sentiment_last": sentiment_last,
        "sentiment_mean": round(sum(sentiments) / len(sentiments), 4) if sentiments else None,
        "sentiment_trend": sentiment_trend,
        "sentiment_slope": (round(_slope(sentiments), 4)
                            if len(sentiments) >= 2 else None),
        "topics": [t for t, _ in sorted(topic_counts.items(), key=lambda kv: (-kv[1], kv[0]))],
        "topic_counts": dict(sorted(topic_counts.items())),
        "tools_used": dict(sorted(tool_counts.items())),
        "tool_calls": tool_calls,
        "tool_successes": tool_successes,
        "tool_success_rate": round(tool_successes / tool_calls, 4) if tool_calls else None,
        "models": sorted({r.model for r in rows}),
        "avg_quality_score": round(sum(r.quality_score for r in rows) / n, 2),
        "avg_business_value_score": round(sum(r.business_value_score for r in rows) / n, 2),
        "max_business_value_score": max(r.business_value_score for r in rows),
        "lead_captured": lead_captured,
        # transforms/text_agent_outcomes.py (heuristic, rule-derived)
        "conversion_probability": conversation_conversion_probability(
            r.conversion_probability for r in rows),
        "cost_per_interaction": conversation_cost_per_interaction(r.cost_usd for r in rows),
        "user_satisfaction": conversation_user_satisfaction(
            sentiment_last, sentiment_trend, lead_captured),
    }


def conversation_version(row: typing.Mapping) -> int:
    """An ``agent_conversations`` row's order among the panes of its session
    (newer pane -> larger number: last turn time, then turn count); the
    ``version_fn`` of the conversation state in Redis."""
    last = to_utc_datetime(row.get("last_turn_at"))
    last_ms = int(last.timestamp() * 1000) if last else 0
    return last_ms * 1000 + min(int(row.get("turn_count") or 0), 999)


class _EntriesByIdCombineFn(beam.CombineFn):
    """Accumulator: ``{id: entry}`` from ``(id, entry)`` inputs, so a turn
    delivered twice (retry, replay) is counted once."""

    def create_accumulator(self):
        return {}

    def add_input(self, acc, keyed_entry):
        acc[keyed_entry[0]] = keyed_entry[1]
        return acc

    def merge_accumulators(self, accs):
        out = {}
        for acc in accs:
            out.update(acc)
        return out

    def extract_output(self, acc):
        return acc


class _ConversationCombineFn(_EntriesByIdCombineFn):
    """``{turn_id: conversation_entry}`` -> the conversation summary."""

    def extract_output(self, acc):
        return summarise_conversation(acc)


def conversation_row(session_id: str, summary: dict, start_ms: int, end_ms: int,
                     pane_index: int = 0, is_final: bool = False) -> dict:
    """An ``agent_conversations`` row: ``summarise_conversation``'s summary
    plus the session window's bounds and pane."""
    row = dict(summary)
    row["session_id"] = session_id
    row["window_start"] = ms_to_iso(start_ms)
    row["window_end"] = ms_to_iso(end_ms)
    row["first_turn_at"] = ms_to_iso(summary["first_turn_at"])
    row["last_turn_at"] = ms_to_iso(summary["last_turn_at"])
    row["pane_index"] = pane_index
    row["is_final"] = is_final
    row["updated_at"] = utc_now_iso()
    return row


class _ConversationRowFn(beam.DoFn):
    def process(self, keyed, window=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam):
        session_id, summary = keyed
        yield conversation_row(
            session_id, summary, int(window.start.micros // 1000), int(window.end.micros // 1000),
            pane.index if pane is not None else 0, bool(pane is not None and pane.is_last))


# -- billing ---------------------------------------------------------------
class BillingEntry(typing.NamedTuple):
    """What an hourly billing aggregate keeps of one turn."""
    tokens_in: int
    tokens_out: int
    cached_tokens_in: int
    cost_usd: typing.Optional[float]
    price_book_version: typing.Optional[str]
    model_family: str
    model_provider: str


_NO_BILLING_ENTRY = BillingEntry(0, 0, 0, None, None, "unknown", "unknown")


def billing_entry(turn: typing.Mapping) -> BillingEntry:
    """The ``BillingEntry`` of one enriched turn."""
    return BillingEntry(
        int(turn["tokens_in"]),
        int(turn["tokens_out"]),
        int(turn.get("cached_tokens_in") or 0),
        turn.get("estimated_cost_usd"),
        turn["price_book_version"],
        turn["model_family"],
        turn["model_provider"],
    )


def billing_row(tenant_id: str, model: str, hour_start_ms: int,
                entries: typing.Mapping[str, BillingEntry]) -> dict:
    """The ``agent_billing_hourly`` row for one tenant, model and UTC hour."""
    rows = list(entries.values())
    costs = [r.cost_usd for r in rows if r.cost_usd is not None]
    first = rows[0] if rows else _NO_BILLING_ENTRY
    return {
        "tenant_id": tenant_id,
        "model": model,
        "hour": ms_to_iso(hour_start_ms),
        "model_family": first.model_family,
        "model_provider": first.model_provider,
        "turns": len(rows),
        "tokens_in": sum(r.tokens_in for r in rows),
        "tokens_out": sum(r.tokens_out for r in rows),
        "cached_tokens_in": sum(r.cached_tokens_in for r in rows),
        "total_tokens": sum(r.tokens_in + r.tokens_out for r in rows),
        "estimated_cost_usd": round(sum(costs), 6),
        "unpriced_turns": len(rows) - len(costs),
        "price_book_versions": sorted({r.price_book_version for r in rows
                                       if r.price_book_version}),
    }


class _UsageCombineFn(_EntriesByIdCombineFn):
    """``{session_id + turn_id: billing_entry}``, returned as is."""


class _BillingRowFn(beam.DoFn):
    def process(self, keyed, window=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam):
        (tenant_id, model), entries = keyed
        row = billing_row(tenant_id, model, int(window.start.micros // 1000), entries)
        row["pane_index"] = pane.index if pane is not None else 0
        row["updated_at"] = utc_now_iso()
        yield row


def _window_trigger(early_firing_seconds: typing.Optional[float]):
    early = (beam_trigger.AfterProcessingTime(early_firing_seconds)
             if early_firing_seconds else None)
    return beam_trigger.AfterWatermark(early=early, late=beam_trigger.AfterCount(1))


class AggregateConversations(beam.PTransform):
    """Enriched turns -> ``agent_conversations`` rows (one per session pane).

    Windowing: event-time session windows per ``session_id`` closing after
    ``gap_seconds`` without a turn. A pane fires when the watermark passes
    the session's end, every ``early_firing_seconds`` of processing time
    before that (live state in streaming; omit for none), and once per late
    turn up to ``allowed_lateness_seconds``. Panes ACCUMULATE, so each row is
    the whole session so far and the sink's upsert on (session_id,
    window_start) keeps the latest. Timeline with gap 30 min::

        10:00 t1, 10:05 t2          -> window [10:00, 10:35)
        watermark 10:35             -> on-time pane: 2 turns
        late t3 at 10:20 (arrives 10:50, within lateness)
                                    -> late pane, same window: 3 turns (upsert)
        late t4 at 10:40            -> merges into [10:00, 11:10): same
                                       window_start, so the row is upserted
        late t0 at 09:50            -> merges into [09:50, 11:10): a new row;
                                       the 10:00 row stays, superseded (readers
                                       take the row with the latest
                                       last_turn_at per session_id)

    Observed on the local Flink 1.19 cluster (streaming, Kafka): turns that
    arrive in time give one row per session with every turn (an early pane,
    then the on-time pane). When a whole batch of turns arrives already
    behind the watermark (e.g. a topic replayed minutes late), some merged
    late windows did not fire again, so a row can miss turns; agent_turns
    and agent_billing_hourly were complete. Restate such a period with a
    bounded run (``--kafka_mode=bounded`` or ``--input``), which the upserts
    make safe.
    """

    def __init__(self, gap_seconds: int, allowed_lateness_seconds: int = 0,
                 early_firing_seconds: typing.Optional[float] = None):
        super().__init__()
        if gap_seconds <= 0:
            raise ValueError("gap_seconds must be positive")
        if allowed_lateness_seconds < 0:
            raise ValueError("allowed_lateness_seconds must be >= 0")
        self._gap_seconds = gap_seconds
        self._lateness = allowed_lateness_seconds
        self._early = early_firing_seconds

    def expand(self, turns):
        return (
            turns
            | "KeyBySession" >> beam.Map(
                lambda t: (t["session_id"], (t["turn_id"], conversation_entry(t))))
            | "SessionWindows" >> beam.WindowInto(
                beam_window.Sessions(self._gap_seconds),
                trigger=_window_trigger(self._early),
                accumulation_mode=beam_trigger.AccumulationMode.ACCUMULATING,
                allowed_lateness=self._lateness)
            | "CombineTurns" >> beam.CombinePerKey(_ConversationCombineFn())
            | "ToConversationRows" >> beam.ParDo(_ConversationRowFn())
        )


class AggregateBillingHourly(beam.PTransform):
    """Enriched turns -> ``agent_billing_hourly`` rows per (tenant, model, hour).

    Windowing: fixed one-hour event-time windows (UTC hours); a pane fires at
    the watermark, optionally early every ``early_firing_seconds``, and once
    per late turn within ``allowed_lateness_seconds``. Panes accumulate and
    the sink upserts on (tenant_id, model, hour), so the row is always the
    hour's full total and a replay rewrites the same values.
    """

    def __init__(self, allowed_lateness_seconds: int = 0,
                 early_firing_seconds: typing.Optional[float] = None):
        super().__init__()
        if allowed_lateness_seconds < 0:
            raise ValueError("allowed_lateness_seconds must be >= 0")
        self._lateness = allowed_lateness_seconds
        self._early = early_firing_seconds

    def expand(self, turns):
        return (
            turns
            | "KeyByTenantAndModel" >> beam.Map(
                lambda t: ((t["tenant_id"], t["model"]),
                           (turn_key(t), billing_entry(t))))
            | "HourlyWindows" >> beam.WindowInto(
                beam_window.FixedWindows(ONE_HOUR_SECONDS),
                trigger=_window_trigger(self._early),
                accumulation_mode=beam_trigger.AccumulationMode.ACCUMULATING,
                allowed_lateness=self._lateness)
            | "CombineUsage" >> beam.CombinePerKey(_UsageCombineFn())
            | "ToBillingRows" >> beam.ParDo(_BillingRowFn())
        )
