"""Parse step: pure parse_record, the DoFn by process(), the composite on FnApiRunner."""
import hashlib
import json

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue
from pydantic import ValidationError

from schemas.events import FrontendEvent, MarketoLead
from schemas.records import FailedRecord, SourceRecord
from transforms.parse import DecodeError, ParseEvents, _ParseFn, event_id_for, parse_record
from tests.unit.conftest import WIDGET_OPEN, fn_api_runner, source


# --- pure ----------------------------------------------------------------------------
def test_parse_record_shape():
    src = source(WIDGET_OPEN, offset=7, partition=3)
    event = parse_record(src.value, FrontendEvent, source=src)
    assert event["event_type"] == "widget_open"
    assert event["timestamp_ms"] == 1705314600000
    assert event["extra"] == {}
    assert event["_source"] == {"topic": "frontend_user_interaction", "partition": 3, "offset": 7}
    assert len(event["event_id"]) == 64
    # Every model field is present, absent ones as None.
    assert set(FrontendEvent.model_fields) <= set(event)


def test_event_id_is_sha256_of_canonical_json():
    payload = {"b": 1, "a": "é", "event_type": "x"}
    canonical = '{"a":"é","b":1,"event_type":"x"}'.encode("utf-8")
    assert event_id_for(payload) == hashlib.sha256(canonical).hexdigest()


def test_same_payload_replayed_gets_same_id_regardless_of_key_order_and_spacing():
    a = json.dumps(WIDGET_OPEN).encode()
    b = json.dumps(dict(reversed(list(WIDGET_OPEN.items()))), indent=2).encode()
    assert a != b
    assert parse_record(a, FrontendEvent)["event_id"] == parse_record(b, FrontendEvent)["event_id"]
    changed = dict(WIDGET_OPEN, time_on_page=43)
    assert parse_record(changed, FrontendEvent)["event_id"] != parse_record(a, FrontendEvent)["event_id"]


def test_payload_event_id_wins():
    event = parse_record(dict(WIDGET_OPEN, event_id="evt-123"), FrontendEvent)
    assert event["event_id"] == "evt-123"
    assert parse_record(dict(WIDGET_OPEN, event_id=77), FrontendEvent)["event_id"] == "77"
    # blank ids fall back to the hash
    assert len(parse_record(dict(WIDGET_OPEN, event_id=" "), FrontendEvent)["event_id"]) == 64


def test_accepts_str_bytes_and_dict():
    as_dict = parse_record(WIDGET_OPEN, FrontendEvent)
    as_str = parse_record(json.dumps(WIDGET_OPEN), FrontendEvent)
    as_bytes = parse_record(json.dumps(WIDGET_OPEN).encode(), FrontendEvent)
    assert as_dict["event_id"] == as_str["event_id"] == as_bytes["event_id"]


def test_unknown_fields_surface_as_extra():
    event = parse_record(dict(WIDGET_OPEN, message_length=45, experiment="B"), FrontendEvent)
    assert event["message_length"] == 45
    assert event["extra"] == {"experiment": "B"}
    assert "experiment" not in event


def test_missing_timestamp_falls_back_to_record_time():
    payload = {k: v for k, v in WIDGET_OPEN.items() if k != "timestamp"}
    src = source(payload, timestamp_ms=1705314600999)
    assert parse_record(src.value, FrontendEvent, source=src)["timestamp_ms"] == 1705314600999
    with pytest.raises(ValueError, match="timestamp"):
        parse_record(payload, FrontendEvent)


@pytest.mark.parametrize(
    "raw, fragment",
    [
        (b"not json", "not valid JSON"),
        (b"", "empty"),
        (b"   ", "empty"),
        (b"[1, 2]", "JSON object"),
        (b'"text"', "JSON object"),
        (b"null", "JSON object"),
        (b'{"a": 1', "not valid JSON"),
        (b"\xff\xfe{}", "UTF-8"),
    ],
)
def test_decode_errors(raw, fragment):
    with pytest.raises(DecodeError, match=fragment):
        parse_record(raw, FrontendEvent)


