"""The three 0-100 turn scores, each returned with the factors that made it.

Pure functions over plain values, so every branch has a hand-computed unit
test (``tests/unit/test_text_agent_scoring.py``). A score is the rounded sum
of bounded components; the factors dict holds each component's input and
points, and is stored beside the score (``agent_turns.*_factors``) so an
analyst can see why a turn scored what it did.

Rounding is half-up (``int(x + 0.5)``) rather than Python's banker's rounding,
so 62.5 -> 63 everywhere. ``clamp01(x) = min(max(x, 0), 1)``.

efficiency_score (speed versus tokens), 100 points::

    tokens_per_second = tokens_out / (latency_ms / 1000)     (0 when latency_ms <= 0)
    speed   = 50 * clamp01(tokens_per_second / 50)          50 tok/s or faster -> full
    latency = 30 * clamp01((8000 - latency_ms) / 7000)      <= 1 s full, >= 8 s none
    economy = 20 * clamp01((4000 - total_tokens) / 3000)    <= 1000 tokens full, >= 4000 none
    (latency_ms <= 0 means the producer measured nothing: speed and latency
     get 0 points and factors.latency_missing is true)

quality_score, 100 points::

    tools    = 30 * successful / len(tool_results)           no tool results -> 30
    phrasing = 30 if the response has neither a refusal nor an error phrase,
               10 if it has an error phrase only, 0 if it has a refusal
    length   = 25 * fit(r = response_words / question_words):
               r < 1 -> r;  1 <= r <= 20 -> 1;  r > 20 -> clamp01(1 - (r - 20) / 40)
               (an empty response -> 0; no user message -> 1 when the response
                has >= 3 words, else 0.4)
    language = 15 if user and response languages match or either is
               undetermined ("und"), else 0

business_value_score, 100 points::

    intent     = 35 * min(intent_hits, 2) / 2, intent_hits = distinct buying
                 phrases in the user message + 1 if conversation_context.user_intent
                 names a buying intent
    topics     = 25 if a high-value topic (pricing, demo, contact) was detected,
                 12 if only medium-value ones, else 0
    lead       = 30 if a lead was captured: the user message contained an email
                 address or phone number (seen by PII redaction) or a lead tool
                 (name matches LEAD_TOOL) ran successfully
    engagement = 10 * min(previous_turns, 5) / 5
"""
from __future__ import annotations

import math
import re
import typing

__all__ = [
    "efficiency_score",
    "quality_score",
    "business_value_score",
    "round_half_up",
    "word_count",
    "REFUSAL_PHRASES",
    "ERROR_PHRASES",
    "BUYING_PHRASES",
    "LEAD_TOOL",
]

Factors = typing.Dict[str, typing.Any]

# -- efficiency ------------------------------------------------------------
TARGET_TOKENS_PER_SECOND = 50.0
FAST_LATENCY_MS = 1000.0
SLOW_LATENCY_MS = 8000.0
LEAN_TOTAL_TOKENS = 1000.0
HEAVY_TOTAL_TOKENS = 4000.0

# -- quality ---------------------------------------------------------------
MAX_GOOD_LENGTH_RATIO = 20.0
LENGTH_RATIO_FADE = 40.0
REFUSAL_PHRASES = (
    "i can't help", "i cannot help", "i can not help", "i'm unable to", "i am unable to",
    "i can't assist", "i cannot assist", "i'm not able to", "i am not able to",
    "i cannot provide", "i can't provide", "i won't be able to", "i'm sorry, but i can't",
    "as an ai", "i don't have access", "i do not have access", "not allowed to share",
    "i can't answer", "i cannot answer",
)
ERROR_PHRASES = (
    "something went wrong", "an error occurred", "error occurred", "internal error",
    "try again later", "temporarily unavailable", "i encountered an error",
    "service unavailable", "timed out", "failed to retrieve", "failed to load",
    "couldn't complete", "could not complete",
)

# -- business value --------------------------------------------------------
BUYING_PHRASES = (
    "buy", "purchase", "pricing", "price", "quote", "subscribe", "sign up", "signup",
    "upgrade", "how much", "cost", "contract", "order", "free trial", "trial",
    "demo", "talk to sales", "get started", "onboard", "license", "seats",
)
BUYING_INTENT = re.compile(r"purchas|buy|pric|demo|trial|sign.?up|upgrade|quote|sales|lead|contact")
LEAD_TOOL = re.compile(r"lead|crm|contact|book|schedul|meeting|appointment|hubspot|salesforce|marketo")
LEAD_PII_KINDS = ("email", "phone")
MAX_INTENT_HITS = 2
ENGAGED_PREVIOUS_TURNS = 5

def _phrase_pattern(phrases: typing.Sequence[str]) -> "re.Pattern[str]":
    ordered = sorted(phrases, key=len, reverse=True)
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(p) for p in ordered) + r")(?!\w)")


_BUYING = _phrase_pattern(BUYING_PHRASES)

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*", re.UNICODE)


def round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _clamp01(x: float) -> float:
    return min(max(x, 0.0), 1.0)


def _score(points: typing.Iterable[float]) -> int:
    return min(max(round_half_up(sum(points)), 0), 100)


def word_count(text: typing.Optional[str]) -> int:
    return len(_WORD.findall(text or ""))


def tokens_per_second(tokens_out: int, latency_ms: float) -> float:
    if not latency_ms or latency_ms <= 0:
        return 0.0
    return round(tokens_out / (latency_ms / 1000.0), 3)


