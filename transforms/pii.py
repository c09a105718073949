"""PII redaction with keyed tokens: the same value joins across events, unreadably.

``PiiRedactor`` (pure) finds PII in free text and replaces each value with a
token ``[KIND:hhhhhhhhhh]`` where ``hhhhhhhhhh`` is the first 10 hex digits of
HMAC-SHA256(secret, "kind:normalised value"). Without the secret the token
cannot be reversed or brute-forced from a dictionary of emails; with the same
secret the same person gets the same token everywhere.

Detected (kind -> normalised form):

==========  ===================================================  =============
kind        rule                                                 normalised
==========  ===================================================  =============
email       local@domain.tld, also ``%40`` percent-encoded      lower case
iban        2 letters + 2 digits + 11..30 alphanumerics,         compact, upper
            length per country where known, ISO 7064 mod 97
card        13-19 digits, bare or grouped 4-4-4-4 / 4-6-5 by     digits only
            spaces or dashes, first digit 2-6 (issuer ranges),
            not glued to a word (``ORD-4111...``), Luhn checksum
ssn         ddd-dd-dddd (not 000/666/9xx, 00, 0000), or 9        digits only
            digits after "SSN"/"social security"
ipv6        colon groups that ``ipaddress`` accepts, >= 1 digit  compressed
ipv4        four octets 0-255, no leading zeros, first octet     dotted quad
            not 0, not part of a longer dotted number, not
            after a letter (``v1.2.3.4``) and not a version (below)
phone       ``phonenumbers.PhoneNumberMatcher`` (Leniency.       E.164
            STRICT_GROUPING: a valid number whose digit groups
            match the region's formatting, so ``2024-000123`` is
            not a phone; ``default_region``), run only on runs
            of >= 7 digits
            (spaces . - ( ) / allowed) not glued to a preceding
            word, ``.``, ``-``, ``/`` or ``#`` and not date-shaped
==========  ===================================================  =============

What must survive (tests/unit/test_pii.py lists the cases), and how:

* Spans that look like PII but are not are *protected* before the ambiguous
  detectors (ipv4, phone) run: ISO dates and datetimes, d/m/y dates, times,
  UUIDs, long hex ids, epoch timestamps (10/13 digits starting with 1),
  prices (currency symbol or code), screen sizes (``1920x1080``), order-like
  ids (letters + separator + digits, ``ORD-123456789``, ``sess_abc123``),
  bare digit runs of 11+ digits (ids; an international phone is written with
  ``+``), tokens already emitted (so redaction is idempotent) and versions.
* IPv4 versus version strings: a dotted quad is an address only if every
  octet is 0-255 without leading zeros and the first is not 0. It is a
  version, not an address, when a letter or ``/`` after a product name
  precedes it (``v1.2.3.4``, ``Chrome/1.2.3.4``), a word such as
  ``version``/``ver``/``build``/``release``/``rev`` precedes it, or it has a
  fifth part (``1.2.3.4.5``). A bare ``1.2.3.4`` in text is treated as an
  address: leaking an address is worse than tokenising a version.
* Cards must start with 2-6 so 13-digit epoch milliseconds never match; a
  16-digit order number that happens to pass Luhn (1 in 10) is tokenised -
  an accepted false positive.

URLs (``page_url``, ``referrer``): query and fragment parameters are
percent-decoded one by one, redacted, and re-encoded only if they changed,
so UTM parameters and the rest of the URL stay byte-identical.

Cost: every kind needs an ``@`` or a digit, so text without either returns
at once; the ambiguous kinds (ipv4, phone) collect candidates first and run
the protected-span scan only around them; ``phonenumbers`` (pure Python,
~0.1 ms) only sees runs of >= 7 digits. Results are cached per exact text
(``TEXT_CACHE_SIZE`` entries per redactor, cleared when full) and per phone
chunk, because page URLs, titles and button texts repeat across events. The
caches hold raw text in worker memory only, for the life of the worker.

``token_fields`` are replaced wholesale by ``[TOKEN:...]`` (for identifiers
that are themselves personal). The frontend pipeline tokenises nothing
wholesale: ``user_id`` is the application's pseudonymous id and the join key
with the text-agent and Marketo data (an email used as ``user_id`` would be
caught if ``user_id`` were put in ``text_fields``).
"""
from __future__ import annotations

