"""Enrichment and scoring of frontend events: the ``frontend_analytics`` columns.

``enrich_frontend_event(event, config)`` is pure and deterministic: it returns
a copy of the (parsed, redacted) event plus the columns of
``schemas.tables.FRONTEND_ANALYTICS``. ``EnrichFrontendEvents`` wraps it; an
exception routes the event to ``failed`` (stage ``enrich``) instead of
failing the bundle.

Rules live in ``transforms/data/frontend_rules.yaml`` (page categories, event
types per funnel stage, referrer host lists); ``EnrichmentConfig()`` loads it.

Derived columns
---------------
device_type / browser / os
    ``ua-parser`` (1.x) families; device type from them: ``bot`` (spider
    device or bot-like UA), ``tablet`` (iPad, Android without "Mobile",
    "Tablet" in the UA), ``mobile`` (iOS/Android/"Mobi"), ``desktop``
    (Windows, macOS, Linux, ChromeOS), else ``other``; ``unknown`` without a
    UA. Results are cached per UA string in a bounded LRU (UAs repeat).
page_category
    first YAML rule whose regex matches the URL path (or host).
referrer_source
    ``paid`` (paid utm_medium or an ad click id), ``email``, ``social``,
    ``organic_search`` (by utm_medium first, then by referrer host),
    ``direct`` (no referrer), ``internal`` (same site), else ``referral``.
conversion_stage
    funnel ``page_view(1) < widget_open(2) < user_message(3) <
    product_interest(4) < conversion(5)``. An event's stage is the highest
    it signals: its event type's stage, or ``product_interest`` when it
    happens on a high-intent page (pricing, product, checkout, ...).
event_stage
    the stage of the event type alone (``message_sent`` -> user_message even
    on the pricing page); the session aggregate counts messages, widget opens
    and conversions by it.
engagement_score (0-100)::

        stage points   page_view 10, widget_open 25, user_message 40,
                       product_interest 45, conversion 60
      + time points    20 * min(time_on_page, 300 s) / 300
      + message points 10 * min(message_length, 200) / 200
      + element points  5 if the event names an element (id or coordinates)
      + page points     5 if the page category is high-intent
      rounded half-up, clamped to 0..100 (the maximum sums to exactly 100)

quality_score (0-100): 100 minus a penalty per missing/invalid field,
    each recorded as a warning in ``transformation_metadata``::

        page_url missing 20 | not http(s) 10      user_agent missing 15
        user_agent unparseable 5                  unknown event_type 10
        user_id missing 5                         screen_resolution missing or not WxH 5
        viewport_size missing or not WxH 5        country missing/unrecognised 5
        timezone missing 5                        widget_id missing 5
        interaction_type missing 5
        clamped to 0..100

user_segment (from this event's own signals; no cross-event state here -
    the session aggregate sees the whole visit)::

        converted     stage is conversion
        high_intent   stage is product_interest
        engaged       stage is widget_open or user_message,
                      or engagement_score >= 40, or time_on_page >= 60 s
        new_visitor   otherwise (a browsing visitor with no intent signal)
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import pathlib
import re
import json
import typing
import urllib.parse

import apache_beam as beam
import yaml
from apache_beam.metrics import Metrics

from schemas.records import PIPELINE_VERSION
from schemas.records import failed_from_event
from transforms.batches import MapBatchMixin

__all__ = [
    "EnrichmentConfig",
    "EnrichFrontendEvents",
    "enrich_frontend_event",
    "parse_user_agent",
    "STAGES",
    "STAGE_RANK",
    "DEFAULT_RULES_PATH",
]

DEFAULT_RULES_PATH = pathlib.Path(__file__).parent / "data" / "frontend_rules.yaml"
TRANSFORMER_VERSION = f"frontend_enrich/{PIPELINE_VERSION}"

STAGES = ("page_view", "widget_open", "user_message", "product_interest", "conversion")
STAGE_RANK = {stage: i + 1 for i, stage in enumerate(STAGES)}
STAGE_POINTS = {"page_view": 10, "widget_open": 25, "user_message": 40,
                "product_interest": 45, "conversion": 60}
TIME_CAP_SECONDS = 300.0  # 5 minutes on a page earns the full time points
MESSAGE_CAP_CHARS = 200.0
UA_CACHE_SIZE = 4096  # distinct UAs in a day's traffic fit; misses cost ~1 ms

_SIZE = re.compile(r"^\s*\d{1,5}\s*[xX×]\s*\d{1,5}\s*$")

# Names sent instead of ISO 3166 codes by some geo lookups (column is 8 chars).
_COUNTRY_NAMES = {
    "united states": "US", "united states of america": "US", "usa": "US",
    "united kingdom": "GB", "great britain": "GB", "england": "GB", "uk": "GB",
    "germany": "DE", "deutschland": "DE", "france": "FR", "spain": "ES",
    "italy": "IT", "netherlands": "NL", "canada": "CA", "australia": "AU",
    "india": "IN", "japan": "JP", "brazil": "BR", "mexico": "MX",
    "ireland": "IE", "sweden": "SE", "switzerland": "CH", "china": "CN",
    "singapore": "SG", "poland": "PL", "portugal": "PT", "belgium": "BE",
    "austria": "AT", "norway": "NO", "denmark": "DK", "finland": "FI",
    "new zealand": "NZ", "south africa": "ZA", "israel": "IL",
}


def _norm_type(value: str) -> str:
    return value.strip().lower().replace(".", "_").replace("-", "_").replace(" ", "_")


@dataclasses.dataclass(frozen=True)
class EnrichmentConfig:
    """Rules for ``enrich_frontend_event``; ``EnrichmentConfig()`` loads the bundled YAML."""

    rules_path: typing.Optional[str] = None
    rules: typing.Optional[dict] = None  # overrides the file (tests, embedders)
    transformer_version: str = TRANSFORMER_VERSION

    def __post_init__(self):
        rules = self.rules
        if rules is None:
            path = pathlib.Path(self.rules_path) if self.rules_path else DEFAULT_RULES_PATH
            with open(path, encoding="utf-8") as fh:
                rules = yaml.safe_load(fh)
        page_rules = []
        for rule in rules.get("page_categories", []):
            if "category" not in rule or not ("path" in rule or "host" in rule):
                raise ValueError(f"page category rule needs category and path/host: {rule}")
            page_rules.append((
                rule["category"],
                re.compile(rule["path"]) if "path" in rule else None,
                re.compile(rule["host"]) if "host" in rule else None,
            ))
        stage_of = {}
        for stage, types in (rules.get("event_stages") or {}).items():
            if stage not in STAGE_RANK:
                raise ValueError(f"unknown funnel stage {stage!r} in rules")
            for t in types:
                stage_of[_norm_type(t)] = stage
        known = set(stage_of) | {"page_view", "click", "scroll", "widget_close",
                                 "widget_closed", "page_leave", "form_start", "error"}
        set_ = object.__setattr__  # frozen dataclass: derived, read-only fields
        set_(self, "_page_rules", tuple(page_rules))
        set_(self, "_url_cache", {})
        set_(self, "_referrer_cache", {})
        set_(self, "_type_cache", {})
        set_(self, "_default_category", rules.get("default_page_category", "other"))
        set_(self, "_high_intent", frozenset(rules.get("high_intent_categories", ())))
        set_(self, "_stage_of", stage_of)
        set_(self, "_known_types", frozenset(known))
        for key in ("search_hosts", "social_hosts", "email_hosts"):
            set_(self, "_" + key, tuple(h.lower() for h in rules.get(key, ())))
        for key in ("paid_mediums", "email_mediums", "social_mediums", "search_mediums",
                    "paid_click_ids"):
            set_(self, "_" + key, frozenset(m.lower() for m in rules.get(key, ())))

    # -- rule lookups ----------------------------------------------------------
    def page_category(self, host: str, path: str) -> str:
        path = path.lower() or "/"
        for category, path_re, host_re in self._page_rules:
            if path_re is not None and not path_re.search(path):
                continue
            if host_re is not None and not host_re.search(host):
                continue
            return category
        return self._default_category

    def is_high_intent(self, category: str) -> bool:
        return category in self._high_intent

    def stage_of_type(self, event_type: str) -> str:
        return self._type_info(event_type)[0]

    def is_known_type(self, event_type: str) -> bool:
        return self._type_info(event_type)[1]

    def _type_info(self, event_type: str) -> typing.Tuple[str, bool]:
        info = self._type_cache.get(event_type)
        if info is None:
            norm = _norm_type(event_type)
            info = (self._stage_of.get(norm, "page_view"), norm in self._known_types)
            if len(self._type_cache) >= 4096:
                self._type_cache.clear()
            self._type_cache[event_type] = info
        return info


# -- user agent ----------------------------------------------------------------
# Case-sensitive on purpose: "CUBOT" (a phone brand) is not a bot, "Googlebot" is.
_BOT = re.compile(r"[a-z]bot\b|\bbot\b|Bot\b|[Cc]rawl|[Ss]pider|Slurp|Headless|"
                  r"^curl/|^Wget/|^python-requests|HttpClient|^Go-http-client")
_DESKTOP_OS = ("Windows", "Mac OS X", "Linux", "Ubuntu", "Chrome OS", "Fedora",
               "Debian", "FreeBSD", "macOS")


@functools.lru_cache(maxsize=UA_CACHE_SIZE)
def parse_user_agent(ua: str) -> typing.Tuple[str, str, str]:
    """(device_type, browser, os) for a UA string; cached (UAs repeat heavily)."""
    import ua_parser  # deferred: its lazy global parser loads on first use

    result = ua_parser.parse(ua)
    browser = result.user_agent.family if result.user_agent else "Other"
    os_family = result.os.family if result.os else "Other"
    device = result.device.family if result.device else None
    brand = result.device.brand if result.device else None
    if device == "Spider" or _BOT.search(ua):
        device_type = "bot"
    elif (device == "iPad" or "Tablet" in ua or (brand or "").endswith("Tablet")
          or (os_family == "Android" and "Mobile" not in ua)):
        device_type = "tablet"
    elif "Mobi" in ua or os_family in ("iOS", "Android") or device in ("iPhone", "iPod"):
        device_type = "mobile"
    elif os_family in _DESKTOP_OS or os_family.startswith("Windows"):
        device_type = "desktop"
    else:
        device_type = "other"
    return device_type, browser[:50], os_family[:50]


# -- helpers --------------------------------------------------------------------
_STEPS = ("parse", "user_agent", "page_category", "attribution", "conversion_stage",
          "engagement_score", "quality_score", "user_segment")
_STEPS_REDACTED = _STEPS[:1] + ("pii_redaction",) + _STEPS[1:]
_ISO_SECONDS: typing.Dict[int, str] = {}


def _iso_utc(ms: int) -> str:
    """ISO-8601 UTC with milliseconds; the per-second prefix is cached
    (a stream has many events per second)."""
    seconds, millis = divmod(int(ms), 1000)
    prefix = _ISO_SECONDS.get(seconds)
    if prefix is None:
        if len(_ISO_SECONDS) >= 4096:
            _ISO_SECONDS.clear()
        prefix = _dt.datetime.fromtimestamp(seconds, tz=_dt.timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%S")
        _ISO_SECONDS[seconds] = prefix
    return f"{prefix}.{millis:03d}+00:00"


def _host_matches(host: str, patterns) -> bool:
    for p in patterns:
        if p.endswith("."):  # "google." matches google.com, google.co.uk, ...
            if host.startswith(p) or ("." + p) in host:
                return True
        elif host == p or host.endswith("." + p):
            return True
    return False


def _site(host: str) -> str:
    """Crude registrable domain (last two labels, three for co.uk-like)."""
    parts = host.split(".")
    if len(parts) >= 3 and len(parts[-1]) == 2 and parts[-2] in ("co", "com", "org", "net", "ac", "gov"):
        return ".".join(parts[-3:])
    return ".".join(parts[-2:])


def _host(url: str) -> str:
    try:
        host = urllib.parse.urlsplit(url).hostname or ""
    except ValueError:
        return ""
    return host[4:] if host.startswith("www.") else host


class _UrlInfo(typing.NamedTuple):
    scheme: str
    host: str
    category: typing.Optional[str]
    utm_source: typing.Optional[str]
    utm_medium: typing.Optional[str]
    utm_campaign: typing.Optional[str]
    paid_click: bool


_NO_URL = _UrlInfo("", "", None, None, None, None, False)
URL_CACHE_SIZE = 8192


def _url_info(config: EnrichmentConfig, page_url: str) -> _UrlInfo:
    """Host, category and UTM parameters of a page URL (pages repeat: cached)."""
    if not page_url:
        return _NO_URL
    cache = config._url_cache
    info = cache.get(page_url)
    if info is not None:
        return info
    try:
        parts = urllib.parse.urlsplit(page_url)
        host = (parts.hostname or "").removeprefix("www.")
    except ValueError:  # e.g. an unbalanced IPv6 bracket: scored, not fatal
        return _NO_URL._replace(scheme="invalid")
    params = (urllib.parse.parse_qs(parts.query, keep_blank_values=False)
              if parts.query else {})

    def first(name, limit):
        values = params.get(name)
        return values[0].strip()[:limit] if values else None

    info = _UrlInfo(
        scheme=parts.scheme.lower(),
        host=host,
        category=config.page_category(host, parts.path),
        utm_source=first("utm_source", 100),
        utm_medium=first("utm_medium", 100),
        utm_campaign=first("utm_campaign", 200),
        paid_click=any(k in params for k in config._paid_click_ids),
    )
    if len(cache) >= URL_CACHE_SIZE:
        cache.clear()  # crude bound; refills from the hot set within a bundle
    cache[page_url] = info
    return info


def _attribution(config: EnrichmentConfig, referrer, url: _UrlInfo) -> str:
    """Cached per (referrer, page host, medium, ad click): all repeat heavily."""
    key = (referrer, url.host, url.utm_medium, url.paid_click)
    cache = config._referrer_cache
    source = cache.get(key)
    if source is None:
        source = _attribution_uncached(config, referrer, url)
        if len(cache) >= URL_CACHE_SIZE:
            cache.clear()
        cache[key] = source
    return source


def _attribution_uncached(config: EnrichmentConfig, referrer, url: _UrlInfo) -> str:
    medium = (url.utm_medium or "").lower()
    if medium in config._paid_mediums or url.paid_click:
        return "paid"
    if medium in config._email_mediums:
        return "email"
    if medium in config._social_mediums:
        return "social"
    if medium in config._search_mediums:
        return "organic_search"
    if not referrer:
        return "direct"
    ref_host = _host(referrer) if "//" in referrer else ""
    if not ref_host:
        # A relative referrer can only come from the same site.
        return "internal" if referrer.startswith("/") else "direct"
    page_host = url.host
    if page_host and (ref_host == page_host or _site(ref_host) == _site(page_host)):
        return "internal"
    if _host_matches(ref_host, config._email_hosts):
        return "email"
    if _host_matches(ref_host, config._search_hosts):
        return "organic_search"
    if _host_matches(ref_host, config._social_hosts):
        return "social"
    return "referral"


def _country(value) -> typing.Optional[str]:
    if not value:
        return None
    text = value.strip()
    if 2 <= len(text) <= 3 and text.isalpha():
        return text.upper()
    return _COUNTRY_NAMES.get(text.lower())


def _round_half_up(x: float) -> int:
    return int(x + 0.5) if x >= 0 else -int(-x + 0.5)


def _clamp(x: int) -> int:
    return 0 if x < 0 else 100 if x > 100 else x


def enrich_frontend_event(event: dict, config: EnrichmentConfig) -> dict:
    """The event plus the ``frontend_analytics`` columns (see the module docstring)."""
    out = dict(event)
    warnings: typing.List[str] = []

    # User agent.
    ua = event.get("user_agent")
    if ua:
        device_type, browser, os_family = parse_user_agent(ua)
    else:
        device_type, browser, os_family = "unknown", None, None

    # Page URL: host, category, UTM parameters (cached per URL), attribution.
    page_url = event.get("page_url") or ""
    url = _url_info(config, page_url)
    category = url.category
    referrer_source = _attribution(config, event.get("referrer"), url)

    # Funnel stage.
    event_type = event["event_type"]
    stage = type_stage = config.stage_of_type(event_type)
    if category is not None and config.is_high_intent(category) and \
            STAGE_RANK[stage] < STAGE_RANK["product_interest"]:
        stage = "product_interest"

    # Engagement score (formula in the module docstring).
    time_on_page = event.get("time_on_page")
    message_length = event.get("message_length")
    score = float(STAGE_POINTS[stage])
    if time_on_page:
        score += 20.0 * min(float(time_on_page), TIME_CAP_SECONDS) / TIME_CAP_SECONDS
    if message_length:
        score += 10.0 * min(float(message_length), MESSAGE_CAP_CHARS) / MESSAGE_CAP_CHARS
    if event.get("element_id") or event.get("click_coordinates"):
        score += 5.0
    if category is not None and config.is_high_intent(category):
        score += 5.0
    engagement = _clamp(_round_half_up(score))

    # Quality score (penalties in the module docstring).
    quality = 100
    if not page_url:
        quality -= 20
        warnings.append("page_url missing")
    elif url.scheme not in ("http", "https"):
        quality -= 10
        warnings.append("page_url is not an http(s) URL")
    if not ua:
        quality -= 15
        warnings.append("user_agent missing")
    elif browser == "Other" and os_family == "Other":
        quality -= 5
        warnings.append("user_agent not recognised")
    if not config.is_known_type(event_type):
        quality -= 10
        warnings.append(f"unknown event_type {event_type[:50]!r}")
    if not event.get("user_id"):
        quality -= 5
        warnings.append("user_id missing")
    for name in ("screen_resolution", "viewport_size"):
        value = event.get(name)
        if not value or not _SIZE.match(value):
            quality -= 5
            warnings.append(f"{name} missing or not WxH")
    country = _country(event.get("country"))
    if country is None:
        quality -= 5
        warnings.append("country missing or unrecognised")
    for name in ("timezone", "widget_id", "interaction_type"):
        if not event.get(name):
            quality -= 5
            warnings.append(f"{name} missing")
    quality = _clamp(quality)

    # Segment.
    if stage == "conversion":
        segment = "converted"
    elif stage == "product_interest":
        segment = "high_intent"
    elif (stage in ("widget_open", "user_message") or engagement >= 40
          or (time_on_page or 0) >= 60):
        segment = "engaged"
    else:
        segment = "new_visitor"

    metadata = {
        "transformer_version": config.transformer_version,
        "steps_applied": list(_STEPS_REDACTED if "_pii" in event else _STEPS),
        "warnings": warnings,
    }
    if event.get("_pii"):
        metadata["pii_redacted"] = dict(event["_pii"])

    out.update(
        page_category=category,
        device_type=device_type,
        browser=browser,
        os=os_family,
        user_segment=segment,
        engagement_score=engagement,
        conversion_stage=stage,
        event_stage=type_stage,  # what the event itself is (session counts use it)
        quality_score=quality,
        transformation_metadata=metadata,
        referrer_source=referrer_source,
        utm_source=url.utm_source,
        utm_medium=url.utm_medium,
        utm_campaign=url.utm_campaign,
        country=country,
        timestamp=_iso_utc(event["timestamp_ms"]),
    )
    extra = event.get("extra")
    if extra:
        # The archive's extra_json (frontend_enriched_v1): the unknown payload
        # fields, which an archive re-run sends again.
        out["extra_json"] = json.dumps(extra, sort_keys=True, default=str, ensure_ascii=False)
    return out


class _EnrichFn(beam.DoFn):
    def __init__(self, config: EnrichmentConfig, pipeline: str):
        self._config = config
        self._pipeline = pipeline
        self._enriched = Metrics.counter(pipeline, "enriched")
        self._failed = Metrics.counter(pipeline, "enrich_failed")

    def _one(self, event: dict):
        """(enriched event, None) or (None, FailedRecord)."""
        try:
            out = enrich_frontend_event(event, self._config)
        except Exception as exc:  # noqa: BLE001 - route to dead letters, never crash
            self._failed.inc()
            return None, failed_from_event(event, exc, "enrich", self._pipeline)
        self._enriched.inc()
        return out, None

    def process(self, event: dict):
        out, failed = self._one(event)
        if failed is not None:
            yield beam.pvalue.TaggedOutput(EnrichFrontendEvents.FAILED, failed)
        else:
            yield out


class _EnrichBatchFn(MapBatchMixin, _EnrichFn):
    """A list of events -> the list of enriched events (+ one failure per
    event that could not be enriched)."""


class EnrichFrontendEvents(beam.PTransform):
    """Event dicts -> ``valid`` (enriched, ``frontend_analytics`` columns added)
    and ``failed`` (``FailedRecord``, stage ``enrich``). ``batched=True``:
    elements are lists of events (transforms/batches.py)."""

    VALID = "valid"
    FAILED = "failed"

    def __init__(self, config: typing.Optional[EnrichmentConfig] = None,
                 pipeline: str = "frontend", batched: bool = False):
        super().__init__()
        self._config = config if config is not None else EnrichmentConfig()
        self._pipeline = pipeline
        self._batched = batched

    def dofn(self) -> beam.DoFn:
        """The per-element DoFn ``expand`` applies (unbatched), for running
        the step in-process: a replay's dry run (beam_pipelines/replay.py)."""
        return _EnrichFn(self._config, self._pipeline)

    def expand(self, events):
        fn_class = _EnrichBatchFn if self._batched else _EnrichFn
        return events | "ScoreAndAttribute" >> beam.ParDo(
            fn_class(self._config, self._pipeline)
        ).with_outputs(self.FAILED, main=self.VALID)
