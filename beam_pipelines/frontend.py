"""The frontend pipeline: widget and page events -> analytics tables, live KPIs, archive.

Run it locally on the bundled sample, writing to embedded defaults (a DuckDB
file and an Avro folder under ``./output``)::

    python -m beam_pipelines.frontend

Read a file of your own, or Kafka (bounded backfill or streaming), and write to
real services::

    python -m beam_pipelines.frontend --input=events.jsonl.gz
    python -m beam_pipelines.frontend --kafka_bootstrap=127.0.0.1:19092 \\
        --postgres_dsn="host=127.0.0.1 port=15433 dbname=analytics user=iheard password=iheard" \\
        --redis_url=redis://127.0.0.1:16380/0 --archive_path=s3://iheardai-archive/archive \\
        --s3_endpoint_url=http://127.0.0.1:19000
    python -m beam_pipelines.frontend --profile=flink-local --streaming --kafka_bootstrap=...

The chain (every step labelled as it appears in the Flink dashboard)::

    ReadEvents -> ParseEvents -> RedactPii -> EnrichEvents -> DedupeEvents
        |-> WriteToPostgres[frontend_analytics] (or WriteToEmbeddedDb)
        |-> ArchiveEvents (Avro, source=frontend/date=/hour=)
        |-> WriteLiveKpis (Redis, when configured)
        |-> WriteToSnowflake[FRONTEND_EVENTS] (when configured)
        '-> AggregateSessions -> frontend_sessions table (+ WriteSessionState)
    every failed output -> FlattenFailures -> failed_events (+ dead-letter topic)

A streaming Kafka job (``--streaming``, default ``--hot_path=batched``)
carries one Kafka poll per element through every step and aggregates
sessions in keyed state per session bucket (transforms/batches.py,
transforms/session_batches.py); the rows are the same. Its sinks are placed
so that most data crosses no stage boundary and live KPIs wait for one
bundle, not two::

    ReadEvents -> ParseEvents -> RedactPii -> EnrichEvents      (source stage)
        |-> WriteToPostgres[frontend_analytics]  first writer wins: a later
        |                                        duplicate never overwrites
        |-> WriteLiveKpis (Redis sets, HyperLogLogs, ZADD GT: a duplicate
        |                  changes nothing)
        |-> WriteToSnowflake[FRONTEND_EVENTS] (MERGE by event_id)
        '-> EncodeForArchive: event_id, timestamp_ms, the session fields and
            the record's Avro bytes, the only things the shuffle carries
              -> DedupeEvents -> ArchiveEvents (the pre-encoded bytes)
                              '-> AggregateSessions -> frontend_sessions

Sessions, their Redis state and the archive see each event once (behind the
de-duplication); the idempotent writes above see duplicates and absorb them.
"""
from __future__ import annotations

import logging
import os
import sys
import typing

import apache_beam as beam

from beam_pipelines import cli, common
from beam_pipelines.options import Connections, IheardOptions
from iheard_io.archive import EncodeForArchive
from schemas.avro import load_schema
from schemas.events import FrontendEvent
from transforms.dedupe import DedupeEvents
from transforms.frontend_enrich import EnrichFrontendEvents, EnrichmentConfig
from transforms.parse import ParseEvents
from transforms.pii import FRONTEND_TEXT_FIELDS, FRONTEND_TOKEN_FIELDS, RedactPii
from transforms.session_batches import AggregateSessionBatches
from transforms.sessions import SESSION_FIELDS, AggregateSessions

__all__ = ["build_pipeline", "chain", "run", "FRONTEND_TOPIC", "SAMPLE_INPUT"]

_LOG = logging.getLogger(__name__)

PIPELINE = "frontend"
FRONTEND_TOPIC = "frontend_user_interaction"
SAMPLE_INPUT = os.path.join(os.path.dirname(__file__), "sample_data", "frontend_events.jsonl.gz")
# What the batched hot path carries through the de-duplication shuffle besides
# each event's Avro bytes: its id and time (de-duplication, archive
# partitions) and what a session summary reads.
HOT_PATH_FIELDS = tuple(dict.fromkeys(("event_id", "timestamp_ms") + SESSION_FIELDS))


def chain(conns: Connections, opts: IheardOptions, batched: bool = False):
    """The per-event steps that can fail on data, in order: parse, redact,
    enrich. ``build_pipeline`` applies them; a replay's dry run runs their
    DoFns in-process (``dofn()``), so both judge a record the same way."""
    rerun = conns.archive_input is not None  # archived records: beam_pipelines/reprocess.py
    return (
        ParseEvents(FrontendEvent, PIPELINE, decoder=common.input_decoder(
            conns, opts, "envelope_v1", PIPELINE), batched=batched),
        RedactPii(conns.pii_secret, FRONTEND_TEXT_FIELDS, FRONTEND_TOKEN_FIELDS, PIPELINE,
                  batched=batched, count_existing_tokens=rerun),
        EnrichFrontendEvents(EnrichmentConfig(), PIPELINE, batched=batched),
    )