import collections
import functools
import hmac
import hashlib
import ipaddress
import re
import typing
import urllib.parse

import apache_beam as beam
import phonenumbers
from apache_beam.metrics import Metrics
from phonenumbers import Leniency, PhoneNumberFormat, PhoneNumberMatcher

from schemas.records import failed_from_event

__all__ = [
    "PiiRedactor",
    "RedactPii",
    "PII_KINDS",
    "FRONTEND_TEXT_FIELDS",
    "FRONTEND_TOKEN_FIELDS",
]

PII_KINDS = ("email", "phone", "ipv4", "ipv6", "card", "ssn", "iban", "token")

# Free-text fields of a frontend event searched for PII (the frontend
# pipeline's, and RedactPii's default); the page URL includes its query string.
FRONTEND_TEXT_FIELDS = ("element_text", "page_url", "page_title", "referrer", "element_id",
                        "element_class")
# Fields that identify a person outright: replaced by a keyed token whole.
FRONTEND_TOKEN_FIELDS: typing.Tuple[str, ...] = ()

TEXT_CACHE_SIZE = 16384  # distinct texts cached per worker (~ a few MB)
TOKEN_HEX_DIGITS = 10  # 40 bits: collisions are negligible per person-space

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9._%+-]{1,64}(?:@|%40)"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])"
)
_IPV6_CANDIDATE = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}"
    r"(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{0,4})(?![\w:])"
)
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
_CARD = re.compile(
    r"(?<![\dA-Za-z_])(?<!\d[ -])(?<![A-Za-z][_-])[2-6](?:[ -]?\d){12,18}(?![ -]?\d)")
_SEPARATOR = re.compile(r"[ -]")
_SSN_DASHED = re.compile(
    r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])")
_SSN_CONTEXT = re.compile(
    r"(?i:\bssn\b|social security(?: number| no\.?)?)[\s:#=-]*(?P<bare>\d{9})(?!\d)")
_IPV4 = re.compile(
    r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]\d|\d)\.){3}"
    r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]\d|\d)(?![\w]|\.\d)"
)
# Not after a word char, '.', '-', '/' or '#': digits glued to an id
# (ORD-1234567, /blog/2024/01/15, #1234567) are not phone numbers.
_PHONE_CANDIDATE = re.compile(r"(?<![\w.\-/#])\+?\(?\d[\d \t().\-/]{5,22}\d(?![\w])")
_DATE_LIKE = re.compile(r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}")
_PROTECT_MARGIN = 40  # context a protected form can need around a candidate

_PROTECTED = re.compile(
    "|".join(
        (
            r"\[[A-Z0-9]+:[0-9a-f]{6,64}\]",  # our own tokens
            r"\b[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}\b",
            r"\b\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?",
            r"\b\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}\b",
            r"\b\d{4}/\d{1,2}/\d{1,2}\b",
            r"\b\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?\b",
            r"\b(?=[0-9a-fA-F]{16,}\b)[0-9a-fA-F]*[a-fA-F][0-9a-fA-F]*\b",  # hex ids
            r"\b1\d{9}(?:\d{3})?\b",  # epoch seconds / milliseconds
            r"[$€£¥₹]\s?\d[\d,.\s]*\d|\b\d[\d,.]*\s?(?:USD|EUR|GBP|JPY|CHF|CAD|AUD)\b",
            r"\b\d{2,5}\s?[xX×]\s?\d{2,5}\b",  # screen / viewport sizes
            r"\b[A-Za-z][A-Za-z0-9]*(?:[_-][A-Za-z0-9]+)*[_-]\d[\w-]*",  # ORD-123, sess_1a
            r"\b[vV]\d+(?:\.\d+)+",
            r"(?i:\b(?:version|ver|release|build|rev|firmware|fw)\b\.?)[\s:#=-]*\d+(?:\.\d+)+",
            r"(?<=[A-Za-z])/\d+(?:\.\d+)+",  # product/version tokens
            r"\b\d+(?:\.\d+){4,}\b",  # 5+ dotted parts: a version, not an address
            r"(?<![\d+])\d{11,}(?!\d)",  # bare long digit runs are ids
        )
    )
)

