"""Text-agent composites on the FnApiRunner: EnrichTurns (PII first, dead
letters), AggregateConversations and AggregateBillingHourly (hand-computed
aggregates, duplicates counted once), and the whole job on embedded outputs
(no raw PII in any table, archive file or dead letter)."""
import copy
import glob
import json
import os

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from schemas.records import SourceRecord
from schemas.text_agent import TextAgentTurn
from tests.unit.conftest import SECRET, fn_api_runner
from transforms.parse import parse_record
from transforms.text_agent import EnrichTurns, TurnEnricher, redact_turn
from transforms.text_agent_aggregates import (
    AggregateBillingHourly,
    AggregateConversations,
    conversation_entry,
    summarise_conversation,
)
from transforms.pii import PiiRedactor

T0 = 1_741_000_000_000  # 2025-03-03T11:06:40Z
EMAIL = "jane.doe@example.com"
PHONE = "+1 415 555 0134"

BASE = {
    "event_type": "text_agent.turn_completed",
    "session_id": "sess_a",
    "turn_id": "turn_1",
    "user_id": "user_7",
    "channel": "web_chat",
    "model_name": "gpt-4o-mini",
    "tokens_in": 1000,
    "tokens_out": 500,
    "latency_ms": 2000.0,
    "response_text": "Great, our sales team will email you the enterprise quote today.",
    "user_message": f"I want to buy 50 seats, mail me at {EMAIL} or call {PHONE}",
    "tools_used": ["capture_lead"],
    "tool_results": {"capture_lead": {"success": True, "note": f"lead {EMAIL} saved"}},
    "conversation_context": {"previous_turns": 1, "topic_history": [], "user_intent": "purchase"},
    "timestamp": T0,
    "tenant_id": "acme",
    "contact_hint": f"{EMAIL}",
}


def _turn(**changes):
    payload = copy.deepcopy(BASE)
    payload.update(changes)
    return payload


def _event(payload):
    return parse_record(json.dumps(payload), TextAgentTurn)


def test_redact_turn_covers_every_text_field():
    event = _event(BASE)
    redacted, user_counts, total = redact_turn(event, PiiRedactor(SECRET))
    blob = json.dumps(redacted, default=str)
    assert EMAIL not in blob and "555 0134" not in blob
    assert user_counts == {"email": 1, "phone": 1}
    # user message (2) + tool note (1) + extra contact_hint (1)
    assert total["email"] == 3
    assert redacted["user_message"].startswith("I want to buy 50 seats, mail me at [EMAIL:")


def test_enricher_builds_a_full_row():
    event = _event(BASE)
    redacted, user_counts, total = redact_turn(event, PiiRedactor(SECRET))
    row = TurnEnricher().enrich(redacted, user_counts, total)
    assert row["tenant_id"] == "acme" and row["model_family"] == "gpt"
    # 2025.02, gpt-4o-mini: (1000 * 0.15 + 500 * 0.60) / 1e6 = 0.00045
    assert row["estimated_cost_usd"] == 0.00045 and row["price_book_version"] == "2025.02"
    assert row["total_tokens"] == 1500 and row["tokens_per_second"] == 250.0
    assert row["lead_captured"] is True
    assert row["business_value_factors"]["lead_contact_kinds"] == ["email", "phone"]
    assert row["language"] == "en" and "pricing" in row["topics"]
    assert row["pii_redactions"] == {"email": 3, "phone": 1}


def _run_enrich(payloads):
    with BeamTestPipeline(runner=fn_api_runner()) as p:
        events = p | beam.Create([_event(x) for x in payloads])
        out = events | EnrichTurns(SECRET)
        ok = out[EnrichTurns.VALID] | "OkKeys" >> beam.Map(lambda r: (r["turn_id"], json.dumps(r, default=str)))
        bad = out[EnrichTurns.FAILED] | "BadStage" >> beam.Map(lambda f: (f.stage, f.raw))
        assert_that(ok | "NoRawPii" >> beam.Map(lambda kv: EMAIL in kv[1] or "555 0134" in kv[1]),
                    equal_to([False, False]), label="NoRawPiiInRows")
        assert_that(ok | "Ids" >> beam.Map(lambda kv: kv[0]), equal_to(["turn_1", "turn_2"]),
                    label="BothTurnsEnriched")
        assert_that(bad, equal_to([]), label="NoFailures")


