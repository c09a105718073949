"""Lead scoring: pure functions from a normalised lead and its engagement to scores.

``score_lead(features, engagement, config)`` returns the 0-100
``lead_quality_score`` and each factor's contribution, which the table keeps
beside the score (``score_factors``) so a sales rep can see why a lead is hot:

=================  ======  =========================================================
factor             max     rule
=================  ======  =========================================================
email_domain       20      corporate 20, free provider 6, disposable 0
profile            10      first or last name 3, company 3, title 2, phone 2
seniority          20      c-level/founder/owner 20, VP/head 16, director 13,
                           manager/lead 8, another title 3, student/intern 0
lead_source        10      10 x the source's conversion rate / the best rate
                           (``SOURCE_CONVERSION_RATES``; unknown source: 0.2)
marketo_score      25      Marketo's own behaviour score (email opens, visits
                           it tracks), 0-100 -> 0-25
engagement         15      15 x the engagement index from this platform's
                           frontend sessions and agent conversations (below)
=================  ======  =========================================================

The sum is rounded to an integer and clamped to [0, 100].

Engagement index (0..1) from the lead's frontend sessions and agent
conversations (``Engagement``)::

    raw   = 0.15 sessions + 0.02 min(events, 200) + 0.1 messages
          + 0.6 conversions + 0.005 max_engagement_score
          + 0.2 conversations + 0.05 turns + 0.5 lead_captured
          + 0.005 max_business_value
    index = 1 - exp(-raw)

Every term grows with its input and ``1 - exp(-x)`` is increasing, so more
engagement never lowers the index, the score or the probability; and since
corporate > free > disposable points with every other factor equal, a
corporate domain never scores below the same lead on a disposable one
(tests/unit/test_marketo_scoring.py checks both properties).

``engagement_level``: none (index 0), low (< 0.4), medium (< 0.75), high.
``conversion_probability`` = logistic(-3.2 + 3.5 score/100 + 1.5 index),
rounded to three decimals. ``recommended_action`` follows the design
document's rule with configurable thresholds (``ActionThresholds``).
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing

__all__ = [
    "Engagement",
    "LeadFeatures",
    "ScoringConfig",
    "ActionThresholds",
    "ScoreResult",
    "score_lead",
    "engagement_index",
    "engagement_level",
    "conversion_probability",
    "recommended_action",
    "seniority_of",
    "engagement_from_rows",
    "SOURCE_CONVERSION_RATES",
]

SCORING_VERSION = "marketo-score-v1"

DOMAIN_POINTS = {"corporate": 20.0, "free": 6.0, "disposable": 0.0}

# Conversion rate per lead source, from the design document's attribution
# figures (organic 0.34, paid 0.18, referrals 0.67); other sources map onto
# those three by kind, and an unknown source gets DEFAULT_SOURCE_RATE.
SOURCE_CONVERSION_RATES = {
    "referral": 0.67, "partner": 0.67, "word of mouth": 0.67,
    "organic search": 0.34, "organic": 0.34, "website": 0.34, "seo": 0.34, "event": 0.34,
    "webinar": 0.34, "chat widget": 0.34,
    "paid search": 0.18, "paid ads": 0.18, "paid": 0.18, "ppc": 0.18, "social": 0.18,
    "display": 0.18, "list import": 0.1, "purchased list": 0.1,
}
DEFAULT_SOURCE_RATE = 0.2

_SENIORITY = (
    ("c_level", 20.0, re.compile(r"\b(ceo|cto|cfo|coo|cmo|cio|cro|chief|founder|co-founder|owner|"
                                 r"president|managing director|partner)\b")),
    ("vp", 16.0, re.compile(r"\b(vp|svp|evp|vice president|head of|head)\b")),
    ("director", 13.0, re.compile(r"\b(director|principal)\b")),
    ("manager", 8.0, re.compile(r"\b(manager|lead|supervisor)\b")),
    ("student", 0.0, re.compile(r"\b(student|intern|trainee)\b")),
)

LEVEL_HIGH = 0.75
LEVEL_MEDIUM = 0.4


class Engagement(typing.NamedTuple):
    """A lead's activity in the other two sources (counts, never content)."""

    sessions: int = 0
    events: int = 0
    messages: int = 0
    conversions: int = 0
    max_engagement_score: float = 0.0
    conversations: int = 0
    turns: int = 0
    lead_captured: bool = False
    max_business_value: float = 0.0


def engagement_from_rows(found: typing.Optional[typing.Mapping[str, typing.Sequence]]
                         ) -> Engagement:
    """The ``Engagement`` of a lead from what ``iheard_io.engagement`` found
    under its identity keys: ``{key: (frontend aggregate, agent aggregate)}``
    with ``(sessions, events, messages, conversions, max engagement score)``
    and ``(conversations, turns, lead captured, max business value)``. Counts
    add up over the keys (one person, several ids), maxima take the max."""
    sessions = events = messages = conversions = conversations = turns = 0
    max_engagement = max_value = 0.0
    captured = False
    for (s, e, m, c, me), (a, t, lc, mv) in (found or {}).values():
        sessions += int(s)
        events += int(e)
        messages += int(m)
        conversions += int(c)
        max_engagement = max(max_engagement, float(me))
        conversations += int(a)
        turns += int(t)
        captured = captured or bool(lc)
        max_value = max(max_value, float(mv))
    return Engagement(sessions, events, messages, conversions, max_engagement,
                      conversations, turns, captured, max_value)


