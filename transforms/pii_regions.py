"""Where a phone number was probably written: region hints and cue words.

A phone number without ``+`` is only a number in the national plan of some
region: ``030 901820`` is Berlin for a visitor from Germany and nothing at
all in the US plan. ``region_hints`` turns what an event says about its
author (``country``, IANA ``timezone``, browser language such as ``de-DE``,
the language detected in the text) into an ordered tuple of phone regions
to try before the redactor's default one.

``PHONE_CUE`` finds the words people put in front of a phone number
("phone", "call me at", "Tel.", "Handy", "téléphone", "телефон", "電話" ...)
in the languages the text-agent pipeline detects
(``transforms.text_agent_content.LANGUAGES``). A phone-shaped digit group
right after such a word is a phone even when ``phonenumbers`` calls the
number unassigned (``555 0132``, ``0123 456789``).

Everything here is pure and cached; nothing is read from the environment.
"""
from __future__ import annotations

import functools
import re
import typing

import phonenumbers

__all__ = [
    "LANGUAGE_REGIONS",
    "LANGUAGE_FIELDS",
    "PHONE_CUE",
    "cue_regions",
    "region_hints",
    "record_region_hints",
    "text_region_hints",
]

# ISO 639-1 code -> the regions whose national plans its writers most likely
# use, most likely first. The 16 languages of text_agent_content.LANGUAGES;
# at most three each, because every extra region is one more plan a
# look-alike digit group could happen to fit.
LANGUAGE_REGIONS: typing.Dict[str, typing.Tuple[str, ...]] = {
    "en": ("US", "GB", "IN"), "es": ("ES", "MX", "AR"), "fr": ("FR", "BE", "CA"),
    "de": ("DE", "AT", "CH"), "pt": ("BR", "PT"), "it": ("IT",), "nl": ("NL", "BE"),
    "pl": ("PL",), "sv": ("SE",), "tr": ("TR",), "ru": ("RU",),
    "ar": ("SA", "AE", "EG"), "hi": ("IN",), "ja": ("JP",), "zh": ("CN", "TW", "HK"),
    "ko": ("KR",),
}
# Payload keys (top level, ``extra`` or ``conversation_context``) that carry
# the browser's or the user's language (``navigator.language``: "de-DE").
LANGUAGE_FIELDS = ("language", "browser_language", "locale", "lang",
                   "navigator_language", "accept_language", "user_language")
COUNTRY_FIELDS = ("country", "country_code", "geo_country")
TIMEZONE_FIELDS = ("timezone", "time_zone", "tz")
MAX_HINT_REGIONS = 5

_SUPPORTED = frozenset(phonenumbers.SUPPORTED_REGIONS)


@functools.lru_cache(maxsize=1)
def _timezone_countries() -> typing.Dict[str, str]:
    """IANA zone -> ISO country (zone.tab via pytz, a Beam dependency)."""
    import pytz

    out: typing.Dict[str, str] = {}
    for country, zones in pytz.country_timezones.items():
        for zone in zones:
            out.setdefault(zone, country.upper())
    return out


@functools.lru_cache(maxsize=1)
def _country_codes_by_name() -> typing.Dict[str, str]:
    import pytz

    return {name.lower(): code.upper() for code, name in pytz.country_names.items()}


def _country_region(value: str) -> typing.Optional[str]:
    value = value.strip()
    if len(value) == 2:
        code = value.upper()
        return "GB" if code == "UK" else code
    return _country_codes_by_name().get(value.lower())


def _language_regions(value: str) -> typing.List[str]:
    """"de-DE" -> [DE, DE, AT, CH]; "pt_BR" -> [BR, BR, PT]; "zh-Hant-TW" ->
    [TW, CN, TW, HK]; "fr;q=0.9" -> [FR, BE, CA]."""
    first = value.split(",")[0].split(";")[0].strip().replace("_", "-")
    parts = [p for p in first.split("-") if p]
    if not parts:
        return []
    out = [p.upper() for p in parts[1:] if len(p) == 2 and p.isalpha()]
    out.extend(LANGUAGE_REGIONS.get(parts[0].lower(), ()))
    return out


