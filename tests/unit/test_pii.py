"""PII redaction: many positive and negative cases, the DoFn, the composite."""
import collections
import hashlib
import hmac
import re

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.pii import FRONTEND_TEXT_FIELDS, PiiRedactor, RedactPii, _RedactFn
from tests.unit.conftest import SECRET, fn_api_runner

R = PiiRedactor(SECRET)
TOKEN = re.compile(r"\[[A-Z0-9]+:[0-9a-f]{10}\]")


def expected_token(kind, normalised, secret=SECRET):
    digest = hmac.new(secret, f"{kind}:{normalised}".encode(), hashlib.sha256).hexdigest()
    return f"[{kind.upper()}:{digest[:10]}]"


# --- positives: (text, kind, normalised value the token is keyed on) -----------------
POSITIVE = [
    ("contact jane.doe@acme.com please", "email", "jane.doe@acme.com"),
    ("Jane.Doe@ACME.com", "email", "jane.doe@acme.com"),  # case-normalised
    ("mail: first+tag@sub.example.co.uk.", "email", "first+tag@sub.example.co.uk"),
    ("jane%40acme.com", "email", "jane@acme.com"),  # percent-encoded @
    ("call +1 650-253-0000 today", "phone", "+16502530000"),
    ("call (650) 253-0000", "phone", "+16502530000"),  # national US format
    ("650.253.0000", "phone", "+16502530000"),
    ("ring +44 20 7946 0958", "phone", "+442079460958"),
    ("portable +33 6 12 34 56 78", "phone", "+33612345678"),
    ("+49 30 901820", "phone", "+4930901820"),
    ("+44 (0)20 7946 0958", "phone", "+442079460958"),
    ("+1.650.253.0000", "phone", "+16502530000"),
    ("tel:+16502530000", "phone", "+16502530000"),
    ("+91 98765 43210", "phone", "+919876543210"),
    ("my number is 6502530000", "phone", "+16502530000"),
    ("Phone: 650 253 0000.", "phone", "+16502530000"),
    ("from 192.168.1.20 yesterday", "ipv4", "192.168.1.20"),
    ("ip=8.8.8.8", "ipv4", "8.8.8.8"),
    ("1.2.3.4", "ipv4", "1.2.3.4"),  # bare dotted quad: an address (documented choice)
    ("host 255.255.255.255", "ipv4", "255.255.255.255"),
    ("client 2001:db8:85a3::8a2e:370:7334 connected", "ipv6", "2001:db8:85a3::8a2e:370:7334"),
    ("2001:0db8:0000:0000:0000:0000:0000:0001", "ipv6", "2001:db8::1"),  # compressed
    ("fe80::1", "ipv6", "fe80::1"),
    ("::ffff:192.0.2.128", "ipv6", "::ffff:c000:280"),
    ("card 4111 1111 1111 1111 exp", "card", "4111111111111111"),
    ("4111-1111-1111-1111", "card", "4111111111111111"),
    ("4111111111111111", "card", "4111111111111111"),
    ("amex 378282246310005", "card", "378282246310005"),
    ("mc 5500 0000 0000 0004", "card", "5500000000000004"),
    ("ssn 123-45-6789", "ssn", "123456789"),
    ("SSN: 123456789", "ssn", "123456789"),
    ("social security number 078051120", "ssn", "078051120"),
    ("IBAN GB82 WEST 1234 5698 7654 32 thanks", "iban", "GB82WEST12345698765432"),
    ("DE89370400440532013000", "iban", "DE89370400440532013000"),
    ("pay to FR1420041010050500013M02606", "iban", "FR1420041010050500013M02606"),
]


@pytest.mark.parametrize("text, kind, value", POSITIVE)
def test_detects_and_tokenises(text, kind, value):
    redacted, counts = R.redact_text(text)
    assert counts == collections.Counter({kind: 1}), (redacted, counts)
    assert expected_token(kind, value) in redacted
    # The value itself is gone.
    assert value.lower() not in redacted.lower().replace(expected_token(kind, value).lower(), "")


