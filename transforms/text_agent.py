"""Text-agent turns: redaction, model metrics, scores, content, conversations, billing.

Pure core first (``redact_turn``, ``TurnEnricher.enrich``, ``tenant_of``,
``cached_tokens_of``, ``summarise_conversation``, ``billing_row``), then the
thin Beam wrappers:

``EnrichTurns`` - parsed ``TextAgentTurn`` dicts -> ``valid`` enriched turns
(``agent_turns`` rows, redacted) and ``failed`` ``FailedRecord``s::

    turn --_EnrichTurnFn--+--> valid  : redacted + metrics + scores + content
                          +--> failed : stage "redact" (texts withheld) | "enrich"

PII goes first, inside the same DoFn: ``user_message``, ``response_text``,
``user_id``, every string inside ``tool_results``, ``conversation_context``
and the unknown ``extra`` fields are redacted before anything is analysed,
so no later step, sink, archive or dead letter ever sees the raw text. The
redactor's counts (kinds only, never values) feed ``lead_captured``: an email
address or phone number in the user message is a captured lead.

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
Memory: the accumulators hold one small tuple per turn of the window, so a
session or a tenant-model-hour with 10k turns is about 1 MB of state.

Tenant: the first non-empty of the payload's ``tenant_id``, ``account_id``,
``widget_id`` (unknown fields the producer may add; the seed payload has
none), else ``"default"``.

Cached input tokens: the first of ``cached_tokens_in``, ``tokens_in_cached``,
``cache_read_input_tokens``, ``cached_tokens`` in the payload (clamped to
[0, tokens_in]); they are priced at the model's cached-input rate.
"""
from __future__ import annotations

import collections
import datetime as dt
import json
import typing

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger as beam_trigger
from apache_beam.transforms import window as beam_window

from schemas.records import PIPELINE_VERSION, failed_from_event, ms_to_iso, utc_now_iso
from transforms.deadletter import REDACTION_WITHHELD, RedactDeadLetters  # noqa: F401 (re-exported)
from transforms.pii import PII_KINDS, PiiRedactor
from transforms.text_agent_content import ContentAnalyzer, load_topic_taxonomy
from transforms.text_agent_pricing import (
    PriceBook,
    load_model_families,
    load_price_book,
)
from transforms.text_agent_scoring import (
    business_value_score,
    efficiency_score,
    quality_score,
    tokens_per_second,
)

__all__ = [
    "PIPELINE",
    "turn_key",
    "TENANT_FIELDS",
    "CACHED_TOKEN_FIELDS",
    "DEFAULT_TENANT",
    "EnrichTurns",
    "AggregateConversations",
    "AggregateBillingHourly",
    "TurnEnricher",
    "redact_turn",
    "tenant_of",
    "cached_tokens_of",
    "summarise_conversation",
    "billing_row",
    "daily_cost_state",
    "read_cost_today",
    "archive_record",
    "RedactDeadLetters",
    "ONE_HOUR_SECONDS",
]

PIPELINE = "text_agent"
DEFAULT_TENANT = "default"
TENANT_FIELDS = ("tenant_id", "account_id", "widget_id")
CACHED_TOKEN_FIELDS = ("cached_tokens_in", "tokens_in_cached", "cache_read_input_tokens",
                       "cached_tokens")
ONE_HOUR_SECONDS = 60 * 60
# Redis hash with the running cost of a tenant's UTC day (see daily_cost_state).
DAILY_COST_PREFIX = "iheard:text_agent:cost:"
SESSION_STATE_PREFIX = "iheard:text_agent:session:"
ANALYZERS = {"sentiment": "vaderSentiment",
             "language": "lingua(16 languages, low-accuracy then high-accuracy if unsure)",
             "keywords": "rake(yake-stopwords)", "topics": "taxonomy"}


