"""Pure tests of the payload models (schemas/events.py)."""
import copy

import pytest
from pydantic import ValidationError

from schemas.events import (
    MAX_TIMESTAMP_MS,
    MIN_TIMESTAMP_MS,
    FrontendEvent,
    MarketoLead,
    normalize_timestamp_ms,
)
from tests.unit.conftest import WIDGET_OPEN


# --- timestamps ---------------------------------------------------------------
@pytest.mark.parametrize(
    "value, expected",
    [
        (1705314600000, 1705314600000),  # epoch ms as Date.now() sends it
        (1705314600, 1705314600000),  # epoch s: 1.7e9 < 1e11 -> * 1000
        (1705314600.5, 1705314600500),  # fractional seconds
        (1705314600123.4, 1705314600123),  # fractional ms rounds
        (1705314600000000, 1705314600000),  # epoch us: 1.7e15 in [1e14, 1e17) -> / 1000
        (1705314600000000000, 1705314600000),  # epoch ns: >= 1e17 -> / 1e6
        ("1705314600000", 1705314600000),  # numeric text
        (" 1705314600 ", 1705314600000),
        ("1705314600.25", 1705314600250),
        ("2024-01-15T10:30:00Z", 1705314600000),
        ("2024-01-15T10:30:00z", 1705314600000),
        ("2024-01-15T10:30:00.123Z", 1705314600123),
        ("2024-01-15T12:30:00+02:00", 1705314600000),  # 12:30 at +2 = 10:30 UTC
        ("2024-01-15T05:30:00-05:00", 1705314600000),
        ("2024-01-15T10:30:00", 1705314600000),  # no zone -> UTC
        ("2024-01-15 10:30:00", 1705314600000),
        ("2024-01-15", 1705276800000),  # midnight UTC: 1705314600000 - 10.5 h * 3600000
        ("2024-01-15T10:30:00+0000", 1705314600000),  # Marketo's offset without colon
        ("2024-01-15 10:30:00 UTC", 1705314600000),
        ("Mon, 15 Jan 2024 10:30:00 GMT", 1705314600000),  # JS Date.toUTCString()
        ("Mon Jan 15 2024 11:30:00 GMT+0100 (Central European Standard Time)",
         1705314600000),  # JS Date.toString(): 11:30 at +1 = 10:30 UTC
        ("1.7053146e12", 1705314600000),  # exponent notation, ms band
    ],
)
def test_timestamp_forms_normalise_to_utc_ms(value, expected):
    assert normalize_timestamp_ms(value) == expected


@pytest.mark.parametrize(
    "value, fragment",
    [
        (-1, "negative"),
        (-1705314600000, "negative"),
        ("-5", "negative"),
        (0, "outside the plausible range"),  # 1970
        (1, "outside the plausible range"),
        (MIN_TIMESTAMP_MS - 1, "outside"),
        (MAX_TIMESTAMP_MS, "outside"),
        (99999999999999, "outside"),  # ms band but year 5138
        ("2150-01-01T00:00:00Z", "outside"),
        ("1999-12-31T23:59:59Z", "outside"),
        ("yesterday", "neither epoch"),
        ("", "empty"),
        (True, "not a time"),
        (None, "not a time"),
        (float("nan"), "finite"),
        (float("inf"), "finite"),
        ([1705314600000], "must be a number"),
        ({"ms": 1}, "must be a number"),
    ],
)
def test_absurd_timestamps_rejected(value, fragment):
    with pytest.raises(ValueError, match=fragment):
        normalize_timestamp_ms(value)


def test_range_bounds_are_inclusive_exclusive():
    assert normalize_timestamp_ms(MIN_TIMESTAMP_MS) == MIN_TIMESTAMP_MS
    assert normalize_timestamp_ms(MAX_TIMESTAMP_MS - 1) == MAX_TIMESTAMP_MS - 1


# --- FrontendEvent ---------------------------------------------------------------
def test_guide_payload_accepted_as_is():
    event = FrontendEvent.model_validate(WIDGET_OPEN)
    assert event.event_type == "widget_open"
    assert event.session_id == "sess_9f1c2a"
    assert event.timestamp_ms == 1705314600000
    assert event.click_coordinates == {"x": 1180.0, "y": 640.0}
    assert event.time_on_page == 42.0
    assert event.extra == {}


def test_minimal_payload_only_needs_type_session_and_time():
    event = FrontendEvent.model_validate(
        {"event_type": "page_view", "session_id": "s1", "timestamp": 1705314600000})
    assert event.user_id is None and event.page_url is None and event.click_coordinates is None


def test_js_nulls_and_empty_referrer():
    payload = dict.fromkeys(WIDGET_OPEN, None)
    payload.update(event_type="page_view", session_id="s", timestamp=1705314600000, referrer="")
    event = FrontendEvent.model_validate(payload)
    assert event.referrer == ""
    assert event.user_agent is None and event.country is None


