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
email       local@domain.tld, letters of any script in both      NFC, lower
            halves (RFC 6531, IDN), punycode or non-ASCII TLD,   case, punycode
            ``%40`` percent-encoded or full-width ``＠``          decoded
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
            STRICT_GROUPING: a valid number whose digit groups   (digits when
            match the region's formatting, so ``2024-000123`` is  unparseable)
            not a phone), run only on runs of >= 7 digits
            (spaces . - ( ) / allowed) not glued to a preceding
            ASCII word, ``.``, ``-``, ``/`` or ``#`` and not
            date-shaped. Regions in order: the event's hints
            (``pii_regions.record_region_hints``: country,
            timezone, browser language), ``default_region``,
            the detected language (``language_of``, asked only
            when still unresolved), the cue word's language.
            After a cue word (``pii_regions.PHONE_CUE``, <= 32
            characters before, no digit or sentence end in
            between) a group of 7-15 digits is a phone even
            when no plan accepts it
==========  ===================================================  =============

What must survive (tests/unit/test_pii.py lists the cases), and how:

* Spans that look like PII but are not are *protected* before the ambiguous
  detectors (ipv4, phone) run: ISO dates and datetimes, d/m/y dates, times,
  UUIDs, long hex ids, epoch timestamps (10/13 digits starting with 1),
  prices (currency symbol or code), screen sizes (``1920x1080``), order-like
  ids (letters + separator + digits, ``ORD-123456789``, ``sess_abc123``),
  a number right after an id label (``order``, ``Rechnung``, ``ИНН``,
  ``build`` ...), year + serial (``2024-000123``), postal codes in the
  ``01310-100`` / ``〒100-0001`` forms, coordinates (5+ decimals), tokens
  already emitted (so redaction is idempotent) and versions. Bare digit runs
  of 11+ digits are ids too unless a phone cue word precedes them
  (``手机13800138000``).
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
import unicodedata
import urllib.parse

import apache_beam as beam
import phonenumbers
from apache_beam.metrics import Metrics
from phonenumbers import Leniency, PhoneNumberFormat, PhoneNumberMatcher

from schemas.records import failed_from_event
from transforms.batches import MapBatchMixin
from transforms.pii_regions import PHONE_CUE, cue_regions, record_region_hints, region_hints

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

def _combining_marks() -> str:
    """A character-class body with the BMP's combining marks (Mn, Mc): ``\\w``
    does not match them, and Devanagari, Thai or Arabic words need them
    (``संपर्क@डाटामेल.भारत``)."""
    ranges, start = [], None
    for cp in range(0x300, 0x10000):
        mark = unicodedata.category(chr(cp)) in ("Mn", "Mc")
        if mark and start is None:
            start = cp
        elif not mark and start is not None:
            ranges.append(f"\\u{start:04x}-\\u{cp - 1:04x}")
            start = None
    return "".join(ranges)


_MARKS = _combining_marks()
_EMAIL_CHAR = rf"[\w{_MARKS}]"
# Internationalised addresses (RFC 6531 local parts, IDN domains): letters of
# any script in both halves. The TLD is punycode, ASCII letters (which may be
# followed by non-ASCII text without a space: "taro@example.jpです") or
# letters of another script (".рф", ".中国", ".भारत"). "＠" is the full-width
# at sign CJK keyboards type.
_EMAIL = re.compile(
    rf"(?<![\w{_MARKS}.%+-])[\w{_MARKS}.%+-]{{1,64}}(?:@|%40|\uff20)"
    rf"(?:{_EMAIL_CHAR}(?:[\w{_MARKS}-]{{0,61}}{_EMAIL_CHAR})?\.)+"
    r"(?:xn--[A-Za-z0-9-]{2,59}(?![\w-])|[A-Za-z]{2,24}(?![A-Za-z0-9_-])"
    rf"|(?:(?![\x00-\x7f]){_EMAIL_CHAR}){{2,24}}(?![\w-]))"
)
_ASCII_WORD = re.compile(r"[A-Za-z0-9._%+-]+$")
# Ideographs, kana, hangul, full-width forms: scripts written without spaces,
# where the words before an ASCII address are glued to its local part.
_UNSPACED = re.compile("[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uff00-\uffef]")
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
# ASCII boundaries, so an address glued to CJK text (IPアドレスは192.0.2.55です)
# is still one.
_IPV4 = re.compile(
    r"(?<![A-Za-z0-9_.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]\d|\d)\.){3}"
    r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]\d|\d)(?![A-Za-z0-9_]|\.\d)"
)
# Not after an ASCII word char, '.', '-', '/' or '#': digits glued to an id
# (ORD-1234567, /blog/2024/01/15, #1234567) are not phone numbers. The
# boundaries are ASCII so that a number glued to CJK text
# (電話03-1234-5678です) is still a candidate.
_PHONE_CANDIDATE = re.compile(
    r"(?<![A-Za-z0-9_.\-/#])\+?\(?[0-9][0-9 \t().\-/]{5,22}[0-9](?![A-Za-z0-9_])")