# --------------------------------------------------------------------------
# Pure core
# --------------------------------------------------------------------------
def turn_key(event: typing.Mapping) -> str:
    """A turn's identity: (session_id, turn_id), the agent_turns key. A
    re-sent turn with a new timestamp has a new event_id but the same key."""
    return f"{event['session_id']}\x1f{event['turn_id']}"


def _first_present(mapping: typing.Mapping, names: typing.Sequence[str]):
    for name in names:
        value = mapping.get(name)
        if value not in (None, ""):
            return value
    return None


def tenant_of(event: typing.Mapping) -> str:
    """The billing tenant of a parsed turn (see the module docstring)."""
    extra = event.get("extra") or {}
    value = _first_present(event, TENANT_FIELDS) or _first_present(extra, TENANT_FIELDS)
    return str(value)[:100] if value is not None else DEFAULT_TENANT


def cached_tokens_of(event: typing.Mapping) -> int:
    extra = event.get("extra") or {}
    value = _first_present(extra, CACHED_TOKEN_FIELDS)
    try:
        cached = int(float(value)) if value is not None else 0
    except (TypeError, ValueError):
        cached = 0
    return min(max(cached, 0), int(event.get("tokens_in") or 0))


def redact_turn(event: dict, redactor: PiiRedactor
                ) -> typing.Tuple[dict, collections.Counter, collections.Counter]:
    """A copy of ``event`` with every free-text value redacted.

    Returns (redacted event, counts found in the user message, counts found
    anywhere). Counts are per PII kind; values never leave this function.
    """
    out = dict(event)
    user_counts: collections.Counter = collections.Counter()
    total: collections.Counter = collections.Counter()
    text, counts = redactor.redact_text(event.get("user_message"))
    out["user_message"] = text
    user_counts.update(counts)
    total.update(counts)
    for field in ("response_text", "user_id"):
        text, counts = redactor.redact_text(event.get(field))
        out[field] = text
        total.update(counts)
    for field in ("tool_results", "conversation_context", "extra"):
        value = event.get(field)
        if value:
            out[field] = redactor.redact_value(value, total)
    return out, user_counts, total


def _withheld(event: dict) -> dict:
    """The event with every free-text field replaced (for redaction failures)."""
    out = dict(event)
    for field in ("user_message", "response_text", "user_id", "tool_results",
                  "conversation_context", "extra"):
        if out.get(field) not in (None, "", {}, []):
            out[field] = REDACTION_WITHHELD
    return out


