"""Content intelligence for agent turns: sentiment, language, topics, keywords.

Only maintained libraries that ship their models inside the package are used,
so a worker needs no download at run time:

* sentiment: VADER (``vaderSentiment``), compound score in [-1, 1]; label
  ``positive`` if compound >= 0.05, ``negative`` if <= -0.05, else
  ``neutral`` (the thresholds VADER's authors recommend).
* language: ``langdetect`` (a port of Google's language-detection) with
  seed 0 (``DetectorFactory.seed = 0``) so a text always gets the same answer,
  and 3 sampling trials instead of 7 (half the cost, same accuracy here); texts
  with fewer than ``MIN_LETTERS_FOR_LANGUAGE`` letters, or whose best guess is
  below ``MIN_LANGUAGE_PROBABILITY``, are ``"und"`` (undetermined) instead of
  a guess.
* keywords: YAKE (unsupervised, statistical), on the user message.
* topics: the taxonomy in ``transforms/data/topics.yaml`` (phrases matched on
  word boundaries; see that file for the scoring).

Texts are analysed after PII redaction; redaction placeholders (``[EMAIL]``,
``<PHONE:...>``, ``tok_...``) are removed first so they are neither keywords
nor evidence of a language.
"""
from __future__ import annotations

import dataclasses
import functools
import pathlib
import re
import threading
import typing

import yaml

__all__ = [
    "DEFAULT_TOPICS_PATH",
    "TopicTaxonomy",
    "load_topic_taxonomy",
    "ContentAnalysis",
    "ContentAnalyzer",
    "sentiment_label",
    "strip_placeholders",
    "UNDETERMINED_LANGUAGE",
]

DEFAULT_TOPICS_PATH = pathlib.Path(__file__).parent / "data" / "topics.yaml"

UNDETERMINED_LANGUAGE = "und"  # ISO 639-2 code for "undetermined"
POSITIVE_THRESHOLD = 0.05
NEGATIVE_THRESHOLD = -0.05
# Below ~10 letters langdetect's n-gram profile is mostly noise ("ok thx").
MIN_LETTERS_FOR_LANGUAGE = 10
MIN_LANGUAGE_PROBABILITY = 0.70
# langdetect averages 7 random-sampling trials by default; 3 halve its cost
# (it dominates content analysis) and keep the labelled-set accuracy
# (tests/unit/test_text_agent_core.py).
LANGDETECT_TRIALS = 3
LANGDETECT_MAX_CHARS = 1000
MAX_KEYWORDS = 5
MAX_KEYWORD_NGRAM = 2
# Long responses cost YAKE/langdetect time linearly and add nothing to the
# verdict beyond the first few sentences.
MAX_ANALYSED_CHARS = 2000

# Placeholders a redactor may leave: [EMAIL], [EMAIL:ab12], <PHONE>, {{email}},
# and HMAC tokens such as tok_3f9a... or email_3f9a....
_PLACEHOLDER = re.compile(
    r"\[[A-Z_]{2,}(?::[^\]\s]*)?\]|<[A-Z_]{2,}(?::[^>\s]*)?>|\{\{[a-z_]+\}\}"
    r"|\b[a-z]+_[0-9a-f]{8,}\b"
)
_LETTER = re.compile(r"[^\W\d_]", re.UNICODE)


def strip_placeholders(text: str) -> str:
    return _PLACEHOLDER.sub(" ", text or "")


def sentiment_label(compound: float) -> str:
    if compound >= POSITIVE_THRESHOLD:
        return "positive"
    if compound <= NEGATIVE_THRESHOLD:
        return "negative"
    return "neutral"


@dataclasses.dataclass(frozen=True)
class Topic:
    name: str
    business_value: str  # "high" | "medium" | "low"
    pattern: "re.Pattern[str]"


class TopicTaxonomy:
    """Topics with phrase patterns (see ``transforms/data/topics.yaml``)."""

    def __init__(self, document: typing.Mapping, version: str = "custom"):
        self.version = version
        self.min_score = float(document.get("min_score", 1.0))
        self.response_weight = float(document.get("response_weight", 0.5))
        topics = []
        for name, spec in (document.get("topics") or {}).items():
            phrases = [str(p).strip().lower() for p in spec.get("phrases") or [] if str(p).strip()]
            if not phrases:
                raise ValueError(f"topic {name!r} has no phrases")
            alternatives = sorted(
                (re.escape(p[:-1]) + r"\w*" if p.endswith("*") else re.escape(p)
                 for p in phrases),
                key=len,
                reverse=True,
            )
            pattern = re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)")
            topics.append(Topic(str(name), str(spec.get("business_value", "low")), pattern))
        if not topics:
            raise ValueError("topic taxonomy has no topics")
        self.topics: typing.Tuple[Topic, ...] = tuple(topics)
        self.by_name = {t.name: t for t in topics}

    def scores(self, user_text: str, response_text: str = "") -> typing.Dict[str, float]:
        """Topic -> distinct phrases in the user text + response_weight x
        distinct phrases in the response."""
        user = (user_text or "").lower()
        response = (response_text or "").lower()
        out = {}
        for topic in self.topics:
            in_user = len(set(topic.pattern.findall(user))) if user else 0
            in_response = len(set(topic.pattern.findall(response))) if response else 0
            score = in_user + self.response_weight * in_response
            if score > 0:
                out[topic.name] = score
        return out

    def detect(self, user_text: str, response_text: str = "") -> typing.List[str]:
        """Topics scoring >= min_score, best first (ties by name)."""
        scored = self.scores(user_text, response_text)
        kept = [(s, n) for n, s in scored.items() if s >= self.min_score]
        return [n for s, n in sorted(kept, key=lambda sn: (-sn[0], sn[1]))]

    def business_value(self, topic: str) -> str:
        t = self.by_name.get(topic)
        return t.business_value if t else "low"