def test_custom_decoder_gets_raw_bytes():
    seen = []

    def decoder(value):
        seen.append(value)
        return dict(WIDGET_OPEN)

    event = parse_record(b"\x00binary", FrontendEvent, decoder=decoder)
    assert seen == [b"\x00binary"] and event["event_type"] == "widget_open"

    def broken(value):
        raise EOFError("truncated")

    with pytest.raises(DecodeError, match="truncated"):
        parse_record(b"x", FrontendEvent, decoder=broken)


def test_marketo_parse():
    lead = parse_record({"id": 5, "email": "a@b.co", "updatedAt": "2024-01-15T10:30:00Z"}, MarketoLead)
    assert lead["id"] == 5 and lead["timestamp_ms"] == 1705314600000


# --- DoFn by process() ---------------------------------------------------------------
def _run_fn(records):
    fn = _ParseFn(FrontendEvent, "frontend")
    fn.setup()
    out = []
    for r in records:
        out.extend(fn.process(r))
    return out


def test_fn_emits_timestamped_valid_event():
    (out,) = _run_fn([source(WIDGET_OPEN)])
    assert isinstance(out, TimestampedValue)
    assert out.timestamp.micros == 1705314600000 * 1000
    assert out.value["session_id"] == "sess_9f1c2a"


def test_fn_routes_failures_with_stage_and_field():
    bad_json = source(b"{oops", offset=1)
    bad_field = source(dict(WIDGET_OPEN, session_id=""), offset=2)
    bad_time = source(dict(WIDGET_OPEN, timestamp=-5), offset=3)
    outs = _run_fn([bad_json, bad_field, bad_time])
    assert [o.tag for o in outs] == ["failed"] * 3
    decode, validate, time_ = (o.value for o in outs)
    assert isinstance(decode, FailedRecord)
    assert (decode.stage, decode.error_class, decode.source_offset) == ("decode", "DecodeError", 1)
    assert decode.raw == "{oops"
    assert validate.stage == "validate" and validate.error_class == "ValidationError"
    assert validate.error_message == "session_id: must be a non-empty string"
    assert time_.error_message == "timestamp: timestamp -5 is negative"
    assert time_.pipeline == "frontend" and time_.received_at


def test_null_required_field_message():
    (out,) = _run_fn([source(dict(WIDGET_OPEN, event_type=None))])
    assert out.value.error_message == (
        "event_type: must not be null (input should be a valid string)")


# --- composite on FnApiRunner --------------------------------------------------------
def test_every_record_ends_in_exactly_one_output():
    good = [source(dict(WIDGET_OPEN, time_on_page=i), offset=i) for i in range(5)]
    bad = [
        source(b"garbage", offset=100),
        source(b"[]", offset=101),
        source(dict(WIDGET_OPEN, event_type=None), offset=102),
        source(dict(WIDGET_OPEN, timestamp="2150-01-01T00:00:00Z"), offset=103),
    ]
    with BeamTestPipeline(runner=fn_api_runner()) as p:
        result = p | beam.Create(good + bad) | ParseEvents(FrontendEvent, "frontend")
        assert_that(result.valid | "ValidOffsets" >> beam.Map(lambda e: e["_source"]["offset"]),
                    equal_to(list(range(5))), label="ValidOffsets")
        assert_that(result[ParseEvents.FAILED] | beam.Map(lambda f: (f.source_offset, f.stage)),
                    equal_to([(100, "decode"), (101, "decode"), (102, "validate"), (103, "validate")]),
                    label="FailedOffsets")
    metrics = p.result.metrics().query(MetricsFilter().with_namespace("frontend"))
    counters = {c.key.metric.name: c.committed for c in metrics["counters"]}
    assert counters == {"received": 9, "valid": 5, "failed": 4}


def test_constructor_checks():
    with pytest.raises(ValueError):
        ParseEvents(dict, "frontend")
    with pytest.raises(ValueError):
        ParseEvents(FrontendEvent, "")


