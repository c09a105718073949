"""The design document's three text-agent outcome fields, per turn and per
conversation: ``conversion_probability``, ``cost_per_interaction`` and
``user_satisfaction``.

Pure functions over values the pipeline already has (the business-value
factors, the priced cost, the user-message sentiment), so each rule has a
hand-computed unit test (``tests/unit/test_text_agent_outcomes.py``). None of
them is learned from outcomes: the project sees no sales results to
calibrate against.

conversion_probability - a HEURISTIC conversion score in [0, 1], not a
calibrated probability (read it as "more or less likely", never as "73 of 100
such turns convert"). Per turn, from the business-value factors
(``transforms/text_agent_scoring.business_value_score``)::

    p = 0.02                                   prior: a turn with no signal
      + 0.38 * min(intent_hits, 2) / 2         buying phrases / a buying user_intent
      + 0.35 * lead_captured                   contact details given or a lead tool succeeded
      + 0.15 * (a high-value topic was seen)   pricing, demo, contact
      + 0.10 * min(previous_turns, 5) / 5      a conversation that keeps going
    rounded to 4 decimals; at most 1.0

Per conversation: the highest turn score (a conversation is as close to
converting as its most committed turn).

cost_per_interaction - US dollars. An interaction is one turn (a user message
and the agent's reply), so a turn's value is its priced cost
(``estimated_cost_usd``, NULL when the price book has no price for its
model). A conversation's is its cost over its priced turns (unpriced turns
are left out of both sides rather than counted as free).

user_satisfaction - "low" | "medium" | "high", inferred from the user's
behaviour, not asked. Per turn, from the user's own message in that turn (its
VADER compound score, -1..1, in ``user_sentiment_compound``; the usual VADER
cut-offs of +-0.05 separate positive, neutral and negative)::

    low     compound <= -0.05 (a negative message: complaint, frustration)
    high    compound >= 0.05, or the user handed over contact details or
            booked through a lead tool (lead_captured) without being negative
    medium  otherwise (a neutral question)
    NULL    no user message (a tool-only turn: nothing to infer from)

Per conversation, from where the user ended up: the same rule on the last
user message's score (``sentiment_last``), plus "low" when sentiment fell by
0.5 or more from the first message to the last (``sentiment_trend``) and
"high" when any turn captured a lead.
"""
from __future__ import annotations

import typing

__all__ = [
    "turn_conversion_probability",
    "conversation_conversion_probability",
    "turn_cost_per_interaction",
    "conversation_cost_per_interaction",
    "turn_user_satisfaction",
    "conversation_user_satisfaction",
    "SATISFACTION_LEVELS",
]

PRIOR = 0.02  # a turn that shows no buying signal at all
INTENT_WEIGHT = 0.38
LEAD_WEIGHT = 0.35
HIGH_VALUE_TOPIC_WEIGHT = 0.15
ENGAGEMENT_WEIGHT = 0.10
MAX_INTENT_HITS = 2
ENGAGED_PREVIOUS_TURNS = 5

POSITIVE_COMPOUND = 0.05  # VADER's usual cut-offs
NEGATIVE_COMPOUND = -0.05
FALLING_TREND = -0.5  # a conversation whose user went from neutral to clearly negative
SATISFACTION_LEVELS = ("low", "medium", "high")


def turn_conversion_probability(business_value_factors: typing.Mapping) -> float:
    """The turn's heuristic conversion score (module docstring)."""
    f = business_value_factors or {}
    hits = min(max(int(f.get("intent_hits") or 0), 0), MAX_INTENT_HITS)
    turns = min(max(int(f.get("previous_turns") or 0), 0), ENGAGED_PREVIOUS_TURNS)
    p = (PRIOR
         + INTENT_WEIGHT * hits / MAX_INTENT_HITS
         + LEAD_WEIGHT * (1.0 if f.get("lead_captured") else 0.0)
         + HIGH_VALUE_TOPIC_WEIGHT * (1.0 if f.get("high_value_topics") else 0.0)
         + ENGAGEMENT_WEIGHT * turns / ENGAGED_PREVIOUS_TURNS)
    return round(min(p, 1.0), 4)


def conversation_conversion_probability(
        turn_scores: typing.Iterable[typing.Optional[float]]) -> typing.Optional[float]:
    """The highest turn score; None when no turn has one."""
    scores = [s for s in turn_scores if s is not None]
    return max(scores) if scores else None


def turn_cost_per_interaction(estimated_cost_usd: typing.Optional[float]) -> typing.Optional[float]:
    """One turn is one interaction: its priced cost (None when unpriced)."""
    return None if estimated_cost_usd is None else round(float(estimated_cost_usd), 6)


def conversation_cost_per_interaction(
        turn_costs: typing.Iterable[typing.Optional[float]]) -> typing.Optional[float]:
    """Mean cost of the priced turns; None when no turn is priced."""
    costs = [float(c) for c in turn_costs if c is not None]
    return round(sum(costs) / len(costs), 6) if costs else None


def _level(compound: float, lead_captured: bool) -> str:
    if compound <= NEGATIVE_COMPOUND:
        return "low"
    if compound >= POSITIVE_COMPOUND or lead_captured:
        return "high"
    return "medium"


def turn_user_satisfaction(user_sentiment_compound: typing.Optional[float],
                           lead_captured: bool) -> typing.Optional[str]:
    """From the user's message in this turn (None: no user message)."""
    if user_sentiment_compound is None:
        return None
    return _level(float(user_sentiment_compound), bool(lead_captured))


def conversation_user_satisfaction(sentiment_last: typing.Optional[float],
                                   sentiment_trend: typing.Optional[float],
                                   lead_captured: bool) -> typing.Optional[str]:
    """From the last user message, the trend and whether a lead was captured."""
    if sentiment_last is None:
        return "high" if lead_captured else None
    if sentiment_trend is not None and sentiment_trend <= FALLING_TREND:
        return "low"
    return _level(float(sentiment_last), bool(lead_captured))