@functools.lru_cache(maxsize=8)
def _taxonomy_cached(path: str) -> TopicTaxonomy:
    raw = pathlib.Path(path).read_bytes()
    import hashlib

    version = pathlib.Path(path).stem + "@" + hashlib.sha256(raw).hexdigest()[:12]
    return TopicTaxonomy(yaml.safe_load(raw) or {}, version=version)


def load_topic_taxonomy(path: typing.Optional[str] = None) -> TopicTaxonomy:
    """The taxonomy; its ``version`` is the file name plus a content hash, so
    rows say which taxonomy classified them."""
    return _taxonomy_cached(str(path or DEFAULT_TOPICS_PATH))


@dataclasses.dataclass(frozen=True)
class ContentAnalysis:
    user_sentiment: typing.Optional[str]
    user_sentiment_compound: typing.Optional[float]
    response_sentiment: str
    response_sentiment_compound: float
    language: str  # of the user message
    response_language: str
    topics: typing.Tuple[str, ...]
    keywords: typing.Tuple[str, ...]


_LANGDETECT_LOCK = threading.Lock()


class ContentAnalyzer:
    """Holds the loaded models; build once per worker (``DoFn.setup``)."""

    def __init__(self, taxonomy: typing.Optional[TopicTaxonomy] = None,
                 max_keywords: int = MAX_KEYWORDS):
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        from langdetect import DetectorFactory

        self.taxonomy = taxonomy or load_topic_taxonomy()
        self.max_keywords = max_keywords
        self._vader = SentimentIntensityAnalyzer()
        # langdetect draws random n-gram samples; a fixed seed makes a text's
        # language the same on every run and worker.
        DetectorFactory.seed = 0
        self._keyword_extractors: typing.Dict[str, typing.Any] = {}
        self._langdetect_factory = None

    def _language_factory(self):
        """This analyzer's own langdetect factory (profiles load once, ~0.5 s)."""
        if self._langdetect_factory is None:
            from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory

            with _LANGDETECT_LOCK:
                factory = DetectorFactory()
                factory.load_profile(PROFILES_DIRECTORY)
                factory.set_seed(0)
                self._langdetect_factory = factory
        return self._langdetect_factory

    # -- single analyses -------------------------------------------------
    def sentiment(self, text: str) -> typing.Tuple[str, float]:
        compound = round(float(self._vader.polarity_scores(text or "")["compound"]), 4)
        return sentiment_label(compound), compound

    def language(self, text: str) -> str:
        from langdetect.lang_detect_exception import LangDetectException

        cleaned = strip_placeholders(text)[:LANGDETECT_MAX_CHARS]
        if len(_LETTER.findall(cleaned)) < MIN_LETTERS_FOR_LANGUAGE:
            return UNDETERMINED_LANGUAGE
        try:
            detector = self._language_factory().create()
            detector.n_trial = LANGDETECT_TRIALS
            detector.append(cleaned)
            best = detector.get_probabilities()
        except LangDetectException:
            return UNDETERMINED_LANGUAGE
        if not best or best[0].prob < MIN_LANGUAGE_PROBABILITY:
            return UNDETERMINED_LANGUAGE
        return best[0].lang

    def keywords(self, text: str, language: str = "en") -> typing.List[str]:
        cleaned = strip_placeholders(text)[:MAX_ANALYSED_CHARS].strip()
        if len(_LETTER.findall(cleaned)) < 3:
            return []
        lan = language[:2] if language and language != UNDETERMINED_LANGUAGE else "en"
        extractor = self._keyword_extractors.get(lan)
        if extractor is None:
            import yake

            try:
                extractor = yake.KeywordExtractor(lan=lan, n=MAX_KEYWORD_NGRAM,
                                                  top=self.max_keywords * 2)
            except Exception:  # no stop-word list for this language
                extractor = yake.KeywordExtractor(lan="en", n=MAX_KEYWORD_NGRAM,
                                                  top=self.max_keywords * 2)
            self._keyword_extractors[lan] = extractor
        out: typing.List[str] = []
        seen = set()
        for phrase, _score in extractor.extract_keywords(cleaned):
            key = phrase.lower()
            # A word already inside a chosen phrase adds nothing
            # ("enterprise" after "enterprise plan").
            if key in seen or any(key in chosen.split() for chosen in out):
                continue
            seen.add(key)
            out.append(key)
            if len(out) >= self.max_keywords:
                break
        return out

    # -- everything a turn needs ----------------------------------------
    def analyse(self, user_message: typing.Optional[str], response_text: str) -> ContentAnalysis:
        user = strip_placeholders(user_message or "")
        response = strip_placeholders(response_text or "")
        has_user = bool(user.strip())
        if has_user:
            user_label, user_compound = self.sentiment(user[:MAX_ANALYSED_CHARS])
        else:
            user_label, user_compound = None, None
        resp_label, resp_compound = self.sentiment(response[:MAX_ANALYSED_CHARS])
        language = self.language(user) if has_user else UNDETERMINED_LANGUAGE
        response_language = self.language(response)
        topics = self.taxonomy.detect(user[:MAX_ANALYSED_CHARS], response[:MAX_ANALYSED_CHARS])
        keywords = self.keywords(user, language) if has_user else []
        return ContentAnalysis(
            user_sentiment=user_label,
            user_sentiment_compound=user_compound,
            response_sentiment=resp_label,
            response_sentiment_compound=resp_compound,
            language=language,
            response_language=response_language,
            topics=tuple(topics),
            keywords=tuple(keywords),
        )