@pytest.mark.parametrize(
    "payload",
    [
        WIDGET_OPEN,
        {"z": 1, "a": {"y": [1, 2.5, None, True], "b": "é ü 漢字 \u2028 \U0001F600"}},
        {"f": [0.1, 1e16, 1.5, -0.0, 123456789.123, 0.001], "i": [0, -1, 2**53]},
        {"s": "quote \" backslash \\ newline \n tab \t ctrl \x01"},
        {},
    ],
)
def test_orjson_and_stdlib_canonical_forms_agree(payload):
    """The two encoders agree except for floats below 1e-4 (next test)."""
    from transforms.parse import _canonical_json, _canonical_json_stdlib

    assert _canonical_json(payload) == _canonical_json_stdlib(payload)


def test_canonical_form_is_orjsons_and_big_ints_fall_back():
    from transforms.parse import _canonical_json

    assert _canonical_json({"v": 1e-05}) == b'{"v":0.00001}'
    # beyond 64 bits orjson refuses; the stdlib form is used, deterministically
    assert _canonical_json({"v": 2**70}) == b'{"v":1180591620717411303424}'
    assert event_id_for({"v": 2**70}) == event_id_for({"v": 2**70})


def test_parse_setup_relaxes_the_worker_gc_and_never_lowers_it():
    import gc

    from transforms.beam_compat import WORKER_GC_THRESHOLD0, relax_gc

    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, saved[1], saved[2])
        _ParseFn(FrontendEvent, "frontend").setup()
        assert gc.get_threshold() == (WORKER_GC_THRESHOLD0, saved[1], saved[2])
        gc.set_threshold(WORKER_GC_THRESHOLD0 * 2, saved[1], saved[2])
        assert relax_gc() == WORKER_GC_THRESHOLD0 * 2
        assert gc.get_threshold()[0] == WORKER_GC_THRESHOLD0 * 2
    finally:
        gc.set_threshold(*saved)


# --- hostile payloads (issue 15; the whole pipeline: tests/pipeline/test_hostile_input.py)

_GOOD = '{"event_type": "page_view", "session_id": "s1", "timestamp": 1767225600000%s}'


@pytest.mark.parametrize("tail, error", [
    (', "x": ' + "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    (', "x": NaN', "NaN/Infinity"),
    (', "x": 1e999', "NaN/Infinity"),
    (', "x": "a\\ud800b"', "lone UTF-16 surrogate"),
    (', "x\\ud800": 1', "lone UTF-16 surrogate"),
])
def test_values_only_the_stdlib_parser_accepts_are_decode_errors(tail, error):
    with pytest.raises(DecodeError, match=error):
        parse_record(_GOOD % tail, FrontendEvent)


@pytest.mark.parametrize("tail, where", [
    (', "element_text": "a\\u0000b"', "element_text"),
    (', "x": {"y": ["ok", "a\\u0000"]}', "x.y[1]"),
    (', "k\\u0000": 1', "a key"),
])
def test_a_nul_character_fails_validation_naming_the_field(tail, where):
    with pytest.raises(ValueError, match=r"NUL character") as info:
        parse_record((_GOOD % tail).encode(), FrontendEvent)
    assert where in str(info.value)
    with pytest.raises(ValueError, match=r"NUL character"):
        parse_record(json.loads(_GOOD % tail), FrontendEvent)  # a decoded dict too


def test_an_escaped_backslash_before_u0000_is_not_a_nul():
    event = parse_record(_GOOD % ', "element_text": "C:\\\\u0000"', FrontendEvent)
    assert event["element_text"] == "C:\\u0000"


def test_infinite_time_on_page_is_refused():
    with pytest.raises(ValueError, match="time_on_page"):
        parse_record(_GOOD % ', "time_on_page": 1e999', FrontendEvent)


def test_dead_letter_payloads_are_storable_and_bounded():
    from schemas.records import RAW_PAYLOAD_MAX_CHARS, storable_raw

    assert storable_raw(b"a\x00b\xff") == "a\ufffdb\ufffd"
    assert storable_raw("x\ud800") == "x\ufffd\ufffd\ufffd"
    cut = storable_raw(b"A" * (RAW_PAYLOAD_MAX_CHARS + 10))
    assert cut.startswith("A" * RAW_PAYLOAD_MAX_CHARS)
    assert f"[cut: {RAW_PAYLOAD_MAX_CHARS + 10} bytes in all, sha256 " in cut
