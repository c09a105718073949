"""Wiring shared by the pipelines: where records come from, where rows go.

Each pipeline module builds its own chain of transforms; this module only
chooses connectors from the resolved ``Connections`` so that every pipeline
reads and writes the same way:

- source: ``--input`` file pattern (JSONL) or Kafka (bounded or streaming);
- SQL rows: PostgreSQL when configured, else the embedded DuckDB file;
- dead letters: the ``failed_events`` table, plus a Kafka topic if asked.
"""
from __future__ import annotations

import logging
import typing

import apache_beam as beam
from apache_beam.transforms import window

from beam_pipelines.options import (
    Connections,
    IheardOptions,
    apply_spaces_credentials,
    batched_hot_path,
    resolve_connections,
)
from schemas.tables import failure_row
from transforms.deadletter import RedactDeadLetters

__all__ = [
    "read_source",
    "write_rows",
    "write_dead_letters",
    "kafka_decoder",
    "prepare_sinks",
    "archive_records",
    "write_live_state",
    "summary",
    "count",
    "counter_values",
    "check_runner",
    "run_job",
    "exit_with_help_if_asked",
    "configure_cli_logging",
]

_LOG = logging.getLogger(__name__)

# Streaming archive files cover five minutes of event time: small enough for a
# near-live archive, large enough to keep object counts sane.
ARCHIVE_WINDOW_SECONDS = 5 * 60


def kafka_decoder(opts: IheardOptions, avro_schema=None):
    """The payload decoder for the parse step (None means JSON)."""
    if opts.kafka_format == "avro":
        from iheard_io.kafka import avro_decoder

        if avro_schema is None:
            raise ValueError("--kafka_format=avro needs the pipeline's Avro schema")
        return avro_decoder(avro_schema)
    return None


def read_source(
    pipeline: beam.Pipeline,
    conns: Connections,
    opts: IheardOptions,
    default_topic: str,
    streaming: bool,
    batched: bool = False,
) -> beam.PCollection:
    """``PCollection[SourceRecord]`` from ``--input`` or Kafka (with
    ``batched``: ``PCollection[list[SourceRecord]]``, one list per poll)."""
    if conns.input:
        from iheard_io.files import ReadFromJsonLines

        return pipeline | "ReadJsonLines" >> ReadFromJsonLines(conns.input)
    if conns.kafka_bootstrap:
        from iheard_io.kafka import ReadFromKafka

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
            consumer_config=dict(conns.kafka_security),
            batched=batched,
            **tuning,
        )
    raise ValueError(
        "no source: pass --input=FILE.jsonl[.gz] or --kafka_bootstrap=HOST:PORT"
    )


