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
        |-> WriteToSnowflake[AGENT_TURNS]       (when configured)
        |-> ToArchiveRecords -> ArchiveTurns (Avro, source=text_agent/date=/hour=)
        |-> AggregateConversations -> agent_conversations (+ WriteConversationState)
        '-> AggregateBillingHourly -> agent_billing_hourly (+ WriteCostToday)
    every failed output -> FlattenFailures -> RedactDeadLetters -> failed_events
                           (+ dead-letter topic)

Dedupe key: (session_id, turn_id), the agent_turns key, so a turn re-sent
with a new timestamp (a new event_id) is still dropped; bounded runs dedupe
with a GroupByKey, streaming ones with per-key state (``DedupeEvents``). In streaming
(``--streaming``) conversation and billing rows also fire early, every
EARLY_FIRING_SECONDS, and the archive is cut into 5-minute windows.

Redis keys (when ``--redis_url`` is set): ``iheard:text_agent:session:<id>``
(latest conversation pane) and ``iheard:text_agent:cost:<tenant>:<YYYY-MM-DD>``
(cost and turns per model and hour; ``iheard_io.redis_io.read_cost_today``).
"""
from __future__ import annotations

import logging
import os
import sys
import typing

import apache_beam as beam

from beam_pipelines import cli, common
from beam_pipelines.generate import sample_turns
from beam_pipelines.options import Connections, IheardOptions
from iheard_io.redis_io import (
    DAILY_COST_PREFIX,
    DAILY_COST_TTL_SECONDS,
    WriteSessionState,
    daily_cost_state,
    session_state_prefix,
)
from schemas.avro import load_schema
from schemas.text_agent import TextAgentTurn
from transforms.batches import ExplodeBatches
from transforms.dedupe import DedupeEvents
from transforms.parse import ParseEvents
from transforms.text_agent import PIPELINE, EnrichTurns, archive_record, turn_key
from transforms.text_agent_aggregates import (
    AggregateBillingHourly,
    AggregateConversations,
    conversation_version,
)

__all__ = ["build_pipeline", "chain", "run", "TEXT_AGENT_TOPIC"]

_LOG = logging.getLogger(__name__)

TEXT_AGENT_TOPIC = "text_agent_turn_completed"
# In streaming, conversation rows and Redis state refresh this often before a
# session closes.
EARLY_FIRING_SECONDS = 30


def chain(conns: Connections, opts: IheardOptions, batched: bool = False):
    """The per-turn steps that can fail on data, in order: parse, then
    redact + enrich (de-duplication, between them, fails nothing).
    ``build_pipeline`` applies them; a replay's dry run runs their DoFns
    in-process (``dofn()``), so both judge a record the same way."""
    return (
        ParseEvents(TextAgentTurn, PIPELINE, decoder=common.input_decoder(
            conns, opts, "envelope_v1", PIPELINE), batched=batched),
        # archived turns (beam_pipelines/reprocess.py) are redacted already
        EnrichTurns(conns.pii_secret, PIPELINE,
                    count_existing_tokens=conns.archive_input is not None),
    )


def build_pipeline(pipeline: beam.Pipeline, records: beam.PCollection, conns: Connections,
                   opts: IheardOptions, streaming: bool = False, batched: bool = False,
                   aggregates: bool = True, archive_prefix: str = "part",
                   ) -> typing.Dict[str, beam.PCollection]:
    """Applies the text-agent chain to ``records`` (``PCollection[SourceRecord]``,
    or with ``batched`` lists of them: parse and de-duplication then work on
    lists, see transforms/batches.py).

    Returns the main intermediate collections (for tests and benchmarks).

    ``aggregates=False`` (a dead-letter replay: a few turns of conversations
    and billing hours other turns filled) computes and writes neither
    ``agent_conversations`` nor ``agent_billing_hourly`` (nor their Redis
    state): the caller recomputes them from all their turns afterwards
    (``beam_pipelines.aggregates``); ``conversations`` and ``billing`` are
    then None. ``archive_prefix``: the archive files' name prefix.
    """
    # An archive re-run writes no aggregates of its own either: they are
    # recomputed from the tables after it (beam_pipelines/reprocess.py).
    aggregates = aggregates and conns.archive_input is None
    parse, enrich = chain(conns, opts, batched)
    parsed = records | "ParseTurns" >> parse
    unique = parsed[ParseEvents.VALID] | "DedupeTurns" >> DedupeEvents(
        key_fn=turn_key, ttl_seconds=opts.dedupe_ttl_seconds, namespace=PIPELINE,
        streaming=streaming, batched=batched, buckets=opts.dedupe_buckets)
    if batched:
        unique = unique | "ExplodeBatches" >> ExplodeBatches()
    enriched = unique | "EnrichTurns" >> enrich
    turns = enriched[EnrichTurns.VALID]
    if not aggregates:
        failures = [
            parsed[ParseEvents.FAILED],
            enriched[EnrichTurns.FAILED],
            common.write_rows(turns, "agent_turns", conns, PIPELINE, streaming),
            _archive_turns(turns, conns, streaming, archive_prefix),
            *common.write_warehouse_rows(turns, "agent_turns", conns, PIPELINE, streaming),
        ]
        common.write_dead_letters(failures, conns, PIPELINE)
        return {"turns": turns, "conversations": None, "billing": None}
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

    # (The order of this list numbers the GlobalWindowFailures<i> steps: kept
    # as it was, so a streaming job's savepoint still maps onto its operators.)
    failures = [
        parsed[ParseEvents.FAILED],
        enriched[EnrichTurns.FAILED],
        common.write_rows(turns, "agent_turns", conns, PIPELINE, streaming),
        common.write_rows(conversations, "agent_conversations", conns, PIPELINE, streaming),
        common.write_rows(billing, "agent_billing_hourly", conns, PIPELINE, streaming),
        _archive_turns(turns, conns, streaming, archive_prefix),
    ]
    failures.extend(common.write_warehouse_rows(turns, "agent_turns", conns, PIPELINE, streaming))
    if conns.redis_url:
        failures.extend(_write_live_state(conversations, billing, conns))
    common.write_dead_letters(failures, conns, PIPELINE)
    return {"turns": turns, "conversations": conversations, "billing": billing}


def _archive_turns(turns, conns: Connections, streaming: bool, archive_prefix: str):
    return common.archive_records(
        turns | "ToArchiveRecords" >> beam.Map(archive_record), conns, PIPELINE,
        load_schema("agent_turn_v1"), streaming, label="ArchiveTurns",
        file_prefix=archive_prefix)


def _write_live_state(conversations, billing, conns: Connections):
    return [
        conversations | "WriteConversationState" >> WriteSessionState(
            conns.redis_url, key_prefix=session_state_prefix(PIPELINE),
            version_fn=conversation_version, pipeline=PIPELINE,
            password_file=conns.redis_password_file,
            retry_budget_seconds=conns.redis_retry_budget_s),
        billing
        | "ToDailyCostFields" >> beam.Map(daily_cost_state)
        | "WriteCostToday" >> WriteSessionState(
            conns.redis_url, key_prefix=DAILY_COST_PREFIX,
            ttl_seconds=DAILY_COST_TTL_SECONDS,
            session_key_fn=lambda e: e["_key"],
            # Every hour's fields are independent: never skip a write.
            version_fn=lambda e: 0, pipeline=PIPELINE,
            password_file=conns.redis_password_file,
            retry_budget_seconds=conns.redis_retry_budget_s),
    ]


def run(argv: typing.Optional[typing.List[str]] = None, runner=None):
    """Parses ``argv``, builds and runs the pipeline; returns the PipelineResult.
    ``runner`` (a runner instance) overrides ``--runner`` (tests name theirs)."""
    argv = sys.argv[1:] if argv is None else argv
    rest = cli.generate_if_asked(argv, "sessions", sample_turns, "text_agent_turns.jsonl.gz", 7)
    if rest is None:
        return None
    options = cli.parse_options(rest, "python -m beam_pipelines.text_agent",
                                __doc__.splitlines()[0])
    output_dir = options.view_as(IheardOptions).output_dir or "output"
    return cli.run_job(options, PIPELINE, common.event_source(TEXT_AGENT_TOPIC, PIPELINE), build_pipeline,
                       runner=runner, batches=True,
                       sample=os.path.join(output_dir, "text_agent_sample.jsonl.gz"),
                       sample_lines=sample_turns)

if __name__ == "__main__":
    cli.main(run)