class TurnEnricher:
    """Model metrics, content intelligence and scores for one redacted turn.

    Build once per worker (it loads the price book, the taxonomy and the
    sentiment/language models)."""

    def __init__(self, price_book: typing.Optional[PriceBook] = None,
                 price_book_path: typing.Optional[str] = None,
                 topics_path: typing.Optional[str] = None):
        self.price_book = price_book or load_price_book(price_book_path)
        self.families = load_model_families(price_book_path)
        self.taxonomy = load_topic_taxonomy(topics_path)
        self.analyzer = ContentAnalyzer(self.taxonomy)

    def enrich(self, turn: dict, user_pii: typing.Mapping[str, int],
               pii_total: typing.Mapping[str, int]) -> dict:
        model = turn["model_name"]
        provider, family = self.families.classify(model)
        tokens_in = int(turn.get("tokens_in") or 0)
        tokens_out = int(turn.get("tokens_out") or 0)
        total_tokens = tokens_in + tokens_out
        latency_ms = float(turn.get("latency_ms") or 0.0)
        cached = cached_tokens_of(turn)
        cost = self.price_book.estimate(model, tokens_in, tokens_out, cached,
                                        timestamp_ms=turn["timestamp_ms"])

        content = self.analyzer.analyse(turn.get("user_message"), turn.get("response_text") or "")
        tool_results = turn.get("tool_results") or {}
        context = turn.get("conversation_context") or {}

        efficiency, efficiency_factors = efficiency_score(tokens_out, total_tokens, latency_ms)
        quality, quality_factors = quality_score(
            tool_results, turn.get("response_text") or "", turn.get("user_message"),
            content.language, content.response_language)
        business, business_factors = business_value_score(
            turn.get("user_message"), context.get("user_intent"), content.topics,
            self.taxonomy.business_value, user_pii, tool_results,
            context.get("previous_turns") or 0)

        tools_used = list(dict.fromkeys(list(turn.get("tools_used") or []) + list(tool_results)))
        pii = {k: int(v) for k, v in sorted(pii_total.items()) if v}
        return {
            "event_id": turn["event_id"],
            "session_id": turn["session_id"],
            "turn_id": turn["turn_id"],
            "user_id": turn.get("user_id"),
            "tenant_id": tenant_of(turn),
            "channel": turn.get("channel") or "web_chat",
            "model": model,
            "model_provider": provider,
            "model_family": family,
            "tokens_in": tokens_in,
            "tokens_out": tokens_out,
            "cached_tokens_in": cost.cached_tokens_in,
            "total_tokens": total_tokens,
            "latency_ms": latency_ms,
            "tokens_per_second": tokens_per_second(tokens_out, latency_ms),
            "efficiency_score": efficiency,
            "quality_score": quality,
            "business_value_score": business,
            "efficiency_factors": efficiency_factors,
            "quality_factors": quality_factors,
            "business_value_factors": business_factors,
            "sentiment": content.user_sentiment,
            "user_sentiment_compound": content.user_sentiment_compound,
            "response_sentiment": content.response_sentiment,
            "response_sentiment_compound": content.response_sentiment_compound,
            "language": content.language,
            "response_language": content.response_language,
            "topics": list(content.topics),
            "keywords": list(content.keywords),
            "tools_used": tools_used,
            "tool_success_rate": quality_factors["tool_success_rate"],
            "lead_captured": business_factors["lead_captured"],
            "user_intent": context.get("user_intent"),
            "previous_turns": int(context.get("previous_turns") or 0),
            "estimated_cost_usd": cost.cost_usd,
            "price_book_version": cost.version,
            "price_key": cost.price_key,
            "pii_redactions": pii,
            "transformation_metadata": {
                "pipeline": PIPELINE,
                "pipeline_version": PIPELINE_VERSION,
                "price_book_version": cost.version,
                "price_key": cost.price_key,
                "price_found": cost.cost_usd is not None,
                "topic_taxonomy": self.taxonomy.version,
                "analyzers": ANALYZERS,
                "pii_redactions": pii,
                "source": turn.get("_source"),
                "score_factors": ["efficiency_factors", "quality_factors",
                                  "business_value_factors"],
            },
            "timestamp": turn["timestamp_ms"],
            "timestamp_ms": turn["timestamp_ms"],
            # Redacted texts, for the archive only (agent_turns has no column).
            "user_message": turn.get("user_message"),
            "response_text": turn.get("response_text") or "",
            "tool_results": tool_results,
            "conversation_context": context,
            "extra": turn.get("extra") or {},
        }


def _json(value) -> str:
    return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)