_DIGITS = "0123456789"
_TRIGGER = re.compile(r"[0-9@]")  # '%40' contains digits, so it triggers too
_DROP_DIGITS = str.maketrans("", "", _DIGITS)

# Country -> IBAN length (ISO 13616 registry) for the countries seen most;
# others fall back to the mod-97 check over the whole match.
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AT": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "CH": 21, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "EE": 20, "ES": 24,
    "FI": 18, "FR": 27, "GB": 22, "GR": 27, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IS": 26, "IT": 27, "LI": 21, "LT": 20, "LU": 20, "LV": 21,
    "MC": 27, "MT": 31, "NL": 18, "NO": 15, "PL": 28, "PT": 25, "RO": 24,
    "SA": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TR": 26,
}


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_grouping_ok(raw: str) -> bool:
    """Printed cards group 4-4-4-4(-3) or 4-6-5/4-6-4 (Amex, Diners); other
    groupings (dates, ids like 20240115-000042) are not cards."""
    groups = _SEPARATOR.split(raw)
    if len(groups) == 1:
        return True
    lengths = [len(g) for g in groups]
    if lengths in ([4, 6, 5], [4, 6, 4]):
        return True
    return all(n == 4 for n in lengths[:-1]) and 1 <= lengths[-1] <= 4


def _iban_ok(compact: str) -> bool:
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    numeric = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(numeric) % 97 == 1


PHONE_CACHE_SIZE = 8192


@functools.lru_cache(maxsize=PHONE_CACHE_SIZE)
def _phone_matches(chunk: str, region: str) -> typing.Tuple[typing.Tuple[int, int, str], ...]:
    """Phone numbers in a candidate chunk: (start, end, E.164). phonenumbers is
    pure Python and costs ~0.1 ms per chunk; a visitor's number repeats across
    their events, so results are cached per (chunk, region)."""
    return tuple(
        (m.start, m.end, phonenumbers.format_number(m.number, PhoneNumberFormat.E164))
        for m in PhoneNumberMatcher(chunk, region, leniency=Leniency.STRICT_GROUPING)
    )


class _Spans:
    """Non-overlapping claimed character ranges (few per text: a list is fine)."""

    __slots__ = ("ranges",)

    def __init__(self):
        self.ranges: typing.List[typing.Tuple[int, int]] = []

    def free(self, start: int, end: int) -> bool:
        for s, e in self.ranges:
            if start < e and s < end:
                return False
        return True

    def claim(self, start: int, end: int) -> None:
        self.ranges.append((start, end))