def build_pipeline(pipeline: beam.Pipeline, records: beam.PCollection, conns: Connections,
                   opts: IheardOptions, streaming: bool = False, batched: bool = False,
                   aggregates: bool = True, archive_prefix: str = "part",
                   ) -> typing.Dict[str, beam.PCollection]:
    """Applies the frontend chain to ``records`` (``PCollection[SourceRecord]``,
    or with ``batched`` lists of them: see transforms/batches.py).

    Taking the source as a PCollection lets tests feed ``Create``/``TestStream``.
    Returns the main intermediate collections (for tests and benchmarks); on
    the batched path ``events`` holds the slim records of ``EncodeForArchive``
    (``HOT_PATH_FIELDS`` and the Avro bytes), not whole events.

    ``aggregates=False`` (a dead-letter replay: a few events of sessions
    other events filled) computes and writes no ``frontend_sessions`` rows:
    the caller recomputes them from all their events afterwards
    (``beam_pipelines.aggregates``); ``sessions`` is then None.
    ``archive_prefix``: the archive files' name prefix (``iheard_io.archive``).
    """
    # An archive re-run writes no aggregates of its own either: they are
    # recomputed from the tables after it (beam_pipelines/reprocess.py).
    aggregates = aggregates and conns.archive_input is None
    parse, redact, enrich = chain(conns, opts, batched)
    parsed = records | "ParseEvents" >> parse
    redacted = parsed[ParseEvents.VALID] | "RedactPii" >> redact
    enriched = redacted[RedactPii.VALID] | "EnrichEvents" >> enrich
    schema = load_schema("frontend_enriched_v1")
    failures = [
        parsed[ParseEvents.FAILED],
        redacted[RedactPii.FAILED],
        enriched[EnrichFrontendEvents.FAILED],
    ]
    if batched:
        # The hot path: idempotent writes in the source stage, then only slim
        # records through the shuffle (module docstring).
        full = enriched[EnrichFrontendEvents.VALID]
        failures.extend(_write_event_rows(full, conns, streaming, batched, first_writer_wins=True))
        encoded = full | "EncodeForArchive" >> EncodeForArchive(schema, HOT_PATH_FIELDS, PIPELINE)
        failures.append(encoded[EncodeForArchive.FAILED])
        to_dedupe = encoded.encoded
    else:
        to_dedupe = enriched[EnrichFrontendEvents.VALID]
    events = to_dedupe | "DedupeEvents" >> DedupeEvents(
        ttl_seconds=opts.dedupe_ttl_seconds, namespace=PIPELINE, streaming=streaming,
        batched=batched, buckets=opts.dedupe_buckets,
    )
    if not aggregates:
        sessions = None
    elif batched:
        aggregate = AggregateSessionBatches(
            gap_seconds=opts.session_gap_seconds,
            allowed_lateness_seconds=opts.allowed_lateness_seconds,
            pipeline=PIPELINE,
        )
    else:
        aggregate = AggregateSessions(
            gap_seconds=opts.session_gap_seconds,
            allowed_lateness_seconds=opts.allowed_lateness_seconds,
            pipeline=PIPELINE,
            streaming=streaming,
        )
    if aggregates:
        sessions = common.count(
            events | "AggregateSessions" >> aggregate, PIPELINE, "session_panes",
            "CountSessionPanes")

    if not batched:
        failures.extend(_write_event_rows(events, conns, streaming, batched))
    # (The order of this list numbers the GlobalWindowFailures<i> steps: kept
    # as it was, so a streaming job's savepoint still maps onto its operators.)
    if aggregates:
        failures.append(common.write_rows(sessions, "frontend_sessions", conns, PIPELINE,
                                          streaming))
    failures.append(common.archive_records(events, conns, PIPELINE, schema, streaming, batched,
                                           pre_encoded=batched, file_prefix=archive_prefix))
    if aggregates and conns.redis_url:
        failures.append(common.write_session_state(sessions, conns, PIPELINE))
    common.write_dead_letters(failures, conns, PIPELINE)
    return {"events": events, "sessions": sessions}


def _write_event_rows(events, conns: Connections, streaming: bool, batched: bool,
                      first_writer_wins: bool = False) -> typing.List[beam.PCollection]:
    """One row per event: frontend_analytics (and its Snowflake copy), and
    the live KPIs in Redis; returns the failed outputs."""
    failures = [common.write_rows(events, "frontend_analytics", conns, PIPELINE, streaming, batched,
                                  first_writer_wins=first_writer_wins)]
    failures.extend(common.write_warehouse_rows(
        events, "frontend_analytics", conns, PIPELINE, streaming, batched))
    if conns.redis_url:
        failures.append(common.write_live_kpis(events, conns, PIPELINE, batched))
    return failures


def run(argv: typing.Optional[typing.List[str]] = None, save_main_session: bool = False):
    """Parses ``argv``, builds and runs the pipeline; returns the PipelineResult."""
    argv = list(sys.argv[1:] if argv is None else argv)
    options = cli.parse_options(argv, "python -m beam_pipelines.frontend", __doc__.splitlines()[0])
    return cli.run_job(options, PIPELINE, common.event_source(FRONTEND_TOPIC, PIPELINE),
                       build_pipeline,
                       batches=True, sample=SAMPLE_INPUT)

if __name__ == "__main__":
    cli.main(run)
