"""Wiring shared by the pipelines: where records come from, where rows go.

Each pipeline module builds its own chain of transforms; this module only
chooses connectors from the resolved ``Connections`` so that every pipeline
reads and writes the same way (running a job and its command line are in
``beam_pipelines.cli``):

- source: ``--input`` file pattern (JSONL) or Kafka (bounded or streaming);
- SQL rows: PostgreSQL when configured, else the embedded DuckDB file;
- warehouse rows: Snowflake too, when configured (``write_warehouse_rows``);
- dead letters: the ``failed_events`` table, plus a Kafka topic if asked.
"""
from __future__ import annotations

import logging
import os
import typing

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms import window

from beam_pipelines import reprocess
from beam_pipelines.options import Connections, IheardOptions
# Streaming archive files cover five minutes of event time (defined once, by
# the archive connector).
from iheard_io.archive import DEFAULT_STREAMING_WINDOW_S as ARCHIVE_WINDOW_SECONDS
from iheard_io.archive import WriteToArchive
from iheard_io.embedded import WriteToEmbeddedDb, close_embedded, ensure_embedded_schema
from iheard_io import read_progress
from iheard_io.files import ReadFromJsonLines, input_bytes
from iheard_io.kafka import (
    KafkaConnectionRefused,
    ReadFromKafka,
    WriteToKafka,
    avro_decoder,
    check_kafka_connection,
    kafka_client_config,
)
from iheard_io.postgres import WriteToPostgres, ensure_schema
from iheard_io.redis_io import (
    RedisConnectionRefused,
    WriteLiveKpis,
    WriteSessionState,
    check_redis_connection,
    session_state_prefix,
)
from schemas.avro import load_schema
from schemas.tables import failure_row
from transforms.archived import ArchiveDecoder
from transforms.batches import ExplodeBatches
from transforms.deadletter import RedactDeadLetters

__all__ = [
    "event_source",
    "read_source",
    "write_rows",
    "write_warehouse_rows",
    "write_dead_letters",
    "kafka_decoder",
    "input_decoder",
    "prepare_sinks",
    "check_connections",
    "archive_records",
    "write_live_kpis",
    "write_session_state",
    "count",
]

_LOG = logging.getLogger(__name__)


def kafka_decoder(opts: IheardOptions, avro_schema_name: typing.Optional[str] = None):
    """The payload decoder for the parse step (None means JSON). The Avro
    schema (``schemas/avro/<avro_schema_name>.avsc``) is loaded only for
    ``--kafka_format=avro``."""
    if opts.kafka_format == "avro":
        if avro_schema_name is None:
            raise ValueError("--kafka_format=avro needs the pipeline's Avro schema")
        return avro_decoder(load_schema(avro_schema_name))
    return None


def input_decoder(conns: Connections, opts: IheardOptions,
                  avro_schema_name: typing.Optional[str], job: str):
    """The parse step's decoder: for an archive re-run, the one that turns an
    archived record of ``job`` back into its payload
    (``transforms.archived.ArchiveDecoder``); else ``kafka_decoder``."""
    if conns.archive_input is not None:
        return ArchiveDecoder(reprocess.payload_function(job))
    return kafka_decoder(opts, avro_schema_name)


def event_source(default_topic: str, job: typing.Optional[str] = None):
    """``cli.run_job``'s ``source`` for a pipeline of events: ``read_source``
    with ``default_topic`` (the topic read unless ``--kafka_topic``). ``job``:
    the pipeline whose archive ``--input`` may name (an archive re-run,
    ``beam_pipelines.reprocess``); None: the job cannot re-run its archive."""
    def source(pipeline, conns, opts, streaming, batched=False):
        return read_source(pipeline, conns, opts, default_topic, streaming, batched, job)
    return source