def archive_record(turn: typing.Mapping) -> dict:
    """An enriched (redacted) turn in the shape of ``schemas/avro/agent_turn_v1.avsc``."""
    return {
        "event_id": turn["event_id"],
        "session_id": turn["session_id"],
        "turn_id": turn["turn_id"],
        "user_id": turn.get("user_id"),
        "tenant_id": turn["tenant_id"],
        "channel": turn.get("channel") or "web_chat",
        "model": turn["model"],
        "model_provider": turn["model_provider"],
        "model_family": turn["model_family"],
        "tokens_in": int(turn["tokens_in"]),
        "tokens_out": int(turn["tokens_out"]),
        "cached_tokens_in": int(turn.get("cached_tokens_in") or 0),
        "total_tokens": int(turn["total_tokens"]),
        "latency_ms": float(turn["latency_ms"]),
        "tokens_per_second": float(turn["tokens_per_second"]),
        "estimated_cost_usd": turn.get("estimated_cost_usd"),
        "price_book_version": turn["price_book_version"],
        "price_key": turn.get("price_key"),
        "efficiency_score": int(turn["efficiency_score"]),
        "quality_score": int(turn["quality_score"]),
        "business_value_score": int(turn["business_value_score"]),
        "sentiment": turn.get("sentiment"),
        "user_sentiment_compound": turn.get("user_sentiment_compound"),
        "response_sentiment": turn.get("response_sentiment"),
        "response_sentiment_compound": turn.get("response_sentiment_compound"),
        "language": turn.get("language"),
        "response_language": turn.get("response_language"),
        "topics": list(turn.get("topics") or []),
        "keywords": list(turn.get("keywords") or []),
        "tools_used": list(turn.get("tools_used") or []),
        "lead_captured": bool(turn.get("lead_captured")),
        "user_message": turn.get("user_message"),
        "response_text": turn.get("response_text") or "",
        "tool_results_json": _json(turn.get("tool_results") or {}),
        "conversation_context_json": _json(turn.get("conversation_context") or {}),
        "extra_json": _json(turn.get("extra") or {}),
        "efficiency_factors_json": _json(turn.get("efficiency_factors") or {}),
        "quality_factors_json": _json(turn.get("quality_factors") or {}),
        "business_value_factors_json": _json(turn.get("business_value_factors") or {}),
        "pii_redactions_json": _json(turn.get("pii_redactions") or {}),
        "pipeline_version": PIPELINE_VERSION,
        "timestamp_ms": int(turn["timestamp_ms"]),
    }


