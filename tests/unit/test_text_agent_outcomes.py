"""conversion_probability, cost_per_interaction, user_satisfaction
(transforms/text_agent_outcomes.py): each rule by hand, then on an enriched
turn, a conversation aggregate, the embedded tables and the archive schema."""
import io

import fastavro
import pytest

from schemas.avro import schema_json
from transforms import text_agent_outcomes as outcomes
from transforms.pii import PiiRedactor
from transforms.text_agent import TurnEnricher, archive_record, redact_turn
from transforms.text_agent_aggregates import conversation_entry, summarise_conversation
from tests.unit.test_text_agent_transforms import BASE, SECRET, T0, _event, _turn


# -- the rules, hand-computed ---------------------------------------------------
@pytest.mark.parametrize("factors, expected", [
    ({}, 0.02),  # no signal: the prior alone
    # 0.02 + 0.38 * 1/2 = 0.21
    ({"intent_hits": 1}, 0.21),
    # 0.02 + 0.38 (2 hits, capped) + 0.35 lead + 0.15 topic + 0.10 * 5/5 = 1.00
    ({"intent_hits": 7, "lead_captured": True, "high_value_topics": ["pricing"],
      "previous_turns": 9}, 1.0),
    # 0.02 + 0.35 + 0.10 * 2/5 = 0.41
    ({"lead_captured": True, "previous_turns": 2, "high_value_topics": []}, 0.41),
])
def test_turn_conversion_probability(factors, expected):
    assert outcomes.turn_conversion_probability(factors) == pytest.approx(expected)


def test_conversation_takes_the_most_committed_turn():
    assert outcomes.conversation_conversion_probability([0.21, None, 0.77, 0.4]) == 0.77
    assert outcomes.conversation_conversion_probability([None]) is None


def test_cost_per_interaction_leaves_unpriced_turns_out():
    assert outcomes.turn_cost_per_interaction(0.00045) == 0.00045
    assert outcomes.turn_cost_per_interaction(None) is None
    # (0.001 + 0.002) / 2 priced turns; the unpriced one is not counted as free
    assert outcomes.conversation_cost_per_interaction([0.001, None, 0.002]) == 0.0015
    assert outcomes.conversation_cost_per_interaction([None, None]) is None


@pytest.mark.parametrize("compound, lead, expected", [
    (None, False, None),      # no user message: nothing to infer from
    (None, True, None),
    (-0.6, False, "low"),
    (-0.05, True, "low"),     # negative wins over a captured lead
    (0.0, False, "medium"),
    (0.049, False, "medium"),
    (0.0, True, "high"),      # handed over contact details
    (0.05, False, "high"),
])
def test_turn_user_satisfaction(compound, lead, expected):
    assert outcomes.turn_user_satisfaction(compound, lead) == expected


@pytest.mark.parametrize("last, trend, lead, expected", [
    (None, None, False, None),
    (None, None, True, "high"),
    (0.0, -0.6, True, "low"),     # fell from positive to neutral by 0.6
    (0.0, -0.4, False, "medium"),
    (0.3, 0.3, False, "high"),
    (-0.2, 0.1, True, "low"),
])
def test_conversation_user_satisfaction(last, trend, lead, expected):
    assert outcomes.conversation_user_satisfaction(last, trend, lead) == expected


# -- on an enriched turn and a conversation -----------------------------------
def _enriched(payload):
    redacted, user_counts, total = redact_turn(_event(payload), PiiRedactor(SECRET))
    return TurnEnricher().enrich(redacted, user_counts, total)


def test_enriched_turn_carries_the_three_fields():
    row = _enriched(BASE)
    factors = row["business_value_factors"]
    assert factors["intent_hits"] >= 2 and factors["lead_captured"] and factors["high_value_topics"]
    # 0.02 + 0.38 + 0.35 + 0.15 + 0.10 * 1/5 (previous_turns 1) = 0.92
    assert row["conversion_probability"] == pytest.approx(0.92)
    assert row["cost_per_interaction"] == row["estimated_cost_usd"] == 0.00045
    assert row["user_sentiment_compound"] > -0.05  # not negative, and a lead: high
    assert row["user_satisfaction"] == "high"

    angry = _enriched(_turn(user_message="This is terrible, nothing works and I hate it!",
                            tools_used=[], tool_results={}, model_name="acme-internal",
                            conversation_context={"previous_turns": 0}))
    assert angry["user_satisfaction"] == "low"
    assert angry["cost_per_interaction"] is None  # no price for the model
    # no buying phrase, no lead, no high-value topic, first turn: the prior
    assert angry["conversion_probability"] == pytest.approx(0.02)


def test_conversation_summary_carries_the_three_fields():
    rows = [_enriched(_turn(turn_id="t1", timestamp=T0, model_name="acme-internal",
                            user_message="Hello there", tools_used=[], tool_results={})),
            _enriched(_turn(turn_id="t2", timestamp=T0 + 60_000))]
    summary = summarise_conversation({r["turn_id"]: conversation_entry(r) for r in rows})
    assert summary["conversion_probability"] == max(r["conversion_probability"] for r in rows)
    assert summary["cost_per_interaction"] == 0.00045  # t1 is unpriced
    assert summary["user_satisfaction"] in ("medium", "high")
    assert summary["user_satisfaction"] == outcomes.conversation_user_satisfaction(
        summary["sentiment_last"], summary["sentiment_trend"], summary["lead_captured"])


def test_old_conversation_entries_still_load():
    """State written before the field existed lacks it: it reads as None."""
    entry = conversation_entry(_enriched(BASE))
    old = type(entry)(*entry[:-1])
    assert old.conversion_probability is None
    assert summarise_conversation({"t": old})["conversion_probability"] is None


# -- the archive schema -------------------------------------------------------
def test_archive_schema_holds_the_fields_and_reads_old_records():
    new_schema = schema_json("agent_turn_v1")
    record = archive_record(_enriched(BASE))
    parsed = fastavro.parse_schema(new_schema)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, record)
    buf.seek(0)
    back = fastavro.schemaless_reader(buf, parsed)
    assert (back["conversion_probability"], back["cost_per_interaction"],
            back["user_satisfaction"]) == (pytest.approx(0.92), 0.00045, "high")

    # a record written by the schema before these fields: read with the new one
    added = {"conversion_probability", "cost_per_interaction", "user_satisfaction"}
    old_schema = dict(new_schema, fields=[f for f in new_schema["fields"] if f["name"] not in added])
    old_parsed = fastavro.parse_schema(old_schema)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, old_parsed, {k: v for k, v in record.items() if k not in added})
    buf.seek(0)
    back = fastavro.schemaless_reader(buf, old_parsed, parsed)
    assert all(back[name] is None for name in added)
    assert back["turn_id"] == record["turn_id"]