def efficiency_score(tokens_out: int, total_tokens: int, latency_ms: float
                     ) -> typing.Tuple[int, Factors]:
    latency_missing = not latency_ms or latency_ms <= 0
    tps = tokens_per_second(tokens_out, latency_ms)
    speed = 0.0 if latency_missing else 50 * _clamp01(tps / TARGET_TOKENS_PER_SECOND)
    latency = 0.0 if latency_missing else 30 * _clamp01(
        (SLOW_LATENCY_MS - latency_ms) / (SLOW_LATENCY_MS - FAST_LATENCY_MS))
    economy = 20 * _clamp01(
        (HEAVY_TOTAL_TOKENS - total_tokens) / (HEAVY_TOTAL_TOKENS - LEAN_TOTAL_TOKENS))
    factors = {
        "tokens_per_second": tps,
        "latency_ms": latency_ms,
        "total_tokens": total_tokens,
        "latency_missing": latency_missing,
        "speed_points": round(speed, 3),
        "latency_points": round(latency, 3),
        "token_economy_points": round(economy, 3),
    }
    return _score((speed, latency, economy)), factors


_REFUSAL = _phrase_pattern(REFUSAL_PHRASES)
_ERROR = _phrase_pattern(ERROR_PHRASES)


def _find_phrases(text: str, pattern: "re.Pattern[str]") -> typing.List[str]:
    """Distinct phrases found on word boundaries (curly apostrophes folded)."""
    lowered = (text or "").lower().replace("\u2019", "'")
    return sorted(set(pattern.findall(lowered)))


def _length_fit(response_words: int, question_words: int) -> typing.Tuple[float, typing.Optional[float]]:
    if response_words == 0:
        return 0.0, None
    if question_words == 0:
        return (1.0 if response_words >= 3 else 0.4), None
    ratio = response_words / question_words
    if ratio < 1:
        return ratio, ratio
    if ratio <= MAX_GOOD_LENGTH_RATIO:
        return 1.0, ratio
    return _clamp01(1 - (ratio - MAX_GOOD_LENGTH_RATIO) / LENGTH_RATIO_FADE), ratio


def quality_score(
    tool_results: typing.Mapping[str, typing.Mapping],
    response_text: str,
    user_message: typing.Optional[str],
    user_language: str,
    response_language: str,
    undetermined: str = "und",
) -> typing.Tuple[int, Factors]:
    results = list((tool_results or {}).values())
    successes = sum(1 for r in results if bool(r.get("success")))
    success_rate = successes / len(results) if results else None
    tools = 30.0 if success_rate is None else 30 * success_rate

    refusals = _find_phrases(response_text, _REFUSAL)
    errors = _find_phrases(response_text, _ERROR)
    phrasing = 0.0 if refusals else (10.0 if errors else 30.0)

    response_words = word_count(response_text)
    question_words = word_count(user_message)
    fit, ratio = _length_fit(response_words, question_words)
    length = 25 * fit

    if undetermined in (user_language, response_language) or not user_language or not response_language:
        language_match = None
        language = 15.0
    else:
        language_match = user_language == response_language
        language = 15.0 if language_match else 0.0

    factors = {
        "tool_calls": len(results),
        "tool_successes": successes,
        "tool_success_rate": None if success_rate is None else round(success_rate, 4),
        "refusal_phrases": refusals,
        "error_phrases": errors,
        "response_words": response_words,
        "question_words": question_words,
        "length_ratio": None if ratio is None else round(ratio, 3),
        "language_match": language_match,
        "tool_points": round(tools, 3),
        "phrasing_points": phrasing,
        "length_points": round(length, 3),
        "language_points": language,
    }
    return _score((tools, phrasing, length, language)), factors


def business_value_score(
    user_message: typing.Optional[str],
    user_intent: typing.Optional[str],
    topics: typing.Sequence[str],
    topic_value: typing.Callable[[str], str],
    pii_counts: typing.Mapping[str, int],
    tool_results: typing.Mapping[str, typing.Mapping],
    previous_turns: int,
) -> typing.Tuple[int, Factors]:
    """``pii_counts`` are what PII redaction found in the user message (kind ->
    count); ``topic_value(topic)`` is "high" | "medium" | "low"."""
    phrases = sorted(set(_BUYING.findall((user_message or "").lower())))
    intent_named = bool(user_intent and BUYING_INTENT.search(str(user_intent).lower()))
    hits = len(phrases) + (1 if intent_named else 0)
    intent = 35 * min(hits, MAX_INTENT_HITS) / MAX_INTENT_HITS

    values = {topic_value(t) for t in topics}
    topic_points = 25.0 if "high" in values else (12.0 if "medium" in values else 0.0)

    contact_kinds = sorted(k for k in LEAD_PII_KINDS if pii_counts.get(k, 0) > 0)
    lead_tools = sorted(
        name for name, result in (tool_results or {}).items()
        if LEAD_TOOL.search(name.lower()) and bool(result.get("success"))
    )
    lead_captured = bool(contact_kinds or lead_tools)
    lead = 30.0 if lead_captured else 0.0

    turns = max(int(previous_turns or 0), 0)
    engagement = 10 * min(turns, ENGAGED_PREVIOUS_TURNS) / ENGAGED_PREVIOUS_TURNS

    factors = {
        "buying_phrases": phrases,
        "user_intent_buying": intent_named,
        "intent_hits": hits,
        "high_value_topics": sorted(t for t in topics if topic_value(t) == "high"),
        "lead_captured": lead_captured,
        "lead_contact_kinds": contact_kinds,
        "lead_tools": lead_tools,
        "previous_turns": turns,
        "intent_points": round(intent, 3),
        "topic_points": topic_points,
        "lead_points": lead,
        "engagement_points": round(engagement, 3),
    }
    return _score((intent, topic_points, lead, engagement)), factors