def test_enrich_turns_composite_never_emits_raw_pii():
    _run_enrich([_turn(), _turn(turn_id="turn_2", model_name="acme-internal")])


def test_enrich_failure_goes_to_dead_letter_with_redacted_payload():
    event = _event(BASE)
    event["timestamp_ms"] = None  # a bug in enrichment, not in the data
    with BeamTestPipeline(runner=fn_api_runner()) as p:
        out = p | beam.Create([event]) | EnrichTurns(SECRET)
        stages = out[EnrichTurns.FAILED] | beam.Map(
            lambda f: (f.stage, f.pipeline, EMAIL in f.raw, "[EMAIL:" in f.raw, bool(f.error_message)))
        assert_that(stages, equal_to([("enrich", "text_agent", False, True, True)]))
        assert_that(out[EnrichTurns.VALID] | "Count" >> beam.combiners.Count.Globally(),
                    equal_to([0]), label="NoValid")


def _enriched_rows(payloads):
    redactor, enricher = PiiRedactor(SECRET), TurnEnricher()
    rows = []
    for payload in payloads:
        redacted, user_counts, total = redact_turn(_event(payload), redactor)
        rows.append(enricher.enrich(redacted, user_counts, total))
    return rows


def test_aggregate_conversations_window_and_duplicates():
    # Session a: turns at T0, T0+60s, T0+120s (+ a duplicate of the second);
    # gap 30 min -> one window [T0, T0+120s+30min).
    # tokens_in 1000+2000+3000 = 6000 ; latency 2000, 4000, 3000 -> mean 3000, max 4000
    # session b: one turn at T0 + 2h.
    payloads = [
        _turn(turn_id="t1", user_message="This is great, thank you!", tokens_in=1000),
        _turn(turn_id="t2", user_message="Hmm, ok.", tokens_in=2000, latency_ms=4000.0,
              timestamp=T0 + 60_000),
        _turn(turn_id="t3", user_message="This is terrible and useless.", tokens_in=3000,
              latency_ms=3000.0, timestamp=T0 + 120_000,
              tool_results={"capture_lead": {"success": False}}),
        _turn(turn_id="b1", session_id="sess_b", timestamp=T0 + 7_200_000),
    ]
    rows = _enriched_rows(payloads)
    rows.append(dict(rows[1]))  # a duplicate delivery
    compounds = {r["turn_id"]: r["user_sentiment_compound"] for r in rows}
    assert compounds["t1"] > 0.05 and compounds["t3"] < -0.05

    def pick(r):
        return (r["session_id"], r["turn_count"], r["tokens_in"], r["mean_latency_ms"],
                r["max_latency_ms"], r["tool_calls"], r["tool_successes"],
                r["sentiment_trend"], r["window_start"], r["window_end"])

    with BeamTestPipeline(runner=fn_api_runner()) as p:
        turns = p | beam.Create(rows) | beam.Map(lambda r: TimestampedValue(r, r["timestamp_ms"] / 1000))
        out = turns | AggregateConversations(gap_seconds=1800) | beam.Map(pick)
        assert_that(out, equal_to([
            ("sess_a", 3, 6000, 3000.0, 4000.0, 3, 2,
             round(compounds["t3"] - compounds["t1"], 4),
             "2025-03-03T11:06:40+00:00", "2025-03-03T11:38:40+00:00"),
            ("sess_b", 1, 1000, 2000.0, 2000.0, 1, 1, 0.0,
             "2025-03-03T13:06:40+00:00", "2025-03-03T13:36:40+00:00"),
        ]))