def write_rows(
    rows: beam.PCollection, table: str, conns: Connections, pipeline: str,
    streaming: bool = False, batched: bool = False,
) -> beam.PCollection:
    """Upserts dict rows into ``table``; returns the rejected rows as
    ``FailedRecord``s (for the dead-letter sink). ``streaming``: write from
    the stage that makes the rows, without the sink's Reshuffle (see
    iheard_io.postgres). ``batched``: elements are lists of rows."""
    if conns.postgres_dsn:
        from iheard_io.postgres import WriteToPostgres

        return rows | f"WriteToPostgres[{table}]" >> WriteToPostgres(
            conns.postgres_dsn, table, pipeline=pipeline, reshuffle=not streaming,
            batched=batched,
        )
    from iheard_io.embedded import WriteToEmbeddedDb

    if batched:
        from transforms.batches import ExplodeBatches

        rows = rows | f"ExplodeRows[{table}]" >> ExplodeBatches()
    return rows | f"WriteToEmbeddedDb[{table}]" >> WriteToEmbeddedDb(
        conns.embedded_db, table, pipeline=pipeline
    )


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
        from iheard_io.kafka import WriteToKafka

        # A dead letter Kafka refuses is still stored in failed_events below;
        # the refusal itself is only logged.
        _ = (
            all_failed
            | "DeadLetterAsDict" >> beam.Map(lambda f: f._asdict())
            | "PublishDeadLetters" >> WriteToKafka(
                conns.kafka_bootstrap,
                conns.dead_letter_topic,
                producer_config=dict(conns.kafka_security),
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
        from iheard_io.postgres import ensure_schema

        ensure_schema(conns.postgres_dsn)
    else:
        from iheard_io.embedded import close_embedded, ensure_embedded_schema

        ensure_embedded_schema(conns.embedded_db)
        # DuckDB locks the file per process: release it for the workers,
        # which may run in another process (e.g. a Flink worker pool).
        close_embedded(conns.embedded_db)
    if "://" not in conns.archive_path:
        import os

        os.makedirs(conns.archive_path, exist_ok=True)


def check_connections(conns: Connections) -> None:
    """Raises ``KafkaConnectionRefused`` / ``RedisConnectionRefused`` when
    Kafka or Redis refuse the configured credentials or TLS (PostgreSQL does
    so in ``ensure_schema``); only warns when they do not answer at all."""
    checks = []
    if conns.kafka_bootstrap:
        from iheard_io.kafka import check_kafka_connection

        checks.append(lambda: check_kafka_connection(
            {"bootstrap_servers": conns.kafka_bootstrap, **conns.kafka_security}))
    if conns.redis_url:
        from iheard_io.redis_io import check_redis_connection

        kwargs = {"password_file": conns.redis_password_file} if conns.redis_password_file else None
        checks.append(lambda: check_redis_connection(conns.redis_url, kwargs))
    for check in checks:
        try:
            check()
        except (PermissionError,) + _refusals():
            raise
        except ConnectionError as exc:
            _LOG.warning("%s (the job starts anyway and retries)", exc)


def _refusals():
    from iheard_io.kafka import KafkaConnectionRefused
    from iheard_io.redis_io import RedisConnectionRefused

    return (KafkaConnectionRefused, RedisConnectionRefused)


def archive_records(
    records: beam.PCollection, conns: Connections, pipeline: str, schema, streaming: bool,
    batched: bool = False,
) -> beam.PCollection:
    """Archives ``records`` as Avro under ``conns.archive_path``; returns the
    records that could not be archived as ``FailedRecord``s.

    A streaming job closes one file set per ``ARCHIVE_WINDOW_SECONDS`` of event
    time (a global window would never fire); a bounded job writes one file set
    per hour partition.
    """
    from iheard_io.archive import WriteToArchive

    return records | "ArchiveEvents" >> WriteToArchive(
        conns.archive_path,
        source=pipeline,
        schema=schema,
        window_seconds=ARCHIVE_WINDOW_SECONDS if streaming else None,
        pipeline=pipeline,
        batched=batched,
    )


def write_live_state(
    events: beam.PCollection,
    sessions: beam.PCollection,
    conns: Connections,
    pipeline: str,
    batched: bool = False,
) -> typing.List[beam.PCollection]:
    """Live KPIs from events (lists of events with ``batched``) and hot
    session state from session panes (Redis)."""
    from iheard_io.redis_io import WriteLiveKpis, WriteSessionState

    return [
        events | "WriteLiveKpis" >> WriteLiveKpis(
            conns.redis_url, pipeline=pipeline, batched=batched,
            password_file=conns.redis_password_file),
        sessions | "WriteSessionState" >> WriteSessionState(
            conns.redis_url, key_prefix=f"iheard:{pipeline}:session:", pipeline=pipeline,
            password_file=conns.redis_password_file,
        ),
    ]


def counter_values(result, namespace: str) -> typing.Dict[str, int]:
    """Committed (else attempted) counter values of one namespace, by name."""
    from apache_beam.metrics.metric import MetricsFilter

    values: typing.Dict[str, int] = {}
    try:
        counters = result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]
    except Exception as exc:  # some runners cannot report metrics
        _LOG.warning("metrics unavailable: %s", exc)
        return values
    for counter in counters:
        value = counter.committed if counter.committed is not None else counter.attempted
        values[counter.key.metric.name] = values.get(counter.key.metric.name, 0) + (value or 0)
    return values


def summary(result, conns: Connections, pipeline: str) -> str:
    """A short human summary of one run: counts and where the outputs are."""
    c = counter_values(result, pipeline)
    lines = [
        f"[{pipeline}] state={result.state}",
        f"  events in: {c.get('received', 0)}  valid: {c.get('valid', 0)}  "
        f"failed (dead letters): {c.get('dead_letters', 0)}  "
        f"duplicates dropped: {c.get('duplicates_dropped', 0)}  "
        f"session panes: {c.get('session_panes', 0)}",
    ]
    pii = {k: v for k, v in sorted(c.items()) if k.startswith("pii_")}
    if pii:
        lines.append("  PII redacted: " + ", ".join(f"{k[4:]}={v}" for k, v in pii.items()))
    if conns.postgres_dsn:
        lines.append("  tables: PostgreSQL (" + _redact_dsn(conns.postgres_dsn) + ")")
    else:
        lines.append(f"  tables: DuckDB file {conns.embedded_db}")
    lines.append(f"  archive: {conns.archive_path}")
    if conns.redis_url:
        lines.append("  live state: Redis")
    return "\n".join(lines)


def _redact_dsn(dsn: str) -> str:
    import re

    dsn = re.sub(r"password=\S+", "password=***", dsn)
    return re.sub(r"://([^:/@]*):[^@]*@", r"://\1:***@", dsn)


def count(pcoll: beam.PCollection, namespace: str, name: str, label: str) -> beam.PCollection:
    """Passes elements through, counting them in ``namespace/name``."""
    from apache_beam.metrics import Metrics

    counter = Metrics.counter(namespace, name)

    def _inc(element):
        counter.inc()
        return element

    return pcoll | label >> beam.Map(_inc)


def check_runner(options) -> None:
    """Refuses a combination that would hang or fail obscurely.

    Beam 2.62's DirectRunner hands streaming pipelines to the Prism runner,
    which downloads a binary from the internet at run time: offline that
    fails, and on a network that drops packets it hangs. A streaming job
    belongs on Flink (``--profile=flink-local``); a bounded Kafka backfill
    runs fine on the DirectRunner without ``--streaming``.
    """
    from apache_beam.options.pipeline_options import StandardOptions

    std = options.view_as(StandardOptions)
    runner = std.runner
    name = runner if isinstance(runner, str) or runner is None else type(runner).__name__
    if std.streaming and name in (None, "DirectRunner", "SwitchingDirectRunner"):
        raise ValueError(
            "--streaming on the DirectRunner would start Beam's Prism runner, which "
            "downloads a binary at run time; run streaming jobs on Flink "
            "(--profile=flink-local) or drop --streaming for a bounded run "
            "(--kafka_mode=bounded)."
        )


def run_job(options, opts: IheardOptions, default_topic: str, build, pipeline_name: str, runner=None):
    """Runs one pipeline module's job: resolves connections, creates the
    tables, reads the source, applies ``build(pipeline, records, conns, opts,
    streaming, batched=...)``, waits, and prints the summary. Returns the PipelineResult."""
    from apache_beam.options.pipeline_options import StandardOptions

    check_runner(options)
    streaming = bool(options.view_as(StandardOptions).streaming)
    apply_spaces_credentials(options)
    conns = resolve_connections(opts)
    prepare_sinks(conns)
    pipeline = beam.Pipeline(runner=runner, options=options)
    batched = batched_hot_path(opts, streaming)
    records = read_source(pipeline, conns, opts, default_topic, streaming, batched=batched)
    build(pipeline, records, conns, opts, streaming, batched=batched)
    result = pipeline.run()
    result.wait_until_finish()
    print(summary(result, conns, pipeline_name), flush=True)
    return result


def exit_with_help_if_asked(argv, prog: str, description: str, *option_classes) -> None:
    """``--help``/``-h``: prints the project's options (and the Beam ones most
    used with them), then exits. Beam's own parser would list only ``-h``."""
    if "--help" not in argv and "-h" not in argv:
        return
    import argparse

    from apache_beam.options.pipeline_options import S3Options, StandardOptions

    parser = argparse.ArgumentParser(prog=prog, description=description)
    for options_class in (IheardOptions, *option_classes, StandardOptions, S3Options):
        options_class._add_argparse_args(parser)
    parser.print_help()
    raise SystemExit(0)


def configure_cli_logging() -> None:
    """INFO for the project's own messages; Beam's per-step INFO chatter (type
    hint conversions, state cache sizes ...) only from WARNING up."""
    from monitoring.logs import configure_logging  # JSON lines, or text: $IHEARD_LOG_FORMAT
    configure_logging()