@functools.lru_cache(maxsize=4096)
def region_hints(country: typing.Optional[str] = None,
                 timezone: typing.Optional[str] = None,
                 languages: typing.Tuple[str, ...] = ()) -> typing.Tuple[str, ...]:
    """Phone regions to try, most specific first: the country, the
    timezone's country, then each language's regions (its own subtag first).
    Unknown or unsupported values are skipped; duplicates removed."""
    ordered: typing.List[str] = []
    if country:
        region = _country_region(country)
        if region:
            ordered.append(region)
    if timezone:
        region = _timezone_countries().get(timezone.strip())
        if region:
            ordered.append(region)
    for language in languages:
        if language:
            ordered.extend(_language_regions(language))
    out: typing.List[str] = []
    for region in ordered:
        if region in _SUPPORTED and region not in out:
            out.append(region)
    return tuple(out[:MAX_HINT_REGIONS])


def _str_or_none(value) -> typing.Optional[str]:
    return value if isinstance(value, str) and value else None


def _first(sources, names) -> typing.Optional[str]:
    for source in sources:
        for name in names:
            value = _str_or_none(source.get(name))
            if value:
                return value
    return None


def record_region_hints(record: dict,
                        nested: typing.Tuple[str, ...] = ("extra", "conversation_context"),
                        detected_language: typing.Optional[str] = None
                        ) -> typing.Tuple[str, ...]:
    """``region_hints`` from an event dict: its own ``country`` /
    ``timezone`` / language fields, else the same names inside ``nested``
    dicts (the unknown fields a client sent), then ``detected_language``."""
    sources = [record]
    for name in nested:
        value = record.get(name)
        if isinstance(value, dict) and value:
            sources.append(value)
    country = _first(sources, COUNTRY_FIELDS)
    timezone = _first(sources, TIMEZONE_FIELDS)
    language = _first(sources, LANGUAGE_FIELDS)
    languages = tuple(x for x in (language, detected_language) if x)
    if country is None and timezone is None and not languages:
        return ()
    return region_hints(country, timezone, languages)


_RAW_HINT = re.compile(
    r'"(?P<key>' + "|".join(COUNTRY_FIELDS + TIMEZONE_FIELDS + LANGUAGE_FIELDS)
    + r')"\s*:\s*"(?P<value>[^"\\]{1,64})"')


def text_region_hints(raw: str) -> typing.Tuple[str, ...]:
    """``region_hints`` from a JSON-ish text that may not parse (a dead
    letter's raw payload): the first ``"country": "..."``, ``"timezone"``
    and language pairs found in it."""
    if not raw or '"' not in raw:
        return ()
    found: typing.Dict[str, str] = {}
    for m in _RAW_HINT.finditer(raw):
        key = m.group("key")
        group = ("country" if key in COUNTRY_FIELDS else
                 "timezone" if key in TIMEZONE_FIELDS else "language")
        found.setdefault(group, m.group("value"))
    if not found:
        return ()
    language = found.get("language")
    return region_hints(found.get("country"), found.get("timezone"),
                        (language,) if language else ())


