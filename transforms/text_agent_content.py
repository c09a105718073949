"""Content intelligence for agent turns: sentiment, language, topics, keywords.

Only maintained libraries that ship their models inside the package are used,
so a worker needs no download at run time:

* sentiment: VADER (``vaderSentiment``), compound score in [-1, 1]; label
  ``positive`` if compound >= 0.05, ``negative`` if <= -0.05, else
  ``neutral`` (the thresholds VADER's authors recommend).
* language: Lingua (``lingua-language-detector``, Rust core, n-gram models in
  the wheel), restricted to ``LANGUAGES`` (the languages a sales assistant's
  visitors write in; detection time grows with their number), first in
  low-accuracy mode (trigram models only: ~80 us a text here against ~380 us
  in high-accuracy mode and ~1.4 ms for langdetect). Low-accuracy mode errs on some short messages ("I can't log in, I forgot
  my password." -> Italian, 0.94), so a text it is less than
  ``SURE_LANGUAGE_CONFIDENCE`` sure of is asked again in high-accuracy mode
  (models loaded on first need, ~340 MB; 2 of 563 distinct sample texts get
  there), whose best language is kept when its confidence is at least
  ``HIGH_MODE_MIN_CONFIDENCE`` and ``HIGH_MODE_MIN_MARGIN`` times the
  runner-up's (high-accuracy confidences are spread thin on short texts, so
  an absolute threshold would leave most of them undetermined). Lingua is
  deterministic, so a text gets the same answer on every run and worker.
  Only the first ``LANGUAGE_MAX_CHARS`` characters are read. Texts with fewer
  than ``MIN_LETTERS_FOR_LANGUAGE`` letters, or that neither mode settles,
  are ``"und"`` (undetermined) instead of a guess.
* keywords: RAKE-style extraction (Rose et al., 2010) on the user message:
  the text is cut into candidate runs at punctuation and stop words (YAKE's
  stop-word list for the message's language, English when it has none); a
  word scores degree / frequency; a phrase of 1 to ``MAX_KEYWORD_NGRAM``
  consecutive words of one run scores the sum of its words. Best first, ties
  by first position; a phrase whose words are all inside phrases already
  chosen is skipped. It replaces YAKE's full statistical model, which cost
  ~0.9 ms a message (more than everything else in a turn together) and adds
  little on messages of a dozen words.
* topics: the taxonomy in ``transforms/data/topics.yaml`` (phrases matched on
  word boundaries; see that file for the scoring).

Users repeat themselves ("how much does it cost?") and the assistant repeats
its answers, so language, sentiment, keywords and topic phrase counts are
cached per analyzer by text (LRU, ``CACHE_SIZE`` entries each); a cache hit
returns exactly what the computation would.

Texts are analysed after PII redaction; redaction placeholders (``[EMAIL]``,
``<PHONE:...>``, ``tok_...``) are removed first so they are neither keywords
nor evidence of a language.
"""
from __future__ import annotations

import dataclasses
import functools
import pathlib
import re
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
    "LANGUAGES",
    "CACHE_SIZE",
    "rake_keywords",
]

DEFAULT_TOPICS_PATH = pathlib.Path(__file__).parent / "data" / "topics.yaml"

UNDETERMINED_LANGUAGE = "und"  # ISO 639-2 code for "undetermined"
POSITIVE_THRESHOLD = 0.05
NEGATIVE_THRESHOLD = -0.05
# Below ~10 letters no detector has evidence ("ok thx").
MIN_LETTERS_FOR_LANGUAGE = 10
# Low-accuracy verdicts at or above this are kept; below, high-accuracy mode
# decides (see the module docstring).
SURE_LANGUAGE_CONFIDENCE = 0.95
HIGH_MODE_MIN_CONFIDENCE = 0.25
HIGH_MODE_MIN_MARGIN = 1.5
# Lingua names (``lingua.Language`` members) of the languages told apart.
# Fewer candidates make detection faster and keep a short English text from
# being read as one of 75 languages nobody writes to this assistant in.
LANGUAGES = (
    "ENGLISH", "SPANISH", "FRENCH", "GERMAN", "PORTUGUESE", "ITALIAN", "DUTCH",
    "POLISH", "SWEDISH", "TURKISH", "RUSSIAN", "ARABIC", "HINDI", "JAPANESE",
    "CHINESE", "KOREAN",
)
# A language shows in its first sentences; reading more of a long response
# costs time linearly and rarely changes the verdict.
LANGUAGE_MAX_CHARS = 300
MAX_KEYWORDS = 5
MAX_KEYWORD_NGRAM = 2
# Long responses cost VADER/topic time linearly and add nothing to the
# verdict beyond the first few sentences.
MAX_ANALYSED_CHARS = 2000
# Entries per cache (language, sentiment, keywords, topic phrases). Keys are
# texts of at most MAX_ANALYSED_CHARS characters, so a full cache keeps at
# most ~8 MB of ASCII keys (4096 x 2000), well under 1 MB for chat-length
# messages; enough to hold a busy worker's repeated questions and answers.
CACHE_SIZE = 4096