class PiiRedactor:
    """Pure, picklable PII redactor; see the module docstring for the rules.

    ``secret`` keys the token HMAC (>= 16 bytes). ``default_region`` is the
    ISO country whose national phone formats are recognised without ``+``.
    """

    def __init__(self, secret: bytes, default_region: str = "US",
                 token_hex_digits: int = TOKEN_HEX_DIGITS):
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        if not isinstance(secret, (bytes, bytearray)) or len(secret) < 16:
            raise ValueError("secret must be at least 16 bytes")
        if default_region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"unknown phone region {default_region!r}")
        if not 6 <= token_hex_digits <= 64:
            raise ValueError("token_hex_digits must be between 6 and 64")
        self._secret = bytes(secret)  # never logged; tokens are one-way
        self._region = default_region
        self._hex = token_hex_digits
        self._cache: typing.Dict[str, typing.Tuple[str, tuple]] = {}

    # -- tokens -------------------------------------------------------------
    def token(self, kind: str, normalised: str) -> str:
        digest = hmac.new(self._secret, f"{kind}:{normalised}".encode("utf-8"),
                          hashlib.sha256).hexdigest()
        return f"[{kind.upper()}:{digest[:self._hex]}]"

    # -- detection ------------------------------------------------------------
    def _find(self, text: str) -> typing.List[typing.Tuple[int, int, str, str]]:
        """(start, end, kind, normalised) for every PII value in ``text``."""
        found: typing.List[typing.Tuple[int, int, str, str]] = []
        taken = _Spans()
        has_at = "@" in text or "%40" in text
        digits = len(text) - len(text.translate(_DROP_DIGITS))
        if has_at:
            for m in _EMAIL.finditer(text):
                value = urllib.parse.unquote(m.group()).lower()
                found.append((m.start(), m.end(), "email", value))
                taken.claim(m.start(), m.end())
        if digits == 0:
            return found
        if "::" in text or text.count(":") >= 7:  # compressed or full IPv6 form
            for m in _IPV6_CANDIDATE.finditer(text):
                cand = m.group()
                if _TRIGGER.search(cand) is None or not taken.free(m.start(), m.end()):
                    continue
                if "::" not in cand and cand.count(":") != 7 and "." not in cand:
                    continue
                try:
                    addr = ipaddress.IPv6Address(cand)
                except ValueError:
                    continue
                found.append((m.start(), m.end(), "ipv6", addr.compressed))
                taken.claim(m.start(), m.end())
        if digits >= 15:  # the shortest IBAN (Norway) has 15 characters, 11 digits+
            self._find_iban(text, found, taken)
        if digits >= 13:
            for m in _CARD.finditer(text):
                number = m.group().replace(" ", "").replace("-", "")
                if (13 <= len(number) <= 19 and len(set(number)) > 1
                        and _card_grouping_ok(m.group())
                        and _luhn_ok(number) and taken.free(m.start(), m.end())):
                    found.append((m.start(), m.end(), "card", number))
                    taken.claim(m.start(), m.end())
        if digits >= 9:
            self._find_ssn(text, found, taken)
        if digits < 4:
            return found
        # The ambiguous kinds: collect candidates first, and pay for the
        # protected-span scan (the expensive regex) only around them.
        ipv4 = [m for m in _IPV4.finditer(text)] if "." in text else []
        phones = []
        if digits >= 7:
            for m in _PHONE_CANDIDATE.finditer(text):
                chunk = m.group()
                if (len(chunk) - len(chunk.translate(_DROP_DIGITS)) >= 7
                        and _DATE_LIKE.fullmatch(chunk) is None):
                    phones.append(m)
        if not ipv4 and not phones:
            return found
        self._protect_around(text, ipv4 + phones, taken)
        for m in ipv4:
            if m.group().startswith("0") or not taken.free(m.start(), m.end()):
                continue
            found.append((m.start(), m.end(), "ipv4", m.group()))
            taken.claim(m.start(), m.end())
        for m in phones:
            self._phones_in(text, m, found, taken)
        return found

    @staticmethod
    def _protect_around(text, candidates, taken):
        """Claims protected spans near the candidates (a window of
        ``_PROTECT_MARGIN`` characters each side; merged when they overlap)."""
        windows = []
        for m in sorted(candidates, key=lambda m: m.start()):
            lo = max(0, m.start() - _PROTECT_MARGIN)
            hi = min(len(text), m.end() + _PROTECT_MARGIN)
            if windows and lo <= windows[-1][1]:
                windows[-1][1] = max(windows[-1][1], hi)
            else:
                windows.append([lo, hi])
        for lo, hi in windows:
            for p in _PROTECTED.finditer(text, lo, hi):
                taken.claim(p.start(), p.end())

    def _find_ssn(self, text, found, taken):
        spans = [m.span() for m in _SSN_DASHED.finditer(text)]
        lowered = text.lower()
        if "ssn" in lowered or "social security" in lowered:
            spans.extend(m.span("bare") for m in _SSN_CONTEXT.finditer(text))
        for start, end in spans:
            if taken.free(start, end):
                found.append((start, end, "ssn", text[start:end].replace("-", "")))
                taken.claim(start, end)

    def _find_iban(self, text, found, taken):
        for m in _IBAN.finditer(text):
            raw = m.group()
            compact = raw.replace(" ", "")
            expected = _IBAN_LENGTHS.get(compact[:2])
            if expected is not None:
                if len(compact) < expected:
                    continue
                compact = compact[:expected]
            if not _iban_ok(compact):
                continue
            # Map the compact length back onto the original (spaced) span.
            count, end = 0, m.start()
            while count < len(compact):
                if text[end] != " ":
                    count += 1
                end += 1
            if taken.free(m.start(), end):
                found.append((m.start(), end, "iban", compact))
                taken.claim(m.start(), end)

    def _phones_in(self, text, cand, found, taken):
        base, stop = cand.start(), cand.end()
        if all(not taken.free(i, i + 1) for i in range(base, stop) if text[i] in _DIGITS):
            return  # every digit already belongs to a protected span or a finding
        for rel_start, rel_end, e164 in _phone_matches(cand.group(), self._region):
            start, end = base + rel_start, base + rel_end
            if taken.free(start, end):
                found.append((start, end, "phone", e164))
                taken.claim(start, end)

    # -- replacement ------------------------------------------------------------
    def _redact_plain(self, text: str, counts: collections.Counter) -> str:
        found = self._find(text)
        if not found:
            return text
        found.sort()
        out, pos = [], 0
        for start, end, kind, value in found:
            out.append(text[pos:start])
            out.append(self.token(kind, value))
            counts[kind] += 1
            pos = end
        out.append(text[pos:])
        return "".join(out)

    def _redact_params(self, part: str, counts) -> str:
        pieces = part.split("&")
        changed = False
        for i, piece in enumerate(pieces):
            key, sep, value = piece.partition("=")
            if not sep or not value:
                continue
            if _TRIGGER.search(value) is None:
                continue  # no '@', digit or %-escape: nothing to find
            decoded = urllib.parse.unquote_plus(value)
            if _TRIGGER.search(decoded) is None:
                continue
            redacted = self._redact_plain(decoded, counts)
            if redacted != decoded:
                pieces[i] = key + "=" + urllib.parse.quote_plus(redacted, safe="[]:")
                changed = True
        return "&".join(pieces) if changed else part

    def _redact_url(self, text: str, counts) -> str:
        head, hash_sep, fragment = text.partition("#")
        path, q_sep, query = head.partition("?")
        path = self._redact_plain(path, counts)
        if query:
            query = self._redact_params(query, counts)
        if fragment:
            fragment = (self._redact_params(fragment, counts) if "=" in fragment
                        else self._redact_plain(fragment, counts))
        return path + q_sep + query + hash_sep + fragment

    def redact_text(self, text: str) -> typing.Tuple[str, collections.Counter]:
        """``text`` with every PII value replaced by its token, and counts per kind."""
        counts: collections.Counter = collections.Counter()
        if not text or not isinstance(text, str):
            return text, counts
        return self._redact_into(text, counts), counts

    def _redact_into(self, text: str, counts: collections.Counter) -> str:
        if _TRIGGER.search(text) is None:
            return text  # fast path: every kind needs '@' or a digit
        # Page URLs, titles, button texts and referrers repeat across events:
        # the result per exact text is cached (bounded; cleared when full).
        cached = self._cache.get(text)
        if cached is not None:
            redacted, kinds = cached
            for kind, n in kinds:
                counts[kind] += n
            return redacted
        local: collections.Counter = collections.Counter()
        if ("?" in text or "#" in text) and " " not in text and (
                "://" in text or text.startswith("/")):
            redacted = self._redact_url(text, local)
        else:
            redacted = self._redact_plain(text, local)
        if len(self._cache) >= TEXT_CACHE_SIZE:
            self._cache.clear()
        self._cache[text] = (redacted, tuple(local.items()))
        if local:
            counts.update(local)
        return redacted

    def redact_value(self, value, counts: collections.Counter):
        """Redacts strings inside nested dicts/lists (for unknown ``extra`` fields)."""
        if isinstance(value, str):
            return self._redact_into(value, counts) if value else value
        if isinstance(value, dict):
            return {k: self.redact_value(v, counts) for k, v in value.items()}
        if isinstance(value, list):
            return [self.redact_value(v, counts) for v in value]
        return value

    def redact_record(
        self,
        record: dict,
        text_fields: typing.Iterable[str],
        token_fields: typing.Iterable[str] = (),
        nested_fields: typing.Iterable[str] = ("extra",),
    ) -> typing.Tuple[dict, collections.Counter]:
        """A copy of ``record`` with PII redacted, and counts per kind.

        ``text_fields`` are scanned as free text; ``token_fields`` are replaced
        wholesale by ``[TOKEN:...]``; every string inside ``nested_fields``
        (the unknown fields a client added) is scanned as free text too.
        """
        counts: collections.Counter = collections.Counter()
        out = dict(record)
        for name in text_fields:
            value = out.get(name)
            if isinstance(value, str) and value:
                out[name] = self._redact_into(value, counts)
        for name in token_fields:
            value = out.get(name)
            if value is not None and value != "":
                out[name] = self.token("token", str(value))
                counts["token"] += 1
        for name in nested_fields:
            value = out.get(name)
            if value:
                out[name] = self.redact_value(value, counts)
        return out, counts