# --- phone cue words -----------------------------------------------------------
# Per language (ISO 639-1), the words written right before a phone number.
# Latin and Cyrillic ones match as whole words, so "tel" fires neither inside
# "hotel" nor in "Tell"; a word several languages share maps to all of them.
CUE_WORDS: typing.Dict[str, typing.Tuple[str, ...]] = {
    "en": ("phone", "phone no", "telephone", "tel", "mobile", "mob", "cell", "cellphone",
           "call", "call me", "ring me", "text me", "sms", "whatsapp", "fax", "my number",
           "contact number", "reach me", "landline"),
    "es": ("teléfono", "telefono", "tfno", "tlf", "móvil", "movil", "celular", "cel",
           "llámame", "llamame", "llámanos", "mi número", "mi numero", "whatsapp"),
    "fr": ("téléphone", "telephone", "tél", "tel", "portable", "mobile", "appelez-moi",
           "appelle-moi", "appelez", "mon numéro", "mon numero", "joignable au"),
    "de": ("telefon", "telefonnummer", "tel", "handy", "handynummer", "mobil", "mobilnummer",
           "rufnummer", "festnetz", "ruf mich an", "rufen sie mich an", "meine nummer",
           "erreichbar unter"),
    "pt": ("telefone", "tel", "celular", "telemóvel", "telemovel", "ligue", "ligue para",
           "liga-me", "meu número", "meu numero", "zap", "whatsapp"),
    "it": ("telefono", "tel", "cellulare", "cell", "chiamami", "chiamatemi", "il mio numero"),
    "nl": ("telefoon", "telefoonnummer", "tel", "mobiel", "bel me", "bel mij", "mijn nummer"),
    "pl": ("telefon", "telefonu", "tel", "komórka", "komorka", "komórkowy", "zadzwoń",
           "zadzwon", "mój numer", "moj numer", "tel. kom"),
    "sv": ("telefon", "tel", "mobil", "mobilnummer", "mobilnr", "ring mig", "mitt nummer"),
    "tr": ("telefon", "tel", "cep", "cep telefonu", "beni ara", "arayın", "numaram",
           "numaramı"),
    "ru": ("телефон", "тел", "моб", "мобильный", "позвоните", "звоните", "мой номер",
           "номер телефона"),
}
# Scripts written without spaces, or with clitics attached to the word
# (Arabic "وجوالي"): matched anywhere in the text.
CUE_FRAGMENTS: typing.Dict[str, typing.Tuple[str, ...]] = {
    "ar": ("هاتف", "جوال", "موبايل", "رقمي", "اتصل", "واتساب", "تلفون"),
    "hi": ("फ़ोन", "फोन", "मोबाइल", "नंबर", "कॉल"),
    "ja": ("電話", "携帯", "連絡先", "でんわ", "ＴＥＬ"),
    "zh": ("电话", "手机", "手機", "联系", "號碼", "号码", "微信"),
    "ko": ("전화", "휴대폰", "핸드폰", "연락처", "번호"),
}


def _cue_languages() -> typing.Dict[str, typing.Tuple[str, ...]]:
    out: typing.Dict[str, typing.List[str]] = {}
    for table in (CUE_WORDS, CUE_FRAGMENTS):
        for language, words in table.items():
            for word in words:
                out.setdefault(word.lower(), []).append(language)
    return {word: tuple(languages) for word, languages in out.items()}


_CUE_LANGUAGES = _cue_languages()
_SPACES = re.compile(r"\s+")


def _cue_pattern() -> "re.Pattern[str]":
    words = sorted({w for ws in CUE_WORDS.values() for w in ws}, key=len, reverse=True)
    fragments = sorted({f for fs in CUE_FRAGMENTS.values() for f in fs}, key=len, reverse=True)
    word_alt = "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in words)
    frag_alt = "|".join(re.escape(f) for f in fragments)
    return re.compile(rf"(?<!\w)(?:{word_alt})\.?(?!\w)|(?:{frag_alt})", re.IGNORECASE)


PHONE_CUE = _cue_pattern()


def cue_regions(cue: str) -> typing.Tuple[str, ...]:
    """The phone regions of the language(s) a matched cue word belongs to
    ("Handy" -> DE, AT, CH; "tel" -> all the languages that write it)."""
    word = _SPACES.sub(" ", cue.lower()).rstrip(".")
    return region_hints(languages=_CUE_LANGUAGES.get(word, ()))