_DATE_LIKE = re.compile(r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}")
_PROTECT_MARGIN = 40  # context a protected form can need around a candidate
# A phone cue word (pii_regions.PHONE_CUE) counts when it ends at most
# _CUE_LOOKBACK characters before the number and nothing between them is a
# digit or a sentence end ("Phone: +49 30 1234, order 2024-000123": the
# order number is not cued).
_CUE_LOOKBACK = 32
_CUE_BREAK = re.compile(r"[0-9\n!?。]|\.\s")
# Phone-shaped: 7-15 digits in at most 6 groups, each group at most 6 digits
# unless the number is one bare run (07911123456, 13800138000).
_GROUPS = re.compile(r"[0-9]+")
MIN_PHONE_DIGITS, MAX_PHONE_DIGITS, MAX_PHONE_GROUPS = 7, 15, 6

# Spans that are not PII although they are digits in a row. The group
# ``weak`` (a bare run of 11+ digits) is an id unless a cue word says it is a
# phone: "手机 13800138000", "mobile 07911123456".
_PROTECTED = re.compile(
    "|".join(
        (
            r"\[[A-Z0-9]+:[0-9a-f]{6,64}\]",  # our own tokens
            r"\b[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}\b",
            r"\b\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?",
            # d/m/y and m/d/y with real days and months, not one link of a
            # longer chain (06.12.34.56.78 is a French phone, not 6 Dec 1934)
            r"(?<!\d[/.-])\b(?:(?:0?[1-9]|[12]\d|3[01])[/.-](?:0?[1-9]|1[0-2])"
            r"|(?:0?[1-9]|1[0-2])[/.-](?:0?[1-9]|[12]\d|3[01]))[/.-]\d{2,4}\b(?![/.-]\d)",
            r"\b\d{4}/\d{1,2}/\d{1,2}\b",
            r"\b\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?\b",
            r"\b(?=[0-9a-fA-F]{16,}\b)[0-9a-fA-F]*[a-fA-F][0-9a-fA-F]*\b",  # hex ids
            r"\b1\d{9}(?:\d{3})?\b",  # epoch seconds / milliseconds
            r"[$€£¥₹]\s?\d[\d,.\s]*\d"
            r"|\b\d[\d,.]*\s?(?:USD|EUR|GBP|JPY|CHF|CAD|AUD|INR|BRL|MXN|SEK|PLN|TRY|RUB|CNY|KRW)\b",
            r"\b\d{2,5}\s?[xX×]\s?\d{2,5}\b",  # screen / viewport sizes
            r"\b[A-Za-z][A-Za-z0-9]*(?:[_-][A-Za-z0-9]+)*[_-]\d[\w-]*",  # ORD-123, sess_1a
            r"\b[vV]\d+(?:\.\d+)+",
            r"(?i:\b(?:version|ver|release|build|rev|firmware|fw)\b\.?)[\s:#=-]*\d+(?:\.\d+)+",
            r"(?<=[A-Za-z])/\d+(?:\.\d+)+",  # product/version tokens
            # 5+ dotted parts: a version, not an address; but 0d.dd.dd.dd.dd
            # is how France writes phone numbers
            r"\b(?!0\d(?:\.\d\d){4}\b)\d+(?:\.\d+){4,}\b",
            r"(?<![\d.])-?\d{1,3}\.\d{5,}(?![\d.])",  # coordinates (5+ decimals)
            r"\b(?:19|20)\d{2}[-/]\d{5,}\b",  # year + serial: 2024-000123
            r"\b\d{5}-\d{3}\b|〒\s?\d{3}-\d{4}",  # postal codes (BR CEP, JP)
            # A number right after an id label is that id, not a phone
            # ("order 2024-000123", "ИНН 7707083893", "build 20240115").
            r"(?i:\b(?:order|invoice|ticket|account|customer|tracking|booking|reference|ref"
            r"|case|sku|item|article|build|version|release|rev|bestellung|bestellnr|rechnung"
            r"|kundennummer|auftrag|commande|facture|pedido|factura|ordine|fattura|bestelling"
            r"|factuur|zamówienie|faktura|sipariş|fatura|заказ|сч[её]т|инн|огрн|кпп|inn|nip"
            r"|nif|nie|cif|siret|siren|tva|vat|ust-?idnr|cpf|cnpj|rut|rfc|kvk|btw|pesel|regon"
            r"|gstin|pan|ein|tin|abn|acn)\b\.?\s*(?:no\.?|nr\.?|n[°º]|number|nummer|número"
            r"|numero|#)?\s*:?\s*)[A-Z]{0,2}\s?\d[\d .\-/]{4,20}\d",
            r"(?P<weak>(?<![\d+])\d{11,}(?!\d))",  # bare long digit runs are ids
        )
    )
)