# Placeholders a redactor may leave: [EMAIL], [EMAIL:ab12], <PHONE>, {{email}},
# and HMAC tokens such as tok_3f9a... or email_3f9a....
_PLACEHOLDER = re.compile(
    r"\[[A-Z_]{2,}(?::[^\]\s]*)?\]|<[A-Z_]{2,}(?::[^>\s]*)?>|\{\{[a-z_]+\}\}"
    r"|\b[a-z]+_[0-9a-f]{8,}\b"
)
_LETTER = re.compile(r"[^\W\d_]", re.UNICODE)
# Keyword candidates: words (with inner apostrophes/hyphens) and the
# punctuation that ends a candidate run.
_KEYWORD_TOKEN = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*|[^\w\s]", re.UNICODE)


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

    def phrase_counts(self, text: str) -> typing.Dict[str, int]:
        """Topic -> number of its distinct phrases in ``text`` (topics with
        none left out)."""
        lowered = (text or "").lower()
        if not lowered:
            return {}
        out = {}
        for topic in self.topics:
            found = topic.pattern.findall(lowered)
            if found:
                out[topic.name] = len(set(found))
        return out

    def scores(self, user_text: str, response_text: str = "") -> typing.Dict[str, float]:
        """Topic -> distinct phrases in the user text + response_weight x
        distinct phrases in the response."""
        return self.combine(self.phrase_counts(user_text), self.phrase_counts(response_text))

    def combine(self, user_counts: typing.Mapping[str, int],
                response_counts: typing.Mapping[str, int]) -> typing.Dict[str, float]:
        """``scores`` from the two texts' ``phrase_counts``."""
        out: typing.Dict[str, float] = {}
        for topic in self.topics:
            score = (user_counts.get(topic.name, 0)
                     + self.response_weight * response_counts.get(topic.name, 0))
            if score > 0:
                out[topic.name] = score
        return out

    def rank(self, scored: typing.Mapping[str, float]) -> typing.List[str]:
        """Topics scoring >= min_score, best first (ties by name)."""
        kept = [(s, n) for n, s in scored.items() if s >= self.min_score]
        return [n for s, n in sorted(kept, key=lambda sn: (-sn[0], sn[1]))]

    def detect(self, user_text: str, response_text: str = "") -> typing.List[str]:
        """Topics scoring >= min_score, best first (ties by name)."""
        return self.rank(self.scores(user_text, response_text))

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


def rake_keywords(text: str, stopwords: typing.AbstractSet[str],
                  max_keywords: int = MAX_KEYWORDS,
                  max_ngram: int = MAX_KEYWORD_NGRAM) -> typing.List[str]:
    """Lower-cased keyword phrases of ``text``, best first (see the module
    docstring). Runs are maximal sequences of words that are neither stop
    words nor numbers, between punctuation marks; a word's degree is the sum
    of the lengths (capped at ``max_ngram``) of the runs it is in."""
    runs: typing.List[typing.List[str]] = []
    run: typing.List[str] = []
    for token in _KEYWORD_TOKEN.findall(text.lower()):
        if (len(token) < 2 or token in stopwords or not _LETTER.search(token)
                or token.replace("\u2019", "'") in stopwords):
            if run:
                runs.append(run)
                run = []
        else:
            run.append(token)
    if run:
        runs.append(run)
    frequency: typing.Dict[str, int] = {}
    degree: typing.Dict[str, int] = {}
    for words in runs:
        width = min(len(words), max_ngram)
        for word in words:
            frequency[word] = frequency.get(word, 0) + 1
            degree[word] = degree.get(word, 0) + width
    # phrase -> (score, first position); dict order keeps the first position.
    candidates: typing.Dict[str, typing.Tuple[float, int]] = {}
    for words in runs:
        for n in range(1, max_ngram + 1):
            for i in range(len(words) - n + 1):
                gram = words[i:i + n]
                phrase = " ".join(gram)
                if phrase not in candidates:
                    score = sum(degree[w] / frequency[w] for w in gram)
                    candidates[phrase] = (score, len(candidates))
    ranked = sorted(candidates.items(), key=lambda kv: (-kv[1][0], kv[1][1]))
    out: typing.List[str] = []
    covered: typing.Set[str] = set()
    for phrase, _ in ranked:
        words = phrase.split()
        # Nothing new ("enterprise" after "enterprise plan").
        if all(w in covered for w in words):
            continue
        out.append(phrase)
        covered.update(words)
        if len(out) >= max_keywords:
            break
    return out


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