def test_aggregate_billing_hourly_is_per_tenant_model_hour():
    # acme/gpt-4o-mini 11:00 hour: t1 (1000/500) + t2 (2000/100) ; dup of t2 ignored
    #   cost = (1000*0.15 + 500*0.60)/1e6 + (2000*0.15 + 100*0.60)/1e6
    #        = 0.00045 + 0.00036 = 0.00081
    # acme/gpt-4o-mini 12:00 hour: t3 at 12:10 -> 0.00045
    # default tenant (no tenant_id): t4 -> its own row
    payloads = [
        _turn(turn_id="t1"),
        _turn(turn_id="t2", tokens_in=2000, tokens_out=100, timestamp=T0 + 60_000),
        _turn(turn_id="t3", timestamp=T0 + 3_800_000),
        {k: v for k, v in _turn(turn_id="t4").items() if k != "tenant_id"},
    ]
    rows = _enriched_rows(payloads)
    rows.append(dict(rows[1]))
    with BeamTestPipeline(runner=fn_api_runner()) as p:
        turns = p | beam.Create(rows) | beam.Map(lambda r: TimestampedValue(r, r["timestamp_ms"] / 1000))
        out = turns | AggregateBillingHourly() | beam.Map(
            lambda r: (r["tenant_id"], r["model"], r["hour"], r["turns"], r["tokens_in"],
                       r["tokens_out"], r["estimated_cost_usd"]))
        assert_that(out, equal_to([
            ("acme", "gpt-4o-mini", "2025-03-03T11:00:00+00:00", 2, 3000, 600, 0.00081),
            ("acme", "gpt-4o-mini", "2025-03-03T12:00:00+00:00", 1, 1000, 500, 0.00045),
            ("default", "gpt-4o-mini", "2025-03-03T11:00:00+00:00", 1, 1000, 500, 0.00045),
        ]))


def test_summarise_conversation_slope():
    rows = _enriched_rows([_turn(turn_id=f"t{i}", timestamp=T0 + i * 1000) for i in range(3)])
    entries = {r["turn_id"]: conversation_entry(r) for r in rows}
    # Patch compounds -0.5, 0.0, 0.5: slope = sum((i-1)*(y-0))/sum((i-1)^2) = 1.0/2 = 0.5
    for key, value in zip(sorted(entries), (-0.5, 0.0, 0.5)):
        entries[key] = entries[key]._replace(user_sentiment_compound=value)
    summary = summarise_conversation(entries)
    assert summary["sentiment_slope"] == 0.5 and summary["sentiment_trend"] == 1.0
    assert summary["sentiment_mean"] == 0.0


# -- the whole job on embedded outputs ----------------------------------------
def test_whole_job_on_embedded_outputs(tmp_path):
    import duckdb
    import fastavro

    from beam_pipelines import text_agent
    from beam_pipelines.options import IheardOptions, resolve_connections
    from iheard_io.embedded import close_embedded, ensure_embedded_schema

    lines = [json.dumps(_turn(turn_id=f"t{i}", timestamp=T0 + i * 60_000)) for i in range(4)]
    lines.append(lines[0])  # producer retry
    lines.append(json.dumps(_turn(turn_id="bad", tokens_in=-1)))  # dead letter with PII in it
    lines.append('{"session_id": "x", "user_message": "call ' + PHONE + '"')  # broken JSON
    records = [SourceRecord(value=l.encode(), topic=text_agent.TEXT_AGENT_TOPIC, offset=i)
               for i, l in enumerate(lines)]

    opts = IheardOptions([f"--output_dir={tmp_path}", f"--pii_secret={SECRET.decode()}"])
    conns = resolve_connections(opts, env={})
    ensure_embedded_schema(conns.embedded_db)
    with BeamTestPipeline(runner=fn_api_runner(), options=opts) as p:
        text_agent.build_pipeline(p, p | beam.Create(records), conns, opts)
    close_embedded(conns.embedded_db)

    db = duckdb.connect(conns.embedded_db, read_only=True)
    try:
        assert db.execute("select count(*) from agent_turns").fetchone()[0] == 4
        conv = db.execute("select turn_count, tokens_in from agent_conversations").fetchall()
        assert conv == [(4, 4000)]
        bill = db.execute("select sum(turns), sum(estimated_cost_usd) from agent_billing_hourly").fetchone()
        # 4 turns * 0.00045 = 0.0018
        assert bill[0] == 4 and float(bill[1]) == pytest.approx(0.0018)
        # the outcome fields reach both tables (transforms/text_agent_outcomes.py)
        turns = db.execute("select conversion_probability, cost_per_interaction, user_satisfaction "
                           "from agent_turns").fetchall()
        assert {(round(p, 4), float(c), s) for p, c, s in turns} == {(0.92, 0.00045, "high")}
        conv = db.execute("select conversion_probability, cost_per_interaction, user_satisfaction "
                          "from agent_conversations").fetchall()
        assert [(round(p, 4), float(c), s) for p, c, s in conv] == [(0.92, 0.00045, "high")]
        failed = db.execute("select stage, raw_payload from failed_events order by stage").fetchall()
        assert [f[0] for f in failed] == ["decode", "validate"]
        dumps = [json.dumps(r, default=str) for t in
                 ("agent_turns", "agent_conversations", "agent_billing_hourly", "failed_events")
                 for r in db.execute(f"select * from {t}").fetchall()]
    finally:
        db.close()
    assert all(EMAIL not in d and "555 0134" not in d for d in dumps)

    files = glob.glob(os.path.join(conns.archive_path, "source=text_agent", "**", "*.avro"),
                      recursive=True)
    archived = []
    for path in files:
        with open(path, "rb") as handle:
            archived.extend(fastavro.reader(handle))
    assert sorted(r["turn_id"] for r in archived) == ["t0", "t1", "t2", "t3"]
    assert all(EMAIL not in json.dumps(r) and "555 0134" not in json.dumps(r) for r in archived)
    assert all("[EMAIL:" in r["user_message"] for r in archived)
    assert {r["user_satisfaction"] for r in archived} == {"high"}