_DIGITS = "0123456789"
_TRIGGER = re.compile("[0-9@\uff20]")  # '%40' contains digits, so it triggers too
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


@functools.lru_cache(maxsize=PHONE_CACHE_SIZE)
def _cued_phone_value(chunk: str, region: str) -> typing.Optional[str]:
    """The normalised value of a phone-shaped chunk that follows a cue word,
    or None when it is not phone-shaped. E.164 whenever ``phonenumbers`` can
    parse it for ``region`` (valid or not), so a valid number gets the same
    token on both paths; else its digits (with the ``+`` if written)."""
    groups = _GROUPS.findall(chunk)
    digits = "".join(groups)
    if not MIN_PHONE_DIGITS <= len(digits) <= MAX_PHONE_DIGITS or len(groups) > MAX_PHONE_GROUPS:
        return None
    if len(groups) > 1 and max(len(g) for g in groups) > 8:
        return None
    try:
        number = phonenumbers.parse(chunk, region)
    except phonenumbers.NumberParseException:
        return ("+" if chunk.lstrip("( ").startswith("+") else "") + digits
    return phonenumbers.format_number(number, PhoneNumberFormat.E164)


def _normalise_email(raw: str) -> str:
    """Lower case, NFC, full-width at sign and ``%40`` decoded, punycode
    domain labels decoded: ``Jane@xn--bcher-kva.de`` and ``jane@bücher.de``
    are one address, and get one token."""
    value = urllib.parse.unquote(raw).replace("\uff20", "@")
    value = unicodedata.normalize("NFC", value).lower()
    if "xn--" in value:
        local, _, domain = value.rpartition("@")
        try:
            domain = domain.encode("ascii").decode("idna")
        except (UnicodeError, ValueError):
            pass
        value = f"{local}@{domain}"
    return value


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


class _RecordHints:
    """A record's phone-region hints, worked out only if a text of it has a
    phone candidate (most events have none, and the look-up costs more than
    redacting them)."""

    __slots__ = ("_record", "_regions")

    def __init__(self, record: dict):
        self._record = record
        self._regions = None

    def __call__(self) -> typing.Tuple[str, ...]:
        if self._regions is None:
            self._regions = record_region_hints(self._record)
        return self._regions


def _regions_of(hints) -> typing.Tuple[str, ...]:
    return hints if type(hints) is tuple else hints()


