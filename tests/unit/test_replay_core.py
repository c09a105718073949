"""The replay's pure parts: the fix spec, payload checks, reasons, lineage,
and the aggregate recompute's reading of stored rows."""
import datetime as dt
import json

import numpy as np
import pytest

from beam_pipelines.replay import lossy_payload, prepare, reason_of
from schemas.records import storable_raw
from schemas.tables import failure_row, replay_lineage, replay_topic
from transforms.fix_spec import FixSpec, load_fix, load_fix_spec
from transforms.recompute import (
    TouchedKeys,
    billing_rows_from_turns,
    epoch_ms,
    hour_start_ms,
    real_value,
    touched_keys,
)


# -- fix spec --------------------------------------------------------------------
SPEC = {
    "version": 1,
    "rename": {"ts": "timestamp", "sessionID": "session_id"},
    "event_type_map": {"pageview": "page_view"},
    "timestamp_unit": {"timestamp": "s"},
    "defaults": {"tenant_id": "default"},
}


def test_spec_applies_renames_mapping_unit_and_defaults_in_order():
    fixed = FixSpec.from_dict(SPEC).apply(
        {"ts": 1_767_225_600, "sessionID": "s1", "event_type": "pageview", "tenant_id": None})
    # the rename runs before the unit conversion, so the renamed field is converted
    assert fixed == {"timestamp": 1_767_225_600_000, "session_id": "s1",
                     "event_type": "page_view", "tenant_id": "default"}


def test_spec_is_safe_to_apply_twice_and_says_when_it_changes_nothing():
    spec = FixSpec.from_dict(SPEC)
    once = spec.apply({"ts": 1_767_225_600, "event_type": "pageview"})
    assert spec.apply(once) is None  # already fixed: ms stays ms, names stay
    # a rename onto a field that is present leaves both alone
    assert spec.apply({"ts": 5, "timestamp": 1_767_225_600_000, "tenant_id": "t"}) is None
    assert spec.apply(["not", "an", "object"]) is None


@pytest.mark.parametrize("unit,value,expected", [
    ("s", 1_767_225_600, 1_767_225_600_000),
    ("s", "1767225600.5", 1_767_225_600_500),
    ("us", 1_767_225_600_000_000, 1_767_225_600_000),
    ("ns", 1_767_225_600_000_000_000, 1_767_225_600_000),
    ("s", 1_767_225_600_000, 1_767_225_600_000),  # already ms: left alone
    ("us", 1_767_225_600_000, 1_767_225_600_000),  # ms is below the us range
])
def test_time_units_convert_only_values_of_their_size(unit, value, expected):
    fixed = FixSpec.from_dict({"timestamp_unit": {"t": unit}, "defaults": {"x": 1}}).apply(
        {"t": value})
    assert fixed["t"] == expected


@pytest.mark.parametrize("spec,message", [
    ({"renames": {"a": "b"}}, "unknown section"),
    ({"version": 2, "rename": {"a": "b"}}, "version must be 1"),
    ({"rename": {"a": "c", "b": "c"}}, "same name"),
    ({"rename": {"a": "a"}}, "renamed to itself"),
    ({"rename": ["a", "b"]}, "must be a mapping"),
    ({"timestamp_unit": {"t": "minutes"}}, "is not one of"),
    ({"event_type_map": {"a": 1}}, "must be text"),
    ({"version": 1}, "has no fix"),
    (["rename"], "must be a mapping of sections"),
])
def test_spec_validation_names_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message):
        FixSpec.from_dict(spec)


def test_spec_files_yaml_and_json(tmp_path):
    (tmp_path / "f.yaml").write_text("rename:\n  ts: timestamp\n")
    (tmp_path / "f.json").write_text(json.dumps(SPEC))
    (tmp_path / "bad.json").write_text("{rename: 1")
    assert load_fix_spec(str(tmp_path / "f.yaml")).rename == (("ts", "timestamp"),)
    assert load_fix(fix_spec=str(tmp_path / "f.json")) == FixSpec.from_dict(SPEC)
    with pytest.raises(ValueError, match="not valid JSON"):
        load_fix_spec(str(tmp_path / "bad.json"))


def test_load_fix_function_and_its_errors():
    assert load_fix("tests.pipeline.replay_scenario:repair_frontend").__name__ == "repair_frontend"
    assert load_fix() is None
    for bad, message in [("nomodule_xyz:f", "cannot import"), ("json:nothing", "no function"),
                         ("json", "MODULE:FUNCTION")]:
        with pytest.raises(ValueError, match=message):
            load_fix(bad)
    with pytest.raises(ValueError, match="not both"):
        load_fix("json:loads", "spec.yaml")


