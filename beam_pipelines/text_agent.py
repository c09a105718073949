"""The text-agent pipeline: completed agent turns -> agent tables, live state, archive.

Run it locally on generated sample turns, writing to embedded defaults (a
DuckDB file and an Avro folder under ``./output``)::

    python -m beam_pipelines.text_agent

Read a file of your own (one ``text_agent.turn_completed`` payload per line),
or Kafka (bounded backfill or streaming), and write to real services::

    python -m beam_pipelines.text_agent --input=turns.jsonl.gz
    python -m beam_pipelines.text_agent --kafka_bootstrap=127.0.0.1:19092 \\
        --postgres_dsn="host=127.0.0.1 port=15433 dbname=analytics user=iheard password=iheard" \\
        --redis_url=redis://127.0.0.1:16380/0 --archive_path=s3://iheardai-archive/archive \\
        --s3_endpoint_url=http://127.0.0.1:19000
    python -m beam_pipelines.text_agent --profile=flink-local --streaming --kafka_bootstrap=...

Write sample turns (JSON lines) for a demo or a benchmark::

    python -m beam_pipelines.text_agent --generate=5000 --output=turns.jsonl.gz

The chain (every step labelled as it appears in the Flink dashboard)::

    ReadJsonLines | ReadFromKafka -> ParseTurns -> DedupeTurns -> EnrichTurns (PII first)
        |-> WriteToPostgres[agent_turns]        (or WriteToEmbeddedDb[agent_turns])
        |-> ToArchiveRecords -> ArchiveTurns (Avro, source=text_agent/date=/hour=)
        |-> AggregateConversations -> agent_conversations (+ WriteConversationState)
        '-> AggregateBillingHourly -> agent_billing_hourly (+ WriteCostToday)
    every failed output -> RedactDeadLetters<i> -> FlattenFailures -> failed_events
                           (+ dead-letter topic)

Dedupe key: (session_id, turn_id), the agent_turns key, so a turn re-sent
with a new timestamp (a new event_id) is still dropped. In streaming
(``--streaming``) conversation and billing rows also fire early, every
EARLY_FIRING_SECONDS, and the archive is cut into 5-minute windows.

Redis keys (when ``--redis_url`` is set): ``iheard:text_agent:session:<id>``
(latest conversation pane) and ``iheard:text_agent:cost:<tenant>:<YYYY-MM-DD>``
(cost and turns per model and hour; ``transforms.text_agent.read_cost_today``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import typing

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipelines import common
from beam_pipelines.generate import write_lines
from beam_pipelines.options import Connections, IheardOptions

__all__ = ["build_pipeline", "run", "sample_turns", "TEXT_AGENT_TOPIC", "turn_key"]

_LOG = logging.getLogger(__name__)

PIPELINE = "text_agent"
TEXT_AGENT_TOPIC = "text_agent_turn_completed"
AGENT_TURN_SCHEMA = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "schemas", "avro",
    "agent_turn_v1.avsc")
# In streaming, conversation rows and Redis state refresh this often before a
# session closes; archive files are cut per window of this many seconds.
EARLY_FIRING_SECONDS = 30
STREAMING_ARCHIVE_WINDOW_SECONDS = 5 * 60
# A tenant's day is "today" somewhere for up to ~50 h; keep the hash for three.
DAILY_COST_TTL_SECONDS = 3 * 24 * 60 * 60


def turn_key(event: typing.Mapping) -> str:
    """A turn's identity: (session_id, turn_id), the agent_turns key. A
    re-sent turn with a new timestamp has a new event_id but the same key."""
    return f"{event['session_id']}\x1f{event['turn_id']}"


def _load_avro_schema(path: str = AGENT_TURN_SCHEMA) -> dict:
    with open(path, "r", encoding="utf-8") as handle:
        return json.load(handle)


def _version_of_conversation(row: typing.Mapping) -> int:
    """Newer pane -> larger number: last turn time, then turn count."""
    from schemas.tables import to_utc_datetime

    last = to_utc_datetime(row.get("last_turn_at"))
    last_ms = int(last.timestamp() * 1000) if last else 0
    return last_ms * 1000 + min(int(row.get("turn_count") or 0), 999)


def build_pipeline(
    pipeline: beam.Pipeline,
    records: beam.PCollection,
    conns: Connections,
    opts: IheardOptions,
    streaming: bool = False,
    batched: bool = False,
) -> typing.Dict[str, beam.PCollection]:
    """Applies the text-agent chain to ``records`` (``PCollection[SourceRecord]``,
    or with ``batched`` lists of them: parse and de-duplication then work on
    lists, see transforms/batches.py).

    Returns the main intermediate collections (for tests and benchmarks).
    """
    from schemas.text_agent import TextAgentTurn
    from transforms.dedupe import DedupeEvents
    from transforms.parse import ParseEvents
    from transforms.text_agent import (
        AggregateBillingHourly,
        AggregateConversations,
        EnrichTurns,
        archive_record,
    )

    decoder = None
    if opts.kafka_format == "avro":
        from schemas.avro import load_schema

        decoder = common.kafka_decoder(opts, load_schema("envelope_v1"))
    parsed = records | "ParseTurns" >> ParseEvents(
        TextAgentTurn, PIPELINE, decoder=decoder, batched=batched)
    unique = parsed[ParseEvents.VALID] | "DedupeTurns" >> DedupeEvents(
        key_fn=turn_key, ttl_seconds=opts.dedupe_ttl_seconds, namespace=PIPELINE,
        batched=batched, buckets=opts.dedupe_buckets)
    if batched:
        from transforms.batches import ExplodeBatches

        unique = unique | "ExplodeBatches" >> ExplodeBatches()
    enriched = unique | "EnrichTurns" >> EnrichTurns(conns.pii_secret, PIPELINE)
    turns = enriched[EnrichTurns.VALID]
    early = EARLY_FIRING_SECONDS if streaming else None
    conversations = common.count(
        turns | "AggregateConversations" >> AggregateConversations(
            gap_seconds=opts.session_gap_seconds,
            allowed_lateness_seconds=opts.allowed_lateness_seconds,
            early_firing_seconds=early),
        PIPELINE, "session_panes", "CountConversationPanes")
    billing = common.count(
        turns | "AggregateBillingHourly" >> AggregateBillingHourly(
            allowed_lateness_seconds=opts.allowed_lateness_seconds,
            early_firing_seconds=early),
        PIPELINE, "billing_panes", "CountBillingPanes")

    from iheard_io.archive import WriteToArchive

    archived_failures = (
        turns
        | "ToArchiveRecords" >> beam.Map(archive_record)
        | "ArchiveTurns" >> WriteToArchive(
            conns.archive_path, source=PIPELINE, schema=_load_avro_schema(),
            window_seconds=STREAMING_ARCHIVE_WINDOW_SECONDS if streaming else None,
            pipeline=PIPELINE)
    )
    failures = [
        parsed[ParseEvents.FAILED],
        enriched[EnrichTurns.FAILED],
        common.write_rows(turns, "agent_turns", conns, PIPELINE, streaming),
        common.write_rows(conversations, "agent_conversations", conns, PIPELINE, streaming),
        common.write_rows(billing, "agent_billing_hourly", conns, PIPELINE, streaming),
        archived_failures,
    ]
    if conns.redis_url:
        failures.extend(_write_live_state(conversations, billing, conns))
    common.write_dead_letters(failures, conns, PIPELINE)
    return {"turns": turns, "conversations": conversations, "billing": billing}


def _write_live_state(conversations, billing, conns: Connections):
    from iheard_io.redis_io import WriteSessionState
    from transforms.text_agent import DAILY_COST_PREFIX, SESSION_STATE_PREFIX, daily_cost_state

    return [
        conversations | "WriteConversationState" >> WriteSessionState(
            conns.redis_url, key_prefix=SESSION_STATE_PREFIX,
            version_fn=_version_of_conversation, pipeline=PIPELINE,
            password_file=conns.redis_password_file),
        billing
        | "ToDailyCostFields" >> beam.Map(daily_cost_state)
        | "WriteCostToday" >> WriteSessionState(
            conns.redis_url, key_prefix=DAILY_COST_PREFIX,
            ttl_seconds=DAILY_COST_TTL_SECONDS,
            session_key_fn=lambda e: e["_key"],
            # Every hour's fields are independent: never skip a write.
            version_fn=lambda e: 0, pipeline=PIPELINE,
            password_file=conns.redis_password_file),
    ]


# --------------------------------------------------------------------------
# Sample turns (demo, tests, benchmarks)
# --------------------------------------------------------------------------
_MODELS = ["claude-3-sonnet", "claude-3-5-sonnet-20241022", "gpt-4o", "gpt-4o-mini",
           "gemini-1.5-flash", "llama-3.1-70b-instruct", "mistral-large-latest",
           "o3-mini", "command-r", "acme-internal-v2"]
_EXCHANGES = [
    ("How much does the Pro plan cost per seat?",
     "The Pro plan is $49 per seat per month, billed annually. Volume discounts start at 50 seats.",
     ["pricing"], "pricing_inquiry"),
    ("Can I book a demo for my team next week?",
     "Absolutely! I can schedule a demo. What day works best for your team?",
     ["demo"], "demo_request"),
    ("Does it integrate with Salesforce and HubSpot?",
     "Yes, we have native integrations with Salesforce and HubSpot, plus a REST API and webhooks.",
     ["integration"], "integration_question"),
    ("The widget is not working on my checkout page, I get an error.",
     "Sorry about that. Could you share the browser and the exact error message so I can help fix it?",
     ["support"], "support"),
    ("Are you SOC 2 compliant and GDPR ready?",
     "Yes. We are SOC 2 Type II certified and GDPR compliant; data is encrypted at rest and in transit.",
     ["security"], "security_review"),
    ("I want to buy the enterprise plan, please contact me at {email}",
     "Thank you! Our sales team will reach out to you within one business day.",
     ["pricing", "contact"], "purchase"),
    ("How do I get started with the setup?",
     "Getting started takes five minutes: install the snippet, configure your widget and go live.",
     ["onboarding"], "onboarding"),
    ("This is terrible, nothing works and support never answers!",
     "I'm sorry for the frustration. I can't help with account refunds here, but I've escalated this.",
     ["support"], "complaint"),
    ("How are you different from Intercom?",
     "Unlike Intercom, our assistant is trained on your catalogue and qualifies leads automatically.",
     ["competitor"], "comparison"),
    ("Call me at {phone} about pricing for 200 seats",
     "Happy to! A sales rep will call you today about volume pricing.",
     ["pricing", "contact"], "purchase"),
    ("¿Cuánto cuesta el plan profesional?",
     "El plan profesional cuesta 49 dólares por usuario al mes.",
     [], "pricing_inquiry"),
    ("Can I see my last invoice?",
     "Something went wrong while loading your invoices. Please try again later.",
     ["billing"], "billing"),
]
_TOOLS = ["search_docs", "capture_lead", "book_demo", "crm_lookup", "pricing_calculator"]
_TENANTS = ["acme", "globex", "initech", None]


def sample_turns(n_sessions: int = 200, seed: int = 7, start_ms: int = 1_741_000_000_000,
                 malformed_share: float = 0.02, duplicate_share: float = 0.03
                 ) -> typing.List[str]:
    """JSON lines of ``text_agent.turn_completed`` payloads as the seed's
    ``on_turn_completed`` sends them, for ``n_sessions`` conversations of 1-6
    turns. A share of lines is malformed and a share repeated (producer
    retries). Deterministic for a given ``seed`` and ``start_ms``."""
    rng = random.Random(seed)
    lines: typing.List[str] = []
    for s in range(n_sessions):
        session_id = f"sess_{seed}_{s:06d}"
        user_id = f"user_{rng.randrange(10_000):05d}" if rng.random() < 0.8 else None
        tenant = rng.choice(_TENANTS)
        model = rng.choice(_MODELS)
        ts = start_ms + rng.randrange(0, 6 * 3600 * 1000)
        topic_history: typing.List[str] = []
        for t in range(rng.randint(1, 6)):
            question, answer, topics, intent = rng.choice(_EXCHANGES)
            question = question.format(email=f"jane.doe{s}@example.com",
                                       phone=f"+1 415 555 {rng.randrange(1000, 9999)}")
            tools = rng.sample(_TOOLS, rng.choice([0, 0, 1, 1, 2]))
            tokens_in = rng.randint(200, 3000)
            tokens_out = rng.randint(20, 600)
            payload = {
                "event_type": "text_agent.turn_completed",
                "session_id": session_id,
                "turn_id": f"turn_{(ts // 1000) + t}",
                "user_id": user_id,
                "channel": rng.choice(["web_chat", "web_chat", "widget", "sms"]),
                "model_name": model,
                "tokens_in": tokens_in,
                "tokens_out": tokens_out,
                "latency_ms": round(rng.uniform(300, 9000), 1),
                "response_text": answer,
                "user_message": question,
                "tools_used": tools,
                "tool_results": {name: {"success": rng.random() < 0.85} for name in tools},
                "conversation_context": {
                    "previous_turns": t,
                    "topic_history": list(topic_history),
                    "user_intent": intent,
                },
                "timestamp": ts,
            }
            if tenant:
                payload["tenant_id"] = tenant
            if rng.random() < 0.2:
                payload["cached_tokens_in"] = rng.randint(0, tokens_in)
            topic_history.extend(topics)
            line = json.dumps(payload, sort_keys=True)
            roll = rng.random()
            if roll < malformed_share:
                line = rng.choice([
                    line[: len(line) // 2],
                    json.dumps(dict(payload, tokens_in=-5)),
                    json.dumps({k: v for k, v in payload.items() if k != "session_id"}),
                    json.dumps(dict(payload, timestamp="not a time")),
                ])
            lines.append(line)
            if roll > 1 - duplicate_share:
                lines.append(line)
            ts += rng.randint(5_000, 240_000)
    return lines


def run(argv: typing.Optional[typing.List[str]] = None, runner=None):
    """Parses ``argv``, builds and runs the pipeline; returns the PipelineResult.
    ``runner`` (a runner instance) overrides ``--runner`` (tests name theirs)."""
    from runners.profiles import expand_argv

    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--generate", type=int, help="Write this many sample sessions and exit.")
    pre.add_argument("--output", default="text_agent_turns.jsonl.gz")
    pre.add_argument("--seed", type=int, default=7)
    known, rest = pre.parse_known_args(argv)
    if known.generate:
        n = write_lines(sample_turns(known.generate, seed=known.seed), known.output)
        print(f"wrote {n} lines to {known.output}", flush=True)
        return None

    common.exit_with_help_if_asked(rest, "python -m beam_pipelines.text_agent",
                                   __doc__.splitlines()[0])
    argv = expand_argv(rest)
    options = PipelineOptions(argv)
    opts = options.view_as(IheardOptions)
    if not opts.input and not opts.kafka_bootstrap:
        sample = os.path.join(opts.output_dir or "output", "text_agent_sample.jsonl.gz")
        write_lines(sample_turns(), sample)
        _LOG.info("no --input or --kafka_bootstrap: using generated sample turns %s", sample)
        opts.input = sample
    return common.run_job(options, opts, TEXT_AGENT_TOPIC, build_pipeline, PIPELINE, runner=runner)

if __name__ == "__main__":
    common.configure_cli_logging()
    run()