def read_source(
    pipeline: beam.Pipeline,
    conns: Connections,
    opts: IheardOptions,
    default_topic: str,
    streaming: bool,
    batched: bool = False,
    job: typing.Optional[str] = None,
) -> beam.PCollection:
    """``PCollection[SourceRecord]`` from ``--input`` (JSON lines, or the
    archive of ``job``: ``beam_pipelines.reprocess``) or Kafka (with
    ``batched``: ``PCollection[list[SourceRecord]]``, one list per poll)."""
    if (opts.from_ or opts.to) and conns.archive_input is None:
        raise ValueError("--from/--to select a range of the archive: --input must name an "
                         "archive folder (<root>/source=<job>[/date=...])")
    if conns.archive_input is not None:
        if streaming:
            raise ValueError("an archive re-run is bounded: drop --streaming")
        return reprocess.read_archive(pipeline, conns, opts, job or "this job")
    if conns.input:
        if opts.progress_key:
            read_progress.expect(opts.progress_key, input_bytes(conns.input))
        return pipeline | "ReadJsonLines" >> ReadFromJsonLines(
            conns.input, progress_key=opts.progress_key)
    if conns.kafka_bootstrap:
        mode = opts.kafka_mode or ("streaming" if streaming else "bounded")
        tuning = {}
        if opts.kafka_max_read_seconds is not None and mode == "streaming":
            tuning["max_read_time_seconds"] = opts.kafka_max_read_seconds
        return pipeline | "ReadFromKafka" >> ReadFromKafka(
            bootstrap_servers=conns.kafka_bootstrap,
            topics=[opts.kafka_topic or default_topic],
            mode=mode,
            group_id=opts.kafka_group_id,
            start_from=opts.kafka_start_from,
            batched=batched,
            **conns.kafka_security,
            **tuning,
        )
    raise ValueError(
        "no source: pass --input=FILE.jsonl[.gz] or --kafka_bootstrap=HOST:PORT"
    )


def write_rows(
    rows: beam.PCollection, table: str, conns: Connections, pipeline: str,
    streaming: bool = False, batched: bool = False, first_writer_wins: bool = False,
) -> beam.PCollection:
    """Upserts dict rows into ``table``; returns the rejected rows as
    ``FailedRecord``s (for the dead-letter sink). ``streaming``: write from
    the stage that makes the rows, without the sink's Reshuffle (see
    iheard_io.postgres). ``batched``: elements are lists of rows.
    ``first_writer_wins``: a row whose key is already stored is left as it is
    (PostgreSQL; for rows written before de-duplication); the embedded
    database is only used by bounded runs, which upsert."""
    if conns.postgres_dsn:
        return rows | f"WriteToPostgres[{table}]" >> WriteToPostgres(
            conns.postgres_dsn, table, pipeline=pipeline, reshuffle=not streaming,
            batched=batched, first_writer_wins=first_writer_wins,
            retry_budget_seconds=conns.postgres_retry_budget_s,
        )
    if batched:
        rows = rows | f"ExplodeRows[{table}]" >> ExplodeBatches()
    return rows | f"WriteToEmbeddedDb[{table}]" >> WriteToEmbeddedDb(
        conns.embedded_db, table, pipeline=pipeline
    )


def write_warehouse_rows(
    rows: beam.PCollection, table: str, conns: Connections, pipeline: str,
    streaming: bool = False, batched: bool = False,
) -> typing.List[beam.PCollection]:
    """Also merges ``table``'s rows into its Snowflake table
    (schemas/warehouse.py) when Snowflake is configured; returns the rejected
    rows as ``FailedRecord`` collections (none when it is not)."""
    if conns.snowflake is None:
        return []
    from iheard_io.snowflake import WriteToSnowflake
    from schemas.warehouse import warehouse_table_for

    target = warehouse_table_for(table)
    if target is None:
        raise ValueError(f"no Snowflake table is fed by {table!r}")
    return [rows | f"WriteToSnowflake[{target.name}]" >> WriteToSnowflake(
        conns.snowflake, target.name, pipeline=pipeline, reshuffle=not streaming,
        batched=batched, retry_budget_seconds=conns.snowflake_retry_budget_s,
    )]


def write_dead_letters(
    failed: typing.Sequence[beam.PCollection], conns: Connections, pipeline: str
) -> None:
    """Every ``FailedRecord`` reaches ``failed_events`` (and the dead-letter topic),
    with PII in its payload and message replaced by keyed tokens.

    Rows the dead-letter table itself rejects cannot go anywhere else; they are
    logged with their content and counted by the sink.
    """
    # Failures come from differently windowed steps (sessions, archive
    # windows); dead letters are per record, so they all go global first.
    rewindowed = [
        pcoll | f"GlobalWindowFailures{i}" >> beam.WindowInto(window.GlobalWindows())
        for i, pcoll in enumerate(failed)
    ]
    all_failed = count(
        rewindowed | "FlattenFailures" >> beam.Flatten(), pipeline, "dead_letters", "CountDeadLetters"
    ) | "RedactDeadLetters" >> RedactDeadLetters(conns.pii_secret, pipeline)
    if conns.dead_letter_topic and conns.kafka_bootstrap:
        # A dead letter Kafka refuses is still stored in failed_events below;
        # the refusal itself is only logged.
        _ = (
            all_failed
            | "DeadLetterAsDict" >> beam.Map(lambda f: f._asdict())
            | "PublishDeadLetters" >> WriteToKafka(
                conns.kafka_bootstrap,
                conns.dead_letter_topic,
                **conns.kafka_security,
            )
            | "LogUnpublishedDeadLetters" >> beam.Map(_log_unwritable)
        )
    unwritable = write_rows(
        all_failed | "ToFailedEventRows" >> beam.Map(failure_row),
        "failed_events",
        conns,
        pipeline,
    )
    _ = unwritable | "LogUnwritableDeadLetters" >> beam.Map(_log_unwritable)