@functools.lru_cache(maxsize=8)
def _language_detector(languages: typing.Tuple[str, ...], high_accuracy: bool = False):
    """One Lingua detector per process, language set and mode; safe to share
    between threads. Low-accuracy models (~25 MB) load here; high-accuracy
    ones (~340 MB) on the first text that needs them."""
    from lingua import Language, LanguageDetectorBuilder

    members = [getattr(Language, name) for name in languages]
    builder = LanguageDetectorBuilder.from_languages(*members)
    if not high_accuracy:
        builder = builder.with_low_accuracy_mode().with_preloaded_language_models()
    return builder.build()


@functools.lru_cache(maxsize=64)
def _stopwords(lan: str) -> typing.FrozenSet[str]:
    """YAKE's stop-word list for ``lan`` (English when it ships none)."""
    import yake

    try:
        words = yake.KeywordExtractor(lan=lan).stopword_set
    except Exception:  # no list for this language
        words = yake.KeywordExtractor(lan="en").stopword_set
    return frozenset(w.lower() for w in words)


class ContentAnalyzer:
    """Holds the loaded models and the caches; build once per worker
    (``DoFn.setup``)."""

    def __init__(self, taxonomy: typing.Optional[TopicTaxonomy] = None,
                 max_keywords: int = MAX_KEYWORDS,
                 languages: typing.Sequence[str] = LANGUAGES,
                 cache_size: int = CACHE_SIZE):
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.taxonomy = taxonomy or load_topic_taxonomy()
        self.max_keywords = max_keywords
        self._vader = SentimentIntensityAnalyzer()
        self._languages = tuple(languages)
        self._detector = _language_detector(self._languages)
        self._precise_detector = None  # built when a text first needs it
        self._codes = {}
        from lingua import Language

        for name in languages:
            member = getattr(Language, name)
            self._codes[member] = member.iso_code_639_1.name.lower()
        # Bound per instance so two analyzers never share (or lock) a cache.
        self._sentiment_cached = functools.lru_cache(maxsize=cache_size)(self._sentiment)
        self._language_cached = functools.lru_cache(maxsize=cache_size)(self._language)
        self._keywords_cached = functools.lru_cache(maxsize=cache_size)(self._keywords)
        self._topic_counts_cached = functools.lru_cache(maxsize=cache_size)(
            self.taxonomy.phrase_counts)

    # -- single analyses -------------------------------------------------
    def sentiment(self, text: str) -> typing.Tuple[str, float]:
        return self._sentiment_cached(text or "")

    def _sentiment(self, text: str) -> typing.Tuple[str, float]:
        compound = round(float(self._vader.polarity_scores(text)["compound"]), 4)
        return sentiment_label(compound), compound

    def language(self, text: str) -> str:
        return self._language_cached(strip_placeholders(text)[:LANGUAGE_MAX_CHARS])

    def _language(self, cleaned: str) -> str:
        if len(_LETTER.findall(cleaned)) < MIN_LETTERS_FOR_LANGUAGE:
            return UNDETERMINED_LANGUAGE
        values = self._detector.compute_language_confidence_values(cleaned)
        if values and values[0].value >= SURE_LANGUAGE_CONFIDENCE:
            return self._codes.get(values[0].language, UNDETERMINED_LANGUAGE)
        if self._precise_detector is None:
            self._precise_detector = _language_detector(self._languages, high_accuracy=True)
        values = self._precise_detector.compute_language_confidence_values(cleaned)
        best = values[0].value if values else 0.0
        runner_up = values[1].value if len(values) > 1 else 0.0
        if best < HIGH_MODE_MIN_CONFIDENCE or best < HIGH_MODE_MIN_MARGIN * runner_up:
            return UNDETERMINED_LANGUAGE
        return self._codes.get(values[0].language, UNDETERMINED_LANGUAGE)

    def keywords(self, text: str, language: str = "en") -> typing.List[str]:
        cleaned = strip_placeholders(text)[:MAX_ANALYSED_CHARS].strip()
        lan = language[:2] if language and language != UNDETERMINED_LANGUAGE else "en"
        return list(self._keywords_cached(cleaned, lan))

    def _keywords(self, cleaned: str, lan: str) -> typing.Tuple[str, ...]:
        if len(_LETTER.findall(cleaned)) < 3:
            return ()
        return tuple(rake_keywords(cleaned, _stopwords(lan), self.max_keywords))

    def topics(self, user_text: str, response_text: str = "") -> typing.List[str]:
        """``taxonomy.detect(user_text, response_text)``, from per-text
        phrase counts so a repeated message or answer is matched once."""
        return self.taxonomy.rank(self.taxonomy.combine(
            self._topic_counts_cached(user_text or ""),
            self._topic_counts_cached(response_text or "")))

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
        language = (self._language_cached(user[:LANGUAGE_MAX_CHARS]) if has_user
                    else UNDETERMINED_LANGUAGE)
        response_language = self._language_cached(response[:LANGUAGE_MAX_CHARS])
        topics = self.topics(user[:MAX_ANALYSED_CHARS], response[:MAX_ANALYSED_CHARS])
        keywords = self.keywords(user, language) if has_user else ()
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