# --- negatives: must survive byte-identical -----------------------------------------
NEGATIVE = [
    "version 1.2.3.4",
    "v1.2.3.4",
    "ver. 10.0.0.1 released",
    "build 4.3.2.1",
    "Chrome/120.0.6099.109",
    "Firefox/1.2.3.4",
    "1.2.3.4.5",
    "0.9.1.2",
    "999.1.1.1",
    "01.02.03.04",
    "released on 2024-01-15",
    "2024-01-15T10:30:00Z",
    "2024-01-15T10:30:00.123+02:00",
    "15/01/2024",
    "01.15.2024",
    "2024/01/15",
    "at 12:30:45",
    "$1,299.00",
    "€ 1.299,00",
    "1299.00 USD",
    "ORD-123456789",
    "INV-2024-000123",
    "order #ORD-4111111111111111",
    "1920x1080",
    "viewport 1280 x 720",
    "1705314600000",
    "ts=1705314600",
    "550e8400-e29b-41d4-a716-446655440000",
    "12345678-1234-1234-1234-123456789012",
    "sess_1705314600000_ab12cd",
    "session s-20240115-000042",
    "a3f5c9e2b7d14f6a8c0e1b2d3f4a5c6e",  # hex id
    "12345678901",  # bare 11-digit id
    "user 9876543210123",
    "std::vector<int>",
    "00:1A:2B:3C:4D:5E",
    "ratio 3:2",
    "chapter 1.2",
    "call 555",
    "20 items for 3 people",
    "Invoice 2024-000123",  # a valid US number by digits, but not grouped like one
    "Order #1234567 shipped",
    "Zip 94043-1351",
    "ISBN 978-3-16-148410-0",
    "Qty 1,234,567",
    "build 20240115.1",
    "lat 37.4220936 lon -122.083922",
    "tracking 1Z999AA10123456784",
    "9780316769488",
    "4111 1111 1111 1112",  # fails Luhn
    "1234 5678 9012 3456",  # fails Luhn
    "0000-00-0000",
    "000-12-3456",  # invalid SSN area
    "GB82 WEST 1234 5698 7654 33",  # IBAN checksum fails
    "no pii at all here",
    "user@localhost",  # no TLD
    "[EMAIL:3141592653]",  # an already-issued token
    "",
]


@pytest.mark.parametrize("text", NEGATIVE)
def test_leaves_non_pii_alone(text):
    redacted, counts = R.redact_text(text)
    assert redacted == text
    assert not counts


def test_idempotent():
    once, _ = R.redact_text("mail a@b.io or call +1 650-253-0000 from 10.1.2.3")
    twice, counts = R.redact_text(once)
    assert twice == once and not counts


def test_same_value_same_token_across_formats_and_events():
    a, _ = R.redact_text("call +1 650-253-0000")
    b, _ = R.redact_text("(650) 253-0000 is my number")
    assert TOKEN.findall(a) == TOKEN.findall(b) == [expected_token("phone", "+16502530000")]


def test_different_secret_different_token():
    other = PiiRedactor(b"another-secret-0123456789")
    assert other.redact_text("a@b.io")[0] != R.redact_text("a@b.io")[0]


def test_mixed_text_multiple_kinds():
    text = "card 5500-0000-0000-0004, phone (650) 253-0000, mail a@b.io, ip 10.0.0.7, v2.3.4.5 on 2024-01-15"
    redacted, counts = R.redact_text(text)
    assert counts == collections.Counter(card=1, phone=1, email=1, ipv4=1)
    assert redacted.endswith("v2.3.4.5 on 2024-01-15")
    assert len(TOKEN.findall(redacted)) == 4


def test_default_region_changes_national_numbers():
    fr = PiiRedactor(SECRET, default_region="FR")
    redacted, counts = fr.redact_text("appelez le 06 12 34 56 78")
    assert counts == {"phone": 1}
    assert expected_token("phone", "+33612345678") in redacted
    assert R.redact_text("le 06 12 34 56 78")[1] == {}  # not a US number, no cue
    # "appelez" is a French cue word: the French plan is tried, same token.
    assert expected_token("phone", "+33612345678") in R.redact_text(
        "appelez le 06 12 34 56 78")[0]


# --- URLs --------------------------------------------------------------------
def test_url_query_values_decoded_redacted_reencoded():
    url = ("https://acme.com/signup?email=jane.doe%40acme.com&utm_source=news&utm_medium=email"
           "&phone=%2B1%20650-253-0000&ref=ORD-123456789")
    redacted, counts = R.redact_text(url)
    assert counts == {"email": 1, "phone": 1}
    assert redacted == (
        "https://acme.com/signup?email=" + expected_token("email", "jane.doe@acme.com")
        + "&utm_source=news&utm_medium=email&phone=" + expected_token("phone", "+16502530000")
        + "&ref=ORD-123456789")


def test_url_without_pii_unchanged_byte_for_byte():
    for url in [
        "https://acme.com/products/123456789?utm_campaign=spring%202024&id=1920x1080#top",
        "https://acme.com/blog/2024/01/15/release-1.2.3.4",
        "https://acme.com/p?session=550e8400-e29b-41d4-a716-446655440000&t=1705314600000",
        "/docs?page=2",
    ]:
        assert R.redact_text(url) == (url, collections.Counter())


def test_email_in_url_path_and_fragment():
    redacted, counts = R.redact_text("https://acme.com/users/jane@acme.com/profile#c=a%40b.io")
    assert counts == {"email": 2}
    assert "jane@acme.com" not in redacted and "a%40b.io" not in redacted


def test_ip_in_url_host():
    redacted, counts = R.redact_text("http://192.168.0.10:8080/admin?x=1")
    assert counts == {"ipv4": 1}
    assert redacted == "http://" + expected_token("ipv4", "192.168.0.10") + ":8080/admin?x=1"


