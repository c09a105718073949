"""Text-agent turns: identity, redaction, model metrics, scores, content.

The aggregates (conversations, hourly billing) are in
``transforms.text_agent_aggregates``; the Redis layout of the live state
(conversation hashes, a tenant's daily cost) in ``iheard_io.redis_io``.

Pure core first (``turn_key``, ``redact_turn``, ``TurnEnricher.enrich``,
``tenant_of``, ``cached_tokens_of``, ``archive_record``), then the thin Beam
wrapper:

``EnrichTurns`` - parsed ``TextAgentTurn`` dicts -> ``valid`` enriched turns
(``agent_turns`` rows, redacted) and ``failed`` ``FailedRecord``s::

    turn --_EnrichTurnFn--+--> valid  : redacted + metrics + scores + content
                          |              + outcomes (transforms.text_agent_outcomes)
                          +--> failed : stage "redact" (texts withheld) | "enrich"

PII goes first, inside the same DoFn: ``user_message``, ``response_text``,
``user_id``, every string inside ``tool_results``, ``conversation_context``
and the unknown ``extra`` fields are redacted before anything is analysed,
so no later step, sink, archive or dead letter ever sees the raw text. The
redactor's counts (kinds only, never values) feed ``lead_captured``: an email
address or phone number in the user message is a captured lead.

Tenant: the first non-empty of the payload's ``tenant_id``, ``account_id``,
``widget_id`` (unknown fields the producer may add; the seed payload has
none), else ``"default"``.

Cached input tokens: the first of ``cached_tokens_in``, ``tokens_in_cached``,
``cache_read_input_tokens``, ``cached_tokens`` in the payload (clamped to
[0, tokens_in]); they are priced at the model's cached-input rate.
"""
from __future__ import annotations

import collections
import json
import typing

import apache_beam as beam
from apache_beam.metrics import Metrics

from schemas.records import PIPELINE_VERSION, failed_from_event
from transforms.deadletter import REDACTION_WITHHELD
from transforms.pii import PII_KINDS, PiiRedactor
from transforms.pii_regions import record_region_hints
from transforms.text_agent_content import ContentAnalyzer, load_topic_taxonomy
from transforms.text_agent_pricing import (
    PriceBook,
    load_model_families,
    load_price_book,
)
from transforms.text_agent_outcomes import (
    turn_conversion_probability,
    turn_cost_per_interaction,
    turn_user_satisfaction,
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
    "TurnEnricher",
    "redact_turn",
    "tenant_of",
    "cached_tokens_of",
    "archive_record",
]

PIPELINE = "text_agent"
DEFAULT_TENANT = "default"
TENANT_FIELDS = ("tenant_id", "account_id", "widget_id")
CACHED_TOKEN_FIELDS = ("cached_tokens_in", "tokens_in_cached", "cache_read_input_tokens",
                       "cached_tokens")
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
    # Phone regions from the turn's own country/timezone/locale fields, if any.
    regions = record_region_hints(event)
    text, counts = redactor.redact_text(event.get("user_message"), regions)
    out["user_message"] = text
    user_counts.update(counts)
    total.update(counts)
    for field in ("response_text", "user_id"):
        text, counts = redactor.redact_text(event.get(field), regions)
        out[field] = text
        total.update(counts)
    for field in ("tool_results", "conversation_context", "extra"):
        value = event.get(field)
        if value:
            out[field] = redactor.redact_value(value, total, regions)
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
            # transforms/text_agent_outcomes.py: heuristic, rule-derived values
            "conversion_probability": turn_conversion_probability(business_factors),
            "cost_per_interaction": turn_cost_per_interaction(cost.cost_usd),
            "user_satisfaction": turn_user_satisfaction(
                content.user_sentiment_compound, business_factors["lead_captured"]),
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
        "conversion_probability": turn.get("conversion_probability"),
        "cost_per_interaction": turn.get("cost_per_interaction"),
        "user_satisfaction": turn.get("user_satisfaction"),
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


# --------------------------------------------------------------------------
# Beam wrappers
# --------------------------------------------------------------------------
class _EnrichTurnFn(beam.DoFn):
    def __init__(self, pii_secret: bytes, pipeline: str,
                 price_book_path: typing.Optional[str], topics_path: typing.Optional[str],
                 count_existing_tokens: bool = False):
        self._count_existing = count_existing_tokens
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
        self._enricher = TurnEnricher(price_book_path=self._price_book_path,
                                      topics_path=self._topics_path)
        # The detected language is a phone-region hint of last resort.
        self._redactor = PiiRedactor(self._secret, language_of=self._enricher.analyzer.language,
                                     count_existing_tokens=self._count_existing)

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
      count_existing_tokens: the turns were redacted before (an archive
        re-run): PII tokens already in them count as values found, so
        ``lead_captured`` and the PII counts equal the first run's.
    """

    VALID = "valid"
    FAILED = "failed"

    def __init__(self, pii_secret: bytes, pipeline: str = PIPELINE,
                 price_book_path: typing.Optional[str] = None,
                 topics_path: typing.Optional[str] = None,
                 count_existing_tokens: bool = False):
        super().__init__()
        self._count_existing = count_existing_tokens
        PiiRedactor(pii_secret)  # fail at construction on a bad secret
        load_price_book(price_book_path)  # ... and on a bad price book or taxonomy
        load_topic_taxonomy(topics_path)
        self._secret = pii_secret
        self._pipeline = pipeline
        self._price_book_path = price_book_path
        self._topics_path = topics_path

    def dofn(self) -> beam.DoFn:
        """The per-element DoFn ``expand`` applies (unbatched), for running
        the step in-process: a replay's dry run (beam_pipelines/replay.py)."""
        return _EnrichTurnFn(self._secret, self._pipeline, self._price_book_path,
                             self._topics_path, self._count_existing)

    def expand(self, turns):
        return turns | "RedactScoreAndAnalyse" >> beam.ParDo(
            self.dofn()).with_outputs(self.FAILED, main=self.VALID)