class _Scan:
    """Per-text state of one ``_find`` call: whether the result depended on
    the region hints (then it is cached per hints), and the detected
    language, asked for at most once."""

    __slots__ = ("hints", "regional", "language_regions")

    def __init__(self, hints):
        self.hints = hints
        self.regional = False
        self.language_regions = None


class PiiRedactor:
    """Pure, picklable PII redactor; see the module docstring for the rules.

    ``secret`` keys the token HMAC (>= 16 bytes). ``default_region`` is the
    ISO country whose national phone formats are recognised without ``+``
    when the event gives no better hint. ``language_of`` (optional, e.g.
    the text-agent's language detector: text -> ISO 639-1 code) is asked
    only for texts with a phone-shaped group that neither the hints nor the
    default region resolved; its regions are tried next.
    """

    def __init__(self, secret: bytes, default_region: str = "US",
                 token_hex_digits: int = TOKEN_HEX_DIGITS,
                 language_of: typing.Optional[typing.Callable[[str], typing.Optional[str]]] = None,
                 count_existing_tokens: bool = False):
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
        self._language_of = language_of
        # Archive re-runs: the text was redacted by the first run; a token
        # already in it counts as a value found, so the counts (and what
        # reads them) equal the first run's.
        self._existing = (re.compile(r"\[(" + "|".join(k.upper() for k in PII_KINDS)
                                     + r"):[0-9a-f]{" + str(token_hex_digits) + r"}\]")
                          if count_existing_tokens else None)
        # text -> (redacted, kinds) when no phone region was involved, else
        # text -> {hint regions: (redacted, kinds)}.
        self._cache: typing.Dict[str, typing.Any] = {}
        self._orders: typing.Dict[typing.Tuple[str, ...], typing.Tuple[str, ...]] = {}

    # -- tokens -------------------------------------------------------------
    def token(self, kind: str, normalised: str) -> str:
        digest = hmac.new(self._secret, f"{kind}:{normalised}".encode("utf-8"),
                          hashlib.sha256).hexdigest()
        return f"[{kind.upper()}:{digest[:self._hex]}]"

    # -- detection ------------------------------------------------------------
    def _find(self, text: str, scan: _Scan) -> typing.List[typing.Tuple[int, int, str, str]]:
        """(start, end, kind, normalised) for every PII value in ``text``."""
        found: typing.List[typing.Tuple[int, int, str, str]] = []
        taken = _Spans()
        if "@" in text or "%40" in text or "\uff20" in text:
            self._find_email(text, found, taken)
        digits = len(text) - len(text.translate(_DROP_DIGITS))
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
        if digits >= 10:  # an IBAN has 15+ characters, 10+ of them digits (NL: 12)
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
        if digits >= MIN_PHONE_DIGITS:
            for m in _PHONE_CANDIDATE.finditer(text):
                chunk = m.group()
                if (len(chunk) - len(chunk.translate(_DROP_DIGITS)) >= MIN_PHONE_DIGITS
                        and _DATE_LIKE.fullmatch(chunk) is None):
                    phones.append(m)
        if not ipv4 and not phones:
            return found
        weak: typing.List[typing.Tuple[int, int]] = []
        self._protect_around(text, ipv4 + phones, taken, weak)
        for m in ipv4:
            if m.group().startswith("0") or not taken.free(m.start(), m.end()):
                continue
            found.append((m.start(), m.end(), "ipv4", m.group()))
            taken.claim(m.start(), m.end())
        for m in phones:
            self._phones_in(text, m, found, taken, weak, scan)
        return found

    def _find_email(self, text, found, taken):
        for m in _EMAIL.finditer(text):
            start, raw = m.start(), m.group()
            at = raw.find("@")
            if at < 0:
                at = raw.find("\uff20")
            if at < 0:
                at = raw.find("%40")
            local = raw[:at]
            if _UNSPACED.search(local):
                # "メールはtaro@example.jp": the address starts at its ASCII
                # local part; the words before it are not part of it.
                tail = _ASCII_WORD.search(local)
                if tail is not None and tail.start() > 0:
                    start += tail.start()
                    raw = raw[tail.start():]
            found.append((start, m.end(), "email", _normalise_email(raw)))
            taken.claim(start, m.end())

    @staticmethod
    def _protect_around(text, candidates, taken, weak):
        """Claims protected spans near the candidates (a window of
        ``_PROTECT_MARGIN`` characters each side; merged when they overlap);
        the ``weak`` ones (long bare digit runs) are only collected."""
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
                if p.lastgroup == "weak":
                    weak.append(p.span())
                else:
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

    def _order(self, hints: typing.Tuple[str, ...]) -> typing.Tuple[str, ...]:
        order = self._orders.get(hints)
        if order is None:
            order = tuple(dict.fromkeys(hints + (self._region,)))
            if len(self._orders) < 1024:
                self._orders[hints] = order
        return order

    @staticmethod
    def _cue(text: str, start: int) -> typing.Optional[str]:
        """The phone cue word that ends shortly before ``start`` with no digit
        or sentence end in between, or None."""
        lo = max(0, start - _CUE_LOOKBACK)
        last = None
        for last in PHONE_CUE.finditer(text, lo, start):
            pass
        if last is None or _CUE_BREAK.search(text, last.end(), start) is not None:
            return None
        return last.group()

    def _phones_in(self, text, cand, found, taken, weak, scan: _Scan):
        """Phones in one candidate chunk. Regions are tried in order (hints,
        default, detected language, the cue word's language); the first
        whose matches cover every free digit of the chunk wins. Failing that,
        a cued phone-shaped chunk is one phone; else the best partial cover."""
        base, stop = cand.start(), cand.end()
        chunk = cand.group()
        free = [i for i, ch in enumerate(chunk) if ch in _DIGITS and taken.free(base + i, base + i + 1)]
        if not free:
            return  # every digit already belongs to a protected span or a finding
        cue = False  # not looked up yet
        if any(s < stop and base < e for s, e in weak):
            cue = self._cue(text, base)
            if cue is None:
                return  # a bare run of 11+ digits with no cue: an id
        scan.regional = True
        hints = _regions_of(scan.hints)
        regions = self._order(hints)
        best = self._cover(chunk, base, regions, free, taken)
        if best[0] == len(free):
            return self._claim(best[1], found, taken)
        if self._language_of is not None:
            if scan.language_regions is None:
                language = self._language_of(text)
                scan.language_regions = tuple(
                    r for r in region_hints(languages=(language,)) if r not in regions
                ) if language else ()
            if scan.language_regions:
                best = max(best, self._cover(chunk, base, scan.language_regions, free, taken),
                           key=lambda b: b[0])
                if best[0] == len(free):
                    return self._claim(best[1], found, taken)
        if cue is False:
            cue = self._cue(text, base)
        if cue is not None:
            # A cue word: its language's plans first ("Handy" -> DE), then,
            # valid or not, the whole phone-shaped group is a phone.
            by_cue = tuple(r for r in cue_regions(cue) if r not in regions)
            if by_cue:
                best = max(best, self._cover(chunk, base, by_cue, free, taken),
                           key=lambda b: b[0])
                if best[0] == len(free):
                    return self._claim(best[1], found, taken)
            if taken.free(base, stop):
                value = _cued_phone_value(chunk, (hints + by_cue + regions)[0])
                if value is not None:
                    found.append((base, stop, "phone", value))
                    taken.claim(base, stop)
                    return
        self._claim(best[1], found, taken)

    @staticmethod
    def _cover(chunk, base, regions, free, taken):
        """(free digits covered, matches) of the first region in ``regions``
        whose ``phonenumbers`` matches cover all ``free`` digit offsets, else
        of the region covering the most."""
        best = (0, ())
        for region in regions:
            matches = tuple((base + s, base + e, v) for s, e, v in _phone_matches(chunk, region)
                            if taken.free(base + s, base + e))
            if not matches:
                continue
            covered = sum(1 for i in free if any(s <= base + i < e for s, e, _ in matches))
            if covered > best[0]:
                best = (covered, matches)
                if covered == len(free):
                    break
        return best

    @staticmethod
    def _claim(matches, found, taken):
        for start, end, e164 in matches:
            if taken.free(start, end):
                found.append((start, end, "phone", e164))
                taken.claim(start, end)

    # -- replacement ------------------------------------------------------------
    def _redact_plain(self, text: str, counts: collections.Counter, scan: _Scan) -> str:
        found = self._find(text, scan)
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

    def _redact_params(self, part: str, counts, scan) -> str:
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
            redacted = self._redact_plain(decoded, counts, scan)
            if redacted != decoded:
                pieces[i] = key + "=" + urllib.parse.quote_plus(redacted, safe="[]:")
                changed = True
        return "&".join(pieces) if changed else part

    def _redact_url(self, text: str, counts, scan) -> str:
        head, hash_sep, fragment = text.partition("#")
        path, q_sep, query = head.partition("?")
        path = self._redact_plain(path, counts, scan)
        if query:
            query = self._redact_params(query, counts, scan)
        if fragment:
            fragment = (self._redact_params(fragment, counts, scan) if "=" in fragment
                        else self._redact_plain(fragment, counts, scan))
        return path + q_sep + query + hash_sep + fragment

    def redact_text(self, text: str, regions: typing.Sequence[str] = ()
                    ) -> typing.Tuple[str, collections.Counter]:
        """``text`` with every PII value replaced by its token, and counts per
        kind. ``regions``: phone regions to try before the default one (see
        ``pii_regions.region_hints``)."""
        counts: collections.Counter = collections.Counter()
        if not text or not isinstance(text, str):
            return text, counts
        return self._redact_into(text, counts, tuple(regions)), counts

    def _redact_into(self, text: str, counts: collections.Counter, hints=()) -> str:
        if self._existing is not None and "[" in text:
            for match in self._existing.finditer(text):
                counts[match.group(1).lower()] += 1
        if _TRIGGER.search(text) is None:
            return text  # fast path: every kind needs '@' or a digit
        # Page URLs, titles, button texts and referrers repeat across events:
        # the result per exact text is cached (bounded; cleared when full),
        # per region hints only when a phone candidate made them matter.
        cached = self._cache.get(text)
        if cached is not None:
            if type(cached) is dict:
                cached = cached.get(_regions_of(hints))
            if cached is not None:
                redacted, kinds = cached
                for kind, n in kinds:
                    counts[kind] += n
                return redacted
        local: collections.Counter = collections.Counter()
        scan = _Scan(hints)
        if ("?" in text or "#" in text) and " " not in text and (
                "://" in text or text.startswith("/")):
            redacted = self._redact_url(text, local, scan)
        else:
            redacted = self._redact_plain(text, local, scan)
        if len(self._cache) >= TEXT_CACHE_SIZE:
            self._cache.clear()
        entry = (redacted, tuple(local.items()))
        if scan.regional:
            per_hints = self._cache.get(text)
            if type(per_hints) is not dict:
                per_hints = self._cache[text] = {}
            per_hints[_regions_of(hints)] = entry
        else:
            self._cache[text] = entry
        if local:
            counts.update(local)
        return redacted

    def redact_value(self, value, counts: collections.Counter, regions=()):
        """Redacts strings inside nested dicts/lists (for unknown ``extra``
        fields); ``regions`` as in ``redact_text``."""
        if isinstance(value, str):
            return self._redact_into(value, counts, regions) if value else value
        if isinstance(value, dict):
            return {k: self.redact_value(v, counts, regions) for k, v in value.items()}
        if isinstance(value, list):
            return [self.redact_value(v, counts, regions) for v in value]
        return value

    def redact_record(
        self,
        record: dict,
        text_fields: typing.Iterable[str],
        token_fields: typing.Iterable[str] = (),
        nested_fields: typing.Iterable[str] = ("extra",),
        regions: typing.Optional[typing.Sequence[str]] = None,
    ) -> typing.Tuple[dict, collections.Counter]:
        """A copy of ``record`` with PII redacted, and counts per kind.

        ``text_fields`` are scanned as free text; ``token_fields`` are replaced
        wholesale by ``[TOKEN:...]``; every string inside ``nested_fields``
        (the unknown fields a client added) is scanned as free text too.
        ``regions`` (phone regions to try first) default to the record's own
        hints (``pii_regions.record_region_hints``: country, timezone,
        browser language), worked out only if a phone candidate needs them.
        """
        counts: collections.Counter = collections.Counter()
        out = dict(record)
        hints = _RecordHints(record) if regions is None else tuple(regions)
        for name in text_fields:
            value = out.get(name)
            if isinstance(value, str) and value:
                out[name] = self._redact_into(value, counts, hints)
        for name in token_fields:
            value = out.get(name)
            if value is not None and value != "":
                out[name] = self.token("token", str(value))
                counts["token"] += 1
        for name in nested_fields:
            value = out.get(name)
            if value:
                out[name] = self.redact_value(value, counts, hints)
        return out, counts