def _log_unwritable(failed) -> None:
    _LOG.error("dead letter could not be stored: %s", failed)


def prepare_sinks(conns: Connections) -> None:
    """Creates tables (and the local archive folder) before the job starts, so
    workers never race to run DDL. A server that refuses our credentials or
    TLS settings stops the run here, with a clear error, before any worker
    starts retrying; one that is merely down is left to the workers' retries."""
    check_connections(conns)
    if conns.postgres_dsn:
        ensure_schema(conns.postgres_dsn)
    else:
        ensure_embedded_schema(conns.embedded_db)
        # DuckDB locks the file per process: release it for the workers,
        # which may run in another process (e.g. a Flink worker pool).
        close_embedded(conns.embedded_db)
    if conns.snowflake is not None:
        from iheard_io.snowflake import ensure_snowflake_schema

        ensure_snowflake_schema(conns.snowflake)
    if conns.archive_path and "://" not in conns.archive_path:
        os.makedirs(conns.archive_path, exist_ok=True)


def check_connections(conns: Connections) -> None:
    """Raises ``KafkaConnectionRefused`` / ``RedisConnectionRefused`` when
    Kafka or Redis refuse the configured credentials or TLS (PostgreSQL does
    so in ``ensure_schema``), or ``PermissionError`` when a password file
    cannot be read; only warns when a server does not answer at all."""
    checks = []
    if conns.kafka_bootstrap:
        checks.append(lambda: check_kafka_connection(
            kafka_client_config(conns.kafka_bootstrap, **conns.kafka_security)))
    if conns.redis_url:
        kwargs = {"password_file": conns.redis_password_file} if conns.redis_password_file else None
        checks.append(lambda: check_redis_connection(conns.redis_url, kwargs))
    for check in checks:
        try:
            check()
        except (PermissionError, KafkaConnectionRefused, RedisConnectionRefused):
            raise
        except ConnectionError as exc:
            _LOG.warning("%s (the job starts anyway and retries)", exc)


def archive_records(
    records: beam.PCollection, conns: Connections, pipeline: str, schema, streaming: bool,
    batched: bool = False,
    label: str = "ArchiveEvents",
    pre_encoded: bool = False,
    file_prefix: str = "part",
) -> beam.PCollection:
    """Archives ``records`` as Avro under ``conns.archive_path``; returns the
    records that could not be archived as ``FailedRecord``s. ``file_prefix``:
    the files' name prefix (a replay names its own, ``iheard_io.archive``).

    A streaming job closes one file set per ``ARCHIVE_WINDOW_SECONDS`` of event
    time (a global window would never fire); a bounded job writes one file set
    per hour partition. ``pre_encoded``: lists of ``EncodeForArchive``'s slim
    records, whose Avro bytes are written as they are.
    """
    if not conns.archive_path:
        # An archive re-run without --archive_path: nothing archived, nothing failed.
        return records.pipeline | f"{label}Skipped" >> beam.Create([])
    return records | label >> WriteToArchive(
        conns.archive_path,
        source=pipeline,
        schema=schema,
        window_seconds=ARCHIVE_WINDOW_SECONDS if streaming else None,
        pipeline=pipeline,
        batched=batched,
        pre_encoded=pre_encoded,
        file_prefix=file_prefix,
    )


def write_live_kpis(events: beam.PCollection, conns: Connections, pipeline: str,
                    batched: bool = False) -> beam.PCollection:
    """Live KPIs in Redis from events (lists of events with ``batched``)."""
    return events | "WriteLiveKpis" >> WriteLiveKpis(
        conns.redis_url, pipeline=pipeline, batched=batched,
        password_file=conns.redis_password_file,
        retry_budget_seconds=conns.redis_retry_budget_s)


def write_session_state(sessions: beam.PCollection, conns: Connections,
                        pipeline: str) -> beam.PCollection:
    """Hot session state in Redis from session panes."""
    return sessions | "WriteSessionState" >> WriteSessionState(
        conns.redis_url, key_prefix=session_state_prefix(pipeline), pipeline=pipeline,
        password_file=conns.redis_password_file,
        retry_budget_seconds=conns.redis_retry_budget_s,
    )


def count(pcoll: beam.PCollection, namespace: str, name: str, label: str) -> beam.PCollection:
    """Passes elements through, counting them in ``namespace/name``."""
    counter = Metrics.counter(namespace, name)

    def _inc(element):
        counter.inc()
        return element

    return pcoll | label >> beam.Map(_inc)