# -- selection helpers -------------------------------------------------------------
def test_lossy_payloads_are_recognised():
    assert lossy_payload('{"a": "ok"}') is None
    assert "U+FFFD" in lossy_payload(storable_raw(b'{"a": "caf\xe9"}'))
    assert "U+FFFD" in lossy_payload(storable_raw('{"a": "x\x00y"}'))
    assert "cut" in lossy_payload(storable_raw("x" * 2_000_000))


def test_reasons_group_messages_that_differ_only_in_values():
    a = reason_of("validate", "ValidationError", "timestamp: timestamp 'yesterday' is neither")
    b = reason_of("validate", "ValidationError", "timestamp: timestamp 'x' is neither")
    c = reason_of("validate", "ValidationError", "session_id: field required")
    assert a == b != c


def test_prepare_applies_the_fix_and_gives_each_record_a_replay_origin():
    rows = [
        {"failure_id": "f1", "stage": "validate", "error_class": "ValidationError",
         "error_message": "timestamp: required", "raw_payload": '{"ts": 1767225600}',
         "source_partition": 3, "source_offset": 17, "replay_of": None},
        {"failure_id": "f2", "stage": "decode", "error_class": "DecodeError",
         "error_message": "not JSON", "raw_payload": "{broken", "source_partition": None,
         "source_offset": None, "replay_of": "f0"},
        {"failure_id": "f3", "stage": "decode", "error_class": "DecodeError",
         "error_message": "bad", "raw_payload": storable_raw(b"\xff"),
         "source_partition": 0, "source_offset": 1, "replay_of": None},
    ]
    fixed, unfixable, lossy = prepare(rows, FixSpec.from_dict(SPEC), "run1")
    assert json.loads(fixed.after) == {"timestamp": 1_767_225_600_000, "tenant_id": "default"}
    assert fixed.changed and fixed.record.topic == replay_topic("run1", "f1")
    assert (fixed.record.partition, fixed.record.offset) == (3, 17)
    # not JSON: replayed as stored; a retried re-failure keeps its original as root
    assert not unfixable.changed and unfixable.record.value == b"{broken"
    assert unfixable.root_id == "f0" and unfixable.record.topic == replay_topic("run1", "f0")
    assert lossy.record is None and lossy.lossy

    def boom(obj):
        raise KeyError("x")

    (raised,) = prepare(rows[:1], boom, "run1")
    assert raised.record is None and not raised.lossy and "KeyError" in raised.skipped


def test_a_refailure_gets_its_own_id_and_the_lineage_columns():
    original = {"raw": '{"a": 1}', "error_class": "E", "error_message": "m", "stage": "validate",
                "pipeline": "frontend", "source_topic": "frontend_user_interaction",
                "source_partition": 3, "source_offset": 17}
    again = dict(original, source_topic=replay_topic("run1", "f1"))
    first, second = failure_row(original), failure_row(again)
    assert first["failure_id"] != second["failure_id"]
    assert (first["replay_run_id"], first["replay_of"]) == (None, None)
    assert (second["replay_run_id"], second["replay_of"]) == ("run1", "f1")
    assert replay_lineage("frontend_user_interaction") == (None, None)
    with pytest.raises(ValueError):
        replay_topic("a:b", "f1")


# -- recompute core ----------------------------------------------------------------
def test_stored_values_read_back_as_the_pipeline_had_them():
    for value in (0.4404, -0.9998, 1533.6, 0.0):
        assert real_value(float(np.float32(value))) == value
    assert real_value(None) is None
    moment = dt.datetime(2026, 1, 1, 0, 0, 0, 123000, tzinfo=dt.timezone.utc)
    assert epoch_ms(moment) == 1_767_225_600_123
    assert epoch_ms(moment.replace(tzinfo=None)) == 1_767_225_600_123
    assert epoch_ms("2026-01-01T00:00:00.123Z") == 1_767_225_600_123
    assert hour_start_ms(1_767_229_199_999) == 1_767_225_600_000


