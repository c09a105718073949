"""The Marketo pipeline: lead deltas -> scored ``marketo_leads`` rows, priority leads in Redis.

Run it locally on the bundled sample, writing to embedded defaults (the DuckDB
file under ``./output``)::

    python -m beam_pipelines.marketo
    duckdb output/iheardai.duckdb "SELECT COUNT(*) FROM marketo_leads WHERE lead_quality_score > 80;"

Run the frontend and text-agent samples first and the leads whose
``iheardUserId`` appears there also get their cross-source engagement::

    python -m beam_pipelines.frontend && python -m beam_pipelines.text_agent \\
        && python -m beam_pipelines.marketo

Read the extractor's topic (bounded backfill or streaming) or a file it wrote::

    python -m beam_pipelines.marketo --input=deltas.jsonl
    python -m beam_pipelines.marketo --kafka_bootstrap=127.0.0.1:19092 \\
        --postgres_dsn="host=127.0.0.1 port=15433 dbname=analytics user=iheard password=iheard" \\
        --redis_url=redis://127.0.0.1:16380/0
    python -m beam_pipelines.marketo --profile=flink-local --streaming --kafka_bootstrap=...

Write a sample file (JSON lines as the extractor publishes them)::

    python -m beam_pipelines.marketo --generate=500 --output=leads.jsonl.gz

The chain (every step labelled as it appears in the Flink dashboard)::

    ReadJsonLines | ReadFromKafka -> ParseLeads -> KeepLatestPerLead
        -> IdentifyLeads (identity keys) -> LookupEngagement (frontend_sessions,
           agent_conversations under those keys)
        -> ScoreLeads (normalise, classify domain, geo, score, action)
        |-> WriteToPostgres[marketo_leads] (or WriteToEmbeddedDb), upsert where
        |   the latest updatedAt wins
        |-> WritePriorityLeads (Redis, when configured)
        '-> RedactLeads (no email or name, free text tokenised)
              |-> ArchiveLeads (Avro, source=marketo, marketo_lead_v1)
              '-> WriteToSnowflake[MARKETO_LEADS] (when configured; the latest
                  UPDATED_AT wins)
    every failed output -> FlattenFailures -> failed_events (+ dead-letter topic)

The table sinks are fed without a Reshuffle: it would reorder a lead's versions
between ``KeepLatestPerLead`` and the sink's per-batch "last row per key".
"""
from __future__ import annotations

import logging
import os
import sys
import typing

import apache_beam as beam

from beam_pipelines import cli, common
from beam_pipelines.generate import sample_leads
from beam_pipelines.marketo_options import MARKETO_TOPIC, MarketoOptions
from beam_pipelines.options import Connections, IheardOptions
from iheard_io.engagement import LookupEngagement
from iheard_io.redis_leads import WritePriorityLeads
from schemas.avro import load_schema
from schemas.events import MarketoLead
from transforms.marketo import (
    ENGAGEMENT_FIELD,
    IDENTITY_FIELD,
    IdentifyLeads,
    KeepLatestPerLead,
    RedactLeads,
    ScoreLeads,
    lead_archive_record,
)
from transforms.marketo_scoring import ActionThresholds, ScoringConfig
from transforms.parse import ParseEvents

__all__ = ["build_pipeline", "chain", "run", "sample_leads", "SAMPLE_INPUT", "MARKETO_TOPIC"]

_LOG = logging.getLogger(__name__)

PIPELINE = "marketo"
SAMPLE_INPUT = os.path.join(os.path.dirname(__file__), "sample_data", "marketo_leads.jsonl.gz")