def test_unknown_fields_kept_as_extra():
    payload = dict(WIDGET_OPEN, message_length=45, ab_variant="B", nested={"a": [1, 2]})
    event = FrontendEvent.model_validate(payload)
    assert event.message_length == 45
    assert event.extra == {"ab_variant": "B", "nested": {"a": [1, 2]}}


@pytest.mark.parametrize(
    "field, sent, expected",
    [
        ("session_id", 12345, "12345"),  # ids sent as numbers
        ("user_id", 42, "42"),
        ("time_on_page", "17", 17.0),  # numbers sent as strings
        ("time_on_page", 3.5, 3.5),
        ("message_length", "45", 45),
        ("message_length", 45.0, 45),
        ("event_type", "  widget_open  ", "widget_open"),  # stripped
    ],
)
def test_liberal_coercions(field, sent, expected):
    event = FrontendEvent.model_validate(dict(WIDGET_OPEN, **{field: sent}))
    assert getattr(event, field) == expected


def test_camel_case_field_names_accepted():
    payload = {"eventType": "page_view", "sessionId": "s1", "timestamp": 1705314600000,
               "pageUrl": "https://acme.com/", "userAgent": "x", "timeOnPage": 3}
    event = FrontendEvent.model_validate(payload)
    assert (event.event_type, event.session_id, event.page_url, event.time_on_page) == (
        "page_view", "s1", "https://acme.com/", 3.0)
    assert event.extra == {}


@pytest.mark.parametrize(
    "coords, expected",
    [
        ({"x": 10, "y": 20}, {"x": 10.0, "y": 20.0}),
        ({"x": "10", "y": "20.5"}, {"x": 10.0, "y": 20.5}),
        ({"x": 1, "y": 2, "pageX": 5}, {"x": 1.0, "y": 2.0}),  # extra keys ignored
        ([10, 20], {"x": 10.0, "y": 20.0}),
        ((3, 4), {"x": 3.0, "y": 4.0}),
        ("10,20", {"x": 10.0, "y": 20.0}),
        (None, None),
        ([], None),
        ({}, None),
    ],
)
def test_click_coordinates_shapes(coords, expected):
    event = FrontendEvent.model_validate(dict(WIDGET_OPEN, click_coordinates=coords))
    assert event.click_coordinates == expected


@pytest.mark.parametrize(
    "change, field",
    [
        ({"event_type": None}, "event_type"),
        ({"event_type": ""}, "event_type"),
        ({"event_type": "   "}, "event_type"),
        ({"session_id": None}, "session_id"),
        ({"session_id": ""}, "session_id"),
        ({"timestamp": -1}, "timestamp"),
        ({"timestamp": "soon"}, "timestamp"),
        ({"timestamp": 12}, "timestamp"),  # 12 s after 1970
        ({"page_url": {"href": "x"}}, "page_url"),  # wrong type
        ({"user_agent": ["a"]}, "user_agent"),
        ({"time_on_page": -3}, "time_on_page"),
        ({"time_on_page": "long"}, "time_on_page"),
        ({"message_length": 4.5}, "message_length"),
        ({"click_coordinates": [1]}, "click_coordinates"),
        ({"click_coordinates": {"x": 1}}, "click_coordinates"),
        ({"click_coordinates": {"x": "a", "y": 1}}, "click_coordinates"),
        ({"click_coordinates": {"x": True, "y": 1}}, "click_coordinates"),
        ({"click_coordinates": 5}, "click_coordinates"),
        ({"session_id": "x" * 201}, "session_id"),
    ],
)
def test_invalid_payloads_rejected_naming_the_field(change, field):
    payload = dict(WIDGET_OPEN, **change)
    with pytest.raises(ValidationError) as info:
        FrontendEvent.model_validate(payload)
    assert field in {str(err["loc"][0]) for err in info.value.errors()}


def test_missing_required_fields_rejected():
    for name in ("event_type", "session_id"):
        payload = copy.deepcopy(WIDGET_OPEN)
        del payload[name]
        with pytest.raises(ValidationError, match=name):
            FrontendEvent.model_validate(payload)


def test_missing_timestamp_is_allowed_by_model_but_has_no_time():
    payload = copy.deepcopy(WIDGET_OPEN)
    del payload["timestamp"]
    assert FrontendEvent.model_validate(payload).timestamp_ms is None


# --- MarketoLead ----------------------------------------------------------------
MARKETO = {
    "id": 318581,
    "email": "jane.doe@acme-corp.com",
    "firstName": "Jane",
    "lastName": "Doe",
    "company": "Acme Corp",
    "leadSource": "Website",
    "country": "United States",
    "state": "CA",
    "city": "San Francisco",
    "createdAt": "2024-01-10T08:00:00Z",
    "updatedAt": "2024-01-15T10:30:00Z",
    "leadScore": 87,
    "customField_c": "kept",
}


def test_marketo_rest_record_accepted():
    lead = MarketoLead.model_validate(MARKETO)
    assert lead.id == 318581
    assert lead.createdAt == 1704873600000  # 2024-01-10T08:00Z
    assert lead.timestamp_ms == 1705314600000  # updatedAt wins
    assert lead.extra == {"customField_c": "kept"}