# -- conversations ---------------------------------------------------------
def conversation_entry(turn: typing.Mapping) -> tuple:
    """What a session aggregate keeps of one turn (small and picklable)."""
    factors = turn.get("quality_factors") or {}
    return (
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


def summarise_conversation(entries: typing.Mapping[str, tuple]) -> dict:
    """Aggregate of one session's turns (``turn_id -> conversation_entry``).

    ``sentiment_trend`` = last minus first user-message compound score (turns
    in time order; turns without a user message skipped); ``sentiment_slope``
    = least-squares slope of those scores per turn.
    """
    ordered = sorted(entries.items(), key=lambda kv: (kv[1][0], kv[0]))
    rows = [e for _, e in ordered]
    n = len(rows)
    costs = [r[3] for r in rows if r[3] is not None]
    latencies = [r[4] for r in rows]
    sentiments = [r[5] for r in rows if r[5] is not None]
    topic_counts: collections.Counter = collections.Counter()
    tool_counts: collections.Counter = collections.Counter()
    for r in rows:
        topic_counts.update(set(r[6]))
        tool_counts.update(r[7])
    tool_calls = sum(r[8] for r in rows)
    tool_successes = sum(r[9] for r in rows)
    user_ids = [r[14] for r in rows if r[14]]
    first, last = rows[0][0], rows[-1][0]
    return {
        "tenant_id": rows[0][15],
        "user_id": user_ids[-1] if user_ids else None,
        "channel": rows[-1][16],
        "turn_count": n,
        "first_turn_at": first,
        "last_turn_at": last,
        "duration_seconds": round((last - first) / 1000.0, 3),
        "tokens_in": sum(r[1] for r in rows),
        "tokens_out": sum(r[2] for r in rows),
        "total_tokens": sum(r[1] + r[2] for r in rows),
        "estimated_cost_usd": round(sum(costs), 6) if costs else None,
        "unpriced_turns": n - len(costs),
        "mean_latency_ms": round(sum(latencies) / n, 3),
        "max_latency_ms": max(latencies),
        "sentiment_first": sentiments[0] if sentiments else None,
        "sentiment_last": sentiments[-1] if sentiments else None,
        "sentiment_mean": round(sum(sentiments) / len(sentiments), 4) if sentiments else None,
        "sentiment_trend": round(sentiments[-1] - sentiments[0], 4) if sentiments else None,
        "sentiment_slope": (round(_slope(sentiments), 4)
                            if len(sentiments) >= 2 else None),
        "topics": [t for t, _ in sorted(topic_counts.items(), key=lambda kv: (-kv[1], kv[0]))],
        "topic_counts": dict(sorted(topic_counts.items())),
        "tools_used": dict(sorted(tool_counts.items())),
        "tool_calls": tool_calls,
        "tool_successes": tool_successes,
        "tool_success_rate": round(tool_successes / tool_calls, 4) if tool_calls else None,
        "models": sorted({r[13] for r in rows}),
        "avg_quality_score": round(sum(r[10] for r in rows) / n, 2),
        "avg_business_value_score": round(sum(r[11] for r in rows) / n, 2),
        "max_business_value_score": max(r[11] for r in rows),
        "lead_captured": any(r[12] for r in rows),
    }


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


class _ConversationRowFn(beam.DoFn):
    def process(self, keyed, window=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam):
        session_id, summary = keyed
        row = dict(summary)
        row["session_id"] = session_id
        row["window_start"] = ms_to_iso(int(window.start.micros // 1000))
        row["window_end"] = ms_to_iso(int(window.end.micros // 1000))
        row["first_turn_at"] = ms_to_iso(summary["first_turn_at"])
        row["last_turn_at"] = ms_to_iso(summary["last_turn_at"])
        row["pane_index"] = pane.index if pane is not None else 0
        row["is_final"] = bool(pane is not None and pane.is_last)
        row["updated_at"] = utc_now_iso()
        yield row


# -- billing ---------------------------------------------------------------
def billing_entry(turn: typing.Mapping) -> tuple:
    return (
        int(turn["tokens_in"]),
        int(turn["tokens_out"]),
        int(turn.get("cached_tokens_in") or 0),
        turn.get("estimated_cost_usd"),
        turn["price_book_version"],
        turn["model_family"],
        turn["model_provider"],
    )


def billing_row(tenant_id: str, model: str, hour_start_ms: int,
                entries: typing.Mapping[str, tuple]) -> dict:
    """The ``agent_billing_hourly`` row for one tenant, model and UTC hour."""
    rows = list(entries.values())
    costs = [r[3] for r in rows if r[3] is not None]
    first = rows[0] if rows else (0, 0, 0, None, None, "unknown", "unknown")
    return {
        "tenant_id": tenant_id,
        "model": model,
        "hour": ms_to_iso(hour_start_ms),
        "model_family": first[5],
        "model_provider": first[6],
        "turns": len(rows),
        "tokens_in": sum(r[0] for r in rows),
        "tokens_out": sum(r[1] for r in rows),
        "cached_tokens_in": sum(r[2] for r in rows),
        "total_tokens": sum(r[0] + r[1] for r in rows),
        "estimated_cost_usd": round(sum(costs), 6),
        "unpriced_turns": len(rows) - len(costs),
        "price_book_versions": sorted({r[4] for r in rows if r[4]}),
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


def daily_cost_state(row: typing.Mapping) -> dict:
    """A billing row as a Redis element for ``WriteSessionState``.

    One hash per tenant and UTC day, ``iheard:text_agent:cost:<tenant>:<date>``,
    with the fields ``cost:<model>:<HH>`` and ``turns:<model>:<HH>``. Each
    hourly pane overwrites its own fields with the hour's full aggregate, so
    replays leave the same hash; today's running cost is the sum of the
    ``cost:*`` fields (``read_cost_today``).
    """
    hour = dt.datetime.fromisoformat(row["hour"])
    return {
        "_key": f"{row['tenant_id']}:{hour.strftime('%Y-%m-%d')}",
        f"cost:{row['model']}:{hour.strftime('%H')}": row["estimated_cost_usd"],
        f"turns:{row['model']}:{hour.strftime('%H')}": row["turns"],
    }


def read_cost_today(client, tenant_id: str, day: typing.Optional[dt.date] = None,
                    prefix: str = DAILY_COST_PREFIX) -> float:
    """Running cost of ``tenant_id`` for ``day`` (default today, UTC) from Redis."""
    day = day or dt.datetime.now(dt.timezone.utc).date()
    fields = client.hgetall(f"{prefix}{tenant_id}:{day.isoformat()}")
    total = 0.0
    for name, value in fields.items():
        name = name.decode() if isinstance(name, bytes) else name
        if name.startswith("cost:"):
            total += float(value)
    return round(total, 6)


# --------------------------------------------------------------------------
# Beam wrappers
# --------------------------------------------------------------------------
class _EnrichTurnFn(beam.DoFn):
    def __init__(self, pii_secret: bytes, pipeline: str,
                 price_book_path: typing.Optional[str], topics_path: typing.Optional[str]):
        self._secret = pii_secret
        self._pipeline = pipeline
        self._price_book_path = price_book_path
        self._topics_path = topics_path
        self._redactor = None
        self._enricher = None
        self._enriched = Metrics.counter(pipeline, "turns_enriched")
        self._unpriced = Metrics.counter(pipeline, "turns_unpriced")
        self._failed = Metrics.counter(pipeline, "enrich_failed")
        self._pii = {k: Metrics.counter(pipeline, f"pii_redacted_{k}") for k in PII_KINDS}

    def setup(self):
        self._redactor = PiiRedactor(self._secret)
        self._enricher = TurnEnricher(price_book_path=self._price_book_path,
                                      topics_path=self._topics_path)

    def process(self, turn: dict):
        try:
            redacted, user_pii, pii_total = redact_turn(turn, self._redactor)
        except Exception as exc:  # noqa: BLE001 - route, never crash the bundle
            self._failed.inc()
            yield beam.pvalue.TaggedOutput(
                EnrichTurns.FAILED, failed_from_event(_withheld(turn), exc, "redact", self._pipeline))
            return
        for kind, n in pii_total.items():
            if kind in self._pii:
                self._pii[kind].inc(n)
        try:
            enriched = self._enricher.enrich(redacted, user_pii, pii_total)
        except Exception as exc:  # noqa: BLE001
            self._failed.inc()
            yield beam.pvalue.TaggedOutput(
                EnrichTurns.FAILED, failed_from_event(redacted, exc, "enrich", self._pipeline))
            return
        self._enriched.inc()
        if enriched["estimated_cost_usd"] is None:
            self._unpriced.inc()
        yield enriched


class EnrichTurns(beam.PTransform):
    """Parsed turn dicts -> ``valid`` enriched, redacted turns (agent_turns
    rows) and ``failed`` ``FailedRecord``s. Timestamps and windows pass
    through unchanged.

    Args:
      pii_secret: HMAC key of the PII tokens (>= 16 bytes).
      pipeline: counter namespace and dead-letter ``pipeline``.
      price_book_path / topics_path: YAML files (default: the bundled ones).
    """

    VALID = "valid"
    FAILED = "failed"

    def __init__(self, pii_secret: bytes, pipeline: str = PIPELINE,
                 price_book_path: typing.Optional[str] = None,
                 topics_path: typing.Optional[str] = None):
        super().__init__()
        PiiRedactor(pii_secret)  # fail at construction on a bad secret
        load_price_book(price_book_path)  # ... and on a bad price book or taxonomy
        load_topic_taxonomy(topics_path)
        self._secret = pii_secret
        self._pipeline = pipeline
        self._price_book_path = price_book_path
        self._topics_path = topics_path

    def expand(self, turns):
        return turns | "RedactScoreAndAnalyse" >> beam.ParDo(
            _EnrichTurnFn(self._secret, self._pipeline, self._price_book_path, self._topics_path)
        ).with_outputs(self.FAILED, main=self.VALID)


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