class _RedactFn(beam.DoFn):
    def __init__(self, secret, text_fields, token_fields, pipeline, default_region):
        self._secret = secret
        self._text_fields = tuple(text_fields)
        self._token_fields = tuple(token_fields)
        self._pipeline = pipeline
        self._region = default_region
        self._counters = {k: Metrics.counter(pipeline, f"pii_redacted_{k}") for k in PII_KINDS}
        self._failed = Metrics.counter(pipeline, "redact_failed")
        self._redactor = None

    def setup(self):
        self._redactor = PiiRedactor(self._secret, self._region)

    def process(self, event: dict):
        try:
            redacted, counts = self._redactor.redact_record(
                event, self._text_fields, self._token_fields)
        except Exception as exc:  # noqa: BLE001 - route, never crash the bundle
            self._failed.inc()
            yield beam.pvalue.TaggedOutput(
                RedactPii.FAILED, failed_from_event(event, exc, "redact", self._pipeline))
            return
        for kind, n in counts.items():
            self._counters[kind].inc(n)
        # Counts only (never values), for the lineage in transformation_metadata.
        redacted["_pii"] = dict(counts)
        yield redacted


class RedactPii(beam.PTransform):
    """Event dicts -> ``valid`` (redacted copies) and ``failed`` (``FailedRecord``).

    Counters ``pii_redacted_<kind>`` (namespace = pipeline) count tokens
    issued. Element timestamps and windows pass through unchanged.
    """

    VALID = "valid"
    FAILED = "failed"

    def __init__(self, secret: bytes, text_fields=FRONTEND_TEXT_FIELDS,
                 token_fields=FRONTEND_TOKEN_FIELDS, pipeline: str = "frontend",
                 default_region: str = "US"):
        super().__init__()
        # Fail at construction, not on a worker: validates secret and region.
        PiiRedactor(secret, default_region)
        self._secret = secret
        self._text_fields = tuple(text_fields)
        self._token_fields = tuple(token_fields)
        self._pipeline = pipeline
        self._region = default_region

    def expand(self, events):
        return events | "RedactPiiFields" >> beam.ParDo(
            _RedactFn(self._secret, self._text_fields, self._token_fields,
                      self._pipeline, self._region)
        ).with_outputs(self.FAILED, main=self.VALID)