class LeadFeatures(typing.NamedTuple):
    email_domain_class: str  # "corporate" | "free" | "disposable"
    has_name: bool = False
    has_company: bool = False
    title: typing.Optional[str] = None
    has_phone: bool = False
    lead_source: typing.Optional[str] = None
    marketo_score: typing.Optional[float] = None


@dataclasses.dataclass(frozen=True)
class ActionThresholds:
    priority_score: int = 80
    nurture_probability: float = 0.6

    def __post_init__(self):
        if not 0 <= self.priority_score <= 100:
            raise ValueError("priority_score must be within 0..100")
        if not 0.0 <= self.nurture_probability <= 1.0:
            raise ValueError("nurture_probability must be within 0..1")


@dataclasses.dataclass(frozen=True)
class ScoringConfig:
    thresholds: ActionThresholds = ActionThresholds()
    source_rates: typing.Mapping[str, float] = dataclasses.field(
        default_factory=lambda: dict(SOURCE_CONVERSION_RATES))


class ScoreResult(typing.NamedTuple):
    score: int
    factors: typing.Dict[str, float]
    engagement_index: float
    engagement_level: str
    conversion_probability: float
    recommended_action: str


def seniority_of(title: typing.Optional[str]) -> typing.Tuple[str, float]:
    if not title or not title.strip():
        return "none", 0.0
    text = title.lower()
    for name, points, pattern in _SENIORITY:
        if pattern.search(text):
            return name, points
    return "other", 3.0


def engagement_index(e: Engagement) -> float:
    raw = (0.15 * max(e.sessions, 0) + 0.02 * min(max(e.events, 0), 200)
           + 0.1 * max(e.messages, 0) + 0.6 * max(e.conversions, 0)
           + 0.005 * max(e.max_engagement_score, 0.0)
           + 0.2 * max(e.conversations, 0) + 0.05 * max(e.turns, 0)
           + 0.5 * (1 if e.lead_captured else 0)
           + 0.005 * max(e.max_business_value, 0.0))
    return 1.0 - math.exp(-raw)


def engagement_level(index: float) -> str:
    if index <= 0.0:
        return "none"
    if index < LEVEL_MEDIUM:
        return "low"
    if index < LEVEL_HIGH:
        return "medium"
    return "high"


def conversion_probability(score: int, index: float) -> float:
    z = -3.2 + 3.5 * (score / 100.0) + 1.5 * index
    return round(1.0 / (1.0 + math.exp(-z)), 3)


def recommended_action(score: int, level: str, probability: float,
                       thresholds: ActionThresholds = ActionThresholds()) -> str:
    """The design document's rule, with configurable thresholds."""
    if score > thresholds.priority_score and level == "high":
        return "immediate_sales_follow_up"
    if probability > thresholds.nurture_probability:
        return "targeted_nurture_campaign"
    return "automated_email_sequence"


def _source_rate(source: typing.Optional[str], rates: typing.Mapping[str, float]) -> float:
    if not source:
        return DEFAULT_SOURCE_RATE
    key = re.sub(r"[\s_\-]+", " ", source.strip().lower())
    return rates.get(key, DEFAULT_SOURCE_RATE)


def score_lead(features: LeadFeatures, engagement: Engagement = Engagement(),
               config: ScoringConfig = ScoringConfig()) -> ScoreResult:
    """The score, its factors and the derived engagement, probability, action."""
    if features.email_domain_class not in DOMAIN_POINTS:
        raise ValueError(f"unknown email domain class {features.email_domain_class!r}")
    best_rate = max(config.source_rates.values() or [1.0]) or 1.0
    index = engagement_index(engagement)
    marketo = features.marketo_score
    factors = {
        "email_domain": DOMAIN_POINTS[features.email_domain_class],
        "profile": 3.0 * features.has_name + 3.0 * features.has_company
        + 2.0 * bool(features.title and features.title.strip()) + 2.0 * features.has_phone,
        "seniority": seniority_of(features.title)[1],
        "lead_source": round(10.0 * min(_source_rate(features.lead_source, config.source_rates)
                                        / best_rate, 1.0), 2),
        "marketo_score": round(min(max(float(marketo), 0.0), 100.0) / 4.0, 2)
        if marketo is not None and math.isfinite(float(marketo)) else 0.0,
        "engagement": round(15.0 * index, 2),
    }
    score = int(min(max(round(sum(factors.values())), 0), 100))
    level = engagement_level(index)
    probability = conversion_probability(score, index)
    return ScoreResult(score, factors, round(index, 4), level, probability,
                       recommended_action(score, level, probability, config.thresholds))