def test_touched_keys_of_events_and_stored_rows():
    keys = touched_keys("text_agent", [
        {"session_id": "s1", "tenant_id": "t", "model": "m", "timestamp_ms": 1_767_229_199_999},
        {"session_id": "s2", "tenant_id": "t", "model": "m",
         "timestamp": dt.datetime(2026, 1, 1, 1, 0, tzinfo=dt.timezone.utc)},
    ])
    assert keys.sessions == {"s1", "s2"}
    assert keys.billing_hours == {("t", "m", 1_767_225_600_000), ("t", "m", 1_767_229_200_000)}
    assert touched_keys("frontend", [{"session_id": "a"}]) == TouchedKeys(frozenset({"a"}))
    assert not touched_keys("marketo", [{"session_id": "a"}])
    with pytest.raises(ValueError):
        touched_keys("nope", [])


def test_billing_rows_count_each_turn_once_per_hour():
    def turn(session, turn_id, ms, cost):
        return {"session_id": session, "turn_id": turn_id, "timestamp_ms": ms, "tenant_id": "t",
                "model": "m", "tokens_in": 10, "tokens_out": 5, "cached_tokens_in": 0,
                "estimated_cost_usd": cost, "price_book_version": "v1",
                "model_family": "f", "model_provider": "p"}

    hour = 1_767_225_600_000
    rows = billing_rows_from_turns([turn("s", "1", hour, 0.001), turn("s", "2", hour + 10, None),
                                    turn("s", "2", hour + 10, None),  # the same turn twice
                                    turn("s", "3", hour + 3_600_000, 0.002)])
    assert [(r["hour"], r["turns"], r["tokens_in"], r["estimated_cost_usd"], r["unpriced_turns"])
            for r in rows] == [
        ("2026-01-01T00:00:00+00:00", 2, 20, 0.001, 1),
        ("2026-01-01T01:00:00+00:00", 1, 10, 0.002, 0)]


# -- selection on the embedded database ----------------------------------------------
def test_selection_filters_and_skips_what_was_replayed(tmp_path):
    from beam_pipelines.replay import select_dead_letters
    from iheard_io.embedded import close_embedded
    from iheard_io.sql_tables import SqlTables

    def dead_letter(n, stage="validate", error_class="ValidationError", message="timestamp: x",
                    pipeline="frontend", day=1, topic="t"):
        return failure_row({"raw": f'{{"n": {n}}}', "error_class": error_class,
                            "error_message": message, "stage": stage, "pipeline": pipeline,
                            "source_topic": topic, "source_partition": 0, "source_offset": n,
                            "received_at": f"2026-12-0{day}T10:00:00+00:00"})

    rows = [dead_letter(1), dead_letter(2, day=2), dead_letter(3, stage="decode",
                                                                  error_class="DecodeError",
                                                                  message="not JSON"),
            dead_letter(4, stage="enrich"), dead_letter(5, pipeline="text_agent"),
            dead_letter(6, message="session_id: field required"),
            dead_letter(7, topic=replay_topic("run0", "x")), dead_letter(8)]
    path = str(tmp_path / "db.duckdb")
    with SqlTables.open(embedded_db=path) as db:
        db.upsert("failed_events", rows)
        db.update_by_key("failed_events", "failure_id", ("replayed_by",),
                         [(rows[7]["failure_id"], "run0")])

        def offsets(**kwargs):
            return sorted(r["source_offset"] for r in select_dead_letters(db, "frontend",
                                                                          **kwargs))

        # not enrich (no source payload), not text_agent's, not a replay's own
        # dead letter, not one already replayed
        assert offsets() == [1, 2, 3, 6]
        assert offsets(include_replayed_failures=True) == [1, 2, 3, 6, 7]
        assert offsets(stages=["decode"]) == [3]
        assert offsets(error_classes=["ValidationError"]) == [1, 2, 6]
        assert offsets(message_pattern=r"^timestamp") == [1, 2]
        assert offsets(since="2026-12-02") == [2]
        assert offsets(until="2026-12-02T00:00:00Z") == [1, 3, 6]
        assert len(offsets(limit=2)) == 2 and set(offsets(limit=2)) < {1, 3, 6}
        with pytest.raises(ValueError, match="cannot be replayed"):
            select_dead_letters(db, "frontend", stages=["enrich"])
    close_embedded(path)


def test_staged_records_round_trip_with_lone_surrogates():
    from schemas.records import SourceRecord, record_from_staged, staged_line

    record = SourceRecord('{"a": "x\ud800y é"}'.encode("utf-8", "surrogatepass"),
                          replay_topic("run1", "f1"), 3, 17, None, 1_767_225_600_000)
    line = staged_line(record)
    assert b"\n" not in line
    assert record_from_staged(SourceRecord(line, "staged.jsonl", 0, 1)) == record