def chain(conns: Connections, opts: IheardOptions):
    """The per-lead steps that can fail on data, in order: parse, then score
    (the engagement lookup between them fails nothing). ``build_pipeline``
    applies them; a replay's dry run runs their DoFns in-process
    (``dofn()``; without the engagement lookup, which changes scores, not
    whether a lead passes)."""
    mopts = opts.view_as(MarketoOptions)
    config = ScoringConfig(thresholds=ActionThresholds(
        priority_score=mopts.priority_score_threshold,
        nurture_probability=mopts.nurture_probability_threshold))
    # The extractor publishes JSON (Marketo's own record format).
    return (ParseEvents(MarketoLead, PIPELINE),
            ScoreLeads(conns.pii_secret, config, PIPELINE))


def build_pipeline(pipeline: beam.Pipeline, records: beam.PCollection, conns: Connections,
                   opts: IheardOptions, streaming: bool = False, aggregates: bool = True,
                   archive_prefix: str = "part",
                   ) -> typing.Dict[str, beam.PCollection]:
    """Applies the Marketo chain to ``records`` (``PCollection[SourceRecord]``).

    Returns the main intermediate collections (for tests and benchmarks).
    ``aggregates``: accepted for the replay's one signature (Marketo has no
    aggregate tables); ``archive_prefix``: the archive files' name prefix.
    """
    mopts = opts.view_as(MarketoOptions)
    parse, score = chain(conns, opts)
    parsed = records | "ParseLeads" >> parse
    latest = parsed[ParseEvents.VALID] | "KeepLatestPerLead" >> KeepLatestPerLead(
        PIPELINE, streaming=streaming)
    if mopts.no_engagement_lookup:
        with_engagement = latest | "NoEngagement" >> beam.Map(
            lambda lead: dict(lead, **{ENGAGEMENT_FIELD: None}))
    else:
        with_engagement = (
            latest
            | "IdentifyLeads" >> IdentifyLeads(conns.pii_secret, mopts.marketo_user_id_field)
            | "LookupEngagement" >> LookupEngagement(
                IDENTITY_FIELD, ENGAGEMENT_FIELD, postgres_dsn=conns.postgres_dsn,
                duckdb_path=None if conns.postgres_dsn else conns.embedded_db,
                namespace=PIPELINE, retry_budget_seconds=conns.postgres_retry_budget_s))
    scored = with_engagement | "ScoreLeads" >> score
    rows = scored[ScoreLeads.VALID]
    # The archive and the warehouse get the lead without its address and name.
    redacted = rows | "RedactLeads" >> RedactLeads(conns.pii_secret)

    failures = [
        parsed[ParseEvents.FAILED],
        scored[ScoreLeads.FAILED],
        # streaming=True: no Reshuffle before the sinks (module docstring).
        common.write_rows(rows, "marketo_leads", conns, PIPELINE, streaming=True),
        common.archive_records(
            redacted | "ToArchiveRecords" >> beam.Map(lead_archive_record), conns, PIPELINE,
            load_schema("marketo_lead_v1"), streaming, label="ArchiveLeads",
            file_prefix=archive_prefix),
        *common.write_warehouse_rows(redacted, "marketo_leads", conns, PIPELINE, streaming=True),
    ]
    if conns.redis_url:
        failures.append(rows | "WritePriorityLeads" >> WritePriorityLeads(
            conns.redis_url, pipeline=PIPELINE, retry_budget_seconds=conns.redis_retry_budget_s))
    common.write_dead_letters(failures, conns, PIPELINE)
    return {"leads": latest, "rows": rows, "redacted": redacted}


def run(argv: typing.Optional[typing.List[str]] = None, runner=None):
    """Parses ``argv``, builds and runs the pipeline; returns the PipelineResult."""

    argv = sys.argv[1:] if argv is None else argv
    rest = cli.generate_if_asked(argv, "leads", sample_leads, "marketo_leads.jsonl.gz", 11)
    if rest is None:
        return None
    options = cli.parse_options(rest, "python -m beam_pipelines.marketo",
                                __doc__.splitlines()[0], MarketoOptions)
    return cli.run_job(options, PIPELINE, common.event_source(MARKETO_TOPIC), build_pipeline,
                       runner=runner, sample=SAMPLE_INPUT)


if __name__ == "__main__":
    cli.main(run)