# --- records --------------------------------------------------------------------
def test_redact_record_text_token_and_extra_fields():
    record = {
        "event_id": "e1",
        "page_url": "https://acme.com/?email=a%40b.io",
        "element_text": "Call me at +1 650-253-0000",
        "page_title": "Pricing",
        "user_id": "user_42",
        "session_id": "sess_1705314600000",
        "extra": {"contact": {"mail": "x@y.org"}, "tags": ["ok", "10.0.0.1"], "n": 5},
    }
    out, counts = R.redact_record(record, FRONTEND_TEXT_FIELDS, token_fields=("user_id",))
    assert counts == {"email": 2, "phone": 1, "token": 1, "ipv4": 1}
    assert out["user_id"] == expected_token("token", "user_42")
    assert out["page_title"] == "Pricing" and out["session_id"] == record["session_id"]
    assert out["extra"]["contact"]["mail"] == expected_token("email", "x@y.org")
    assert out["extra"]["tags"] == ["ok", expected_token("ipv4", "10.0.0.1")] and out["extra"]["n"] == 5
    assert record["element_text"] == "Call me at +1 650-253-0000"  # input not mutated


def test_frontend_fields_are_the_pipelines_and_include_element_attributes():
    # One definition: the frontend pipeline, RedactPii's default and the chain
    # benchmark all redact these fields.
    import beam_pipelines.frontend  # noqa: F401 (must not define its own list)

    assert not hasattr(beam_pipelines.frontend, "PII_TEXT_FIELDS")
    out, counts = R.redact_record(
        {"element_id": "a@b.io", "element_class": "call +1 650-253-0000"}, FRONTEND_TEXT_FIELDS)
    assert counts == {"email": 1, "phone": 1}
    assert "a@b.io" not in out["element_id"]


def test_none_and_non_string_fields_untouched():
    out, counts = R.redact_record({"page_url": None, "element_text": 5}, FRONTEND_TEXT_FIELDS)
    assert out == {"page_url": None, "element_text": 5} and not counts


@pytest.mark.parametrize("secret, region", [(b"short", "US"), ("x" * 20, "ZZ")])
def test_constructor_validates(secret, region):
    with pytest.raises(ValueError):
        PiiRedactor(secret, region)


# --- DoFn and composite ---------------------------------------------------------------
def test_fn_process_counts_and_marks_event():
    fn = _RedactFn(SECRET, FRONTEND_TEXT_FIELDS, (), "frontend", "US")
    fn.setup()
    (out,) = list(fn.process({"element_text": "a@b.io", "_source": {}}))
    assert out["_pii"] == {"email": 1}
    assert out["element_text"] == expected_token("email", "a@b.io")
    (clean,) = list(fn.process({"element_text": "hello"}))
    assert clean["_pii"] == {}


def test_fn_routes_exceptions_to_failed():
    fn = _RedactFn(SECRET, FRONTEND_TEXT_FIELDS, (), "frontend", "US")
    fn.setup()
    (out,) = list(fn.process("not a dict"))
    assert out.tag == RedactPii.FAILED and out.value.stage == "redact"


def test_composite_counters_per_kind():
    events = [
        {"event_id": "1", "element_text": "a@b.io and c@d.io"},
        {"event_id": "2", "element_text": "+1 650-253-0000"},
        {"event_id": "3", "element_text": "nothing"},
        ["bad"],
    ]
    with BeamTestPipeline(runner=fn_api_runner()) as p:
        result = p | beam.Create(events, reshuffle=False) | RedactPii(SECRET, pipeline="frontend")
        assert_that(result.valid | beam.Map(lambda e: (e["event_id"], e["_pii"])),
                    equal_to([("1", {"email": 2}), ("2", {"phone": 1}), ("3", {})]), label="Valid")
        assert_that(result.failed | beam.Map(lambda f: f.stage), equal_to(["redact"]), label="Failed")
    counters = {c.key.metric.name: c.committed
                for c in p.result.metrics().query(MetricsFilter().with_namespace("frontend"))["counters"]}
    assert counters["pii_redacted_email"] == 2 and counters["pii_redacted_phone"] == 1
    assert counters["redact_failed"] == 1


def test_cache_hit_counts_again_and_returns_same_text():
    redactor = PiiRedactor(SECRET)
    first = redactor.redact_text("write to a@b.io")
    second = redactor.redact_text("write to a@b.io")
    assert first == second and second[1] == {"email": 1}
    record = {"element_text": "write to a@b.io", "page_title": "write to a@b.io"}
    _, counts = redactor.redact_record(record, ("element_text", "page_title"))
    assert counts == {"email": 2}


def test_redactor_pickles_for_workers():
    import pickle

    redactor = PiiRedactor(SECRET)
    redactor.redact_text("a@b.io")
    clone = pickle.loads(pickle.dumps(redactor))
    assert clone.redact_text("a@b.io") == redactor.redact_text("a@b.io")