class _RedactFn(beam.DoFn):
    def __init__(self, secret, text_fields, token_fields, pipeline, default_region,
                 count_existing_tokens=False):
        self._count_existing = count_existing_tokens
        self._secret = secret
        self._text_fields = tuple(text_fields)
        self._token_fields = tuple(token_fields)
        self._pipeline = pipeline
        self._region = default_region
        self._counters = {k: Metrics.counter(pipeline, f"pii_redacted_{k}") for k in PII_KINDS}
        self._failed = Metrics.counter(pipeline, "redact_failed")
        self._redactor = None

    def setup(self):
        self._redactor = PiiRedactor(self._secret, self._region,
                                     count_existing_tokens=self._count_existing)

    def _one(self, event: dict):
        """(redacted copy, None) or (None, FailedRecord)."""
        try:
            redacted, counts = self._redactor.redact_record(
                event, self._text_fields, self._token_fields)
        except Exception as exc:  # noqa: BLE001 - route, never crash the bundle
            self._failed.inc()
            return None, failed_from_event(event, exc, "redact", self._pipeline)
        for kind, n in counts.items():
            self._counters[kind].inc(n)
        # Counts only (never values), for the lineage in transformation_metadata.
        redacted["_pii"] = dict(counts)
        return redacted, None

    def process(self, event: dict):
        redacted, failed = self._one(event)
        if failed is not None:
            yield beam.pvalue.TaggedOutput(RedactPii.FAILED, failed)
        else:
            yield redacted