def test_late_turn_restates_conversation_and_billing_panes():
    """TestStream on the BundleBasedDirectRunner (streaming), gap 30 min,
    lateness 2 h. Times after T0 = 11:06:40::

        +0 s t1, +60 s t2      watermark -> +3600 s: session [+0, +1860) fires
                               on time with 2 turns (pane 0); hour 11:00 fires
                               at 12:00 with 2 turns (pane 0)
        late t3 at +120 s      arrives after the watermark passed both ends:
                               late panes with 3 turns, same keys
                               (session window start, hour), so the sinks'
                               upserts replace the on-time rows.
    """
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
    from apache_beam.testing.test_stream import TestStream as BeamTestStream

    rows = _enriched_rows([
        _turn(turn_id="t1"),
        _turn(turn_id="t2", timestamp=T0 + 60_000),
        _turn(turn_id="t3", timestamp=T0 + 120_000),
    ])
    t0_s = T0 / 1000
    stream = (BeamTestStream()
              .advance_watermark_to(t0_s)
              .add_elements([TimestampedValue(rows[0], t0_s), TimestampedValue(rows[1], t0_s + 60)])
              .advance_watermark_to(t0_s + 3600)
              .add_elements([TimestampedValue(rows[2], t0_s + 120)])
              .advance_watermark_to(t0_s + 4000)
              .advance_watermark_to_infinity())
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    with BeamTestPipeline(runner="BundleBasedDirectRunner", options=options) as p:
        turns = p | stream
        conversations = turns | AggregateConversations(
            gap_seconds=1800, allowed_lateness_seconds=7200) | "ConvPanes" >> beam.Map(
            lambda r: (r["window_start"], r["turn_count"]))
        billing = turns | AggregateBillingHourly(allowed_lateness_seconds=7200) | "BillPanes" >> beam.Map(
            lambda r: (r["hour"], r["turns"], r["pane_index"]))
        # (Session windows merge the late turn's window into the fired one;
        # the runner restarts the pane count of a merged window, so only the
        # fixed-window billing pane has index 1. Nothing keys on pane_index.)
        assert_that(conversations, equal_to([
            ("2025-03-03T11:06:40+00:00", 2),
            ("2025-03-03T11:06:40+00:00", 3),
        ]), label="ConversationPanes")
        assert_that(billing, equal_to([
            ("2025-03-03T11:00:00+00:00", 2, 0),
            ("2025-03-03T11:00:00+00:00", 3, 1),
        ]), label="BillingPanes")


def test_daily_cost_state_fields_are_per_model_and_hour():
    from iheard_io.redis_io import daily_cost_state

    row = {"tenant_id": "acme", "model": "gpt-4o", "hour": "2025-03-03T11:00:00+00:00",
           "estimated_cost_usd": 0.0123, "turns": 4}
    state = daily_cost_state(row)
    assert state == {"_key": "acme:2025-03-03", "cost:gpt-4o:11": 0.0123, "turns:gpt-4o:11": 4}

    # read_cost_today is checked against the real Redis in
    # tests/integration/test_text_agent_pipeline.py.