def test_marketo_liberal_forms():
    lead = MarketoLead.model_validate({"id": "318581", "email": "  ", "createdAt": 1704873600})
    assert lead.id == 318581
    assert lead.email is None
    assert lead.timestamp_ms == 1704873600000  # no updatedAt: createdAt (epoch s)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"id": None}, "id"),
        ({"id": 0}, "id"),
        ({"id": "abc"}, "id"),
        ({"id": True}, "id"),
        ({"email": "not-an-email"}, "email"),
        ({"email": 5}, "email"),
        ({"updatedAt": "later"}, "updatedAt"),
    ],
)
def test_marketo_rejections(change, field):
    with pytest.raises(ValidationError) as info:
        MarketoLead.model_validate(dict(MARKETO, **change))
    assert field in {str(err["loc"][0]) for err in info.value.errors()}


# --- Avro schemas (schemas/avro.py) ----------------------------------------------------
def _enriched_event():
    from transforms.frontend_enrich import EnrichmentConfig, enrich_frontend_event
    from transforms.parse import parse_record
    from transforms.pii import PiiRedactor

    event = parse_record(dict(WIDGET_OPEN, experiment={"arm": "B"}, element_text="mail a@b.io"),
                         FrontendEvent)
    redacted, counts = PiiRedactor(b"unit-test-secret-0123456789").redact_record(
        event, ("element_text",))
    redacted["_pii"] = dict(counts)
    return enrich_frontend_event(redacted, EnrichmentConfig())


def test_enriched_event_validates_as_is_and_roundtrips():
    import io

    import fastavro
    from fastavro.validation import validate

    from schemas.avro import load_schema, to_avro_record

    schema = load_schema("frontend_enriched_v1")
    event = _enriched_event()
    assert validate(event, schema, raise_errors=True)  # the archive validates raw dicts
    record = to_avro_record(event, schema)
    assert record["extra_json"] == '{"experiment": {"arm": "B"}}'
    assert record["_pii"] == {"email": 1}
    buf = io.BytesIO()
    fastavro.writer(buf, schema, [record])
    buf.seek(0)
    (back,) = list(fastavro.reader(buf))
    assert back["event_id"] == event["event_id"]
    assert back["timestamp_ms"].isoformat() == "2024-01-15T10:30:00+00:00"
    assert back["transformation_metadata"]["pii_redacted"] == {"email": 1}
    assert back["click_coordinates"] == {"x": 1180.0, "y": 640.0}


def test_session_row_schema():
    from fastavro.validation import validate

    from schemas.avro import load_schema, to_avro_record
    from schemas.tables import FRONTEND_SESSIONS

    row = dict.fromkeys(FRONTEND_SESSIONS.columns)
    row.update(session_id="s", window_start="2024-01-15T10:00:00.000+00:00",
               window_end="2024-01-15T10:30:00.000+00:00", event_count=3, duration_seconds=12.5,
               avg_engagement_score=33.5, pane_index=0)
    schema = load_schema("frontend_session_v1.avsc")
    assert validate(row, schema, raise_errors=True)
    assert to_avro_record(row, schema)["event_count"] == 3
    assert {f["name"] for f in schema["fields"]} == set(FRONTEND_SESSIONS.columns)


def test_to_avro_record_coercions_and_errors():
    from schemas.avro import to_avro_record

    schema = {"type": "record", "name": "T", "fields": [
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "n", "type": ["null", "long"], "default": None},
        {"name": "s", "type": ["null", "string"], "default": None},
        {"name": "d", "type": "double", "default": 1.5},
    ]}
    out = to_avro_record({"ts": "2024-01-15T10:30:00Z", "n": 4.0, "s": {"a": 1}, "zzz": 1}, schema)
    assert out == {"ts": 1705314600000, "n": 4, "s": '{"a": 1}', "d": 1.5}
    with pytest.raises(ValueError, match="T.ts"):
        to_avro_record({"ts": None}, schema)
    with pytest.raises(ValueError, match="unknown Avro schema"):
        to_avro_record({}, "nope_v9")


def test_envelope_roundtrip_through_avro_and_parse():
    import io

    import fastavro

    from schemas.avro import load_schema, unwrap_envelope, wrap_envelope
    from transforms.parse import DecodeError, parse_record

    schema = load_schema("envelope_v1")
    envelope = wrap_envelope(WIDGET_OPEN, "frontend", event_id="evt-1", produced_at_ms=1705314600001)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, envelope)
    raw = buf.getvalue()

    def decoder(value):
        return fastavro.schemaless_reader(io.BytesIO(value), schema, None)

    event = parse_record(raw, FrontendEvent, decoder=decoder)
    assert event["event_id"] == "evt-1" and event["session_id"] == WIDGET_OPEN["session_id"]
    assert unwrap_envelope(envelope)["event_type"] == "widget_open"
    with pytest.raises(DecodeError, match="envelope"):
        parse_record(b"x", FrontendEvent,
                     decoder=lambda v: dict(envelope, envelope_version=2))