class _RedactBatchFn(MapBatchMixin, _RedactFn):
    """A list of events -> the list of redacted copies (+ one failure per
    event that could not be redacted)."""


class RedactPii(beam.PTransform):
    """Event dicts -> ``valid`` (redacted copies) and ``failed`` (``FailedRecord``).

    Counters ``pii_redacted_<kind>`` (namespace = pipeline) count tokens
    issued. Element timestamps and windows pass through unchanged.
    ``batched=True``: elements are lists of events (transforms/batches.py).
    ``count_existing_tokens``: the events were redacted before (an archive
    re-run): tokens already in them count as values found.
    """

    VALID = "valid"
    FAILED = "failed"

    def __init__(self, secret: bytes, text_fields=FRONTEND_TEXT_FIELDS,
                 token_fields=FRONTEND_TOKEN_FIELDS, pipeline: str = "frontend",
                 default_region: str = "US", batched: bool = False,
                 count_existing_tokens: bool = False):
        super().__init__()
        self._count_existing = count_existing_tokens
        # Fail at construction, not on a worker: validates secret and region.
        PiiRedactor(secret, default_region)
        self._secret = secret
        self._text_fields = tuple(text_fields)
        self._token_fields = tuple(token_fields)
        self._pipeline = pipeline
        self._region = default_region
        self._batched = batched

    def dofn(self) -> beam.DoFn:
        """The per-element DoFn ``expand`` applies (unbatched), for running
        the step in-process: a replay's dry run (beam_pipelines/replay.py)."""
        return _RedactFn(self._secret, self._text_fields, self._token_fields,
                         self._pipeline, self._region, self._count_existing)

    def expand(self, events):
        fn_class = _RedactBatchFn if self._batched else _RedactFn
        return events | "RedactPiiFields" >> beam.ParDo(
            fn_class(self._secret, self._text_fields, self._token_fields,
                      self._pipeline, self._region, self._count_existing)
        ).with_outputs(self.FAILED, main=self.VALID)
