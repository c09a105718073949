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

from beam_pipelines.options import Connections, IheardOptions
from schemas.tables import failure_row

__all__ = ["read_source", "write_rows", "write_dead_letters", "kafka_decoder"]

_LOG = logging.getLogger(__name__)


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
) -> beam.PCollection:
    """``PCollection[SourceRecord]`` from ``--input`` or Kafka."""
    if conns.input:
        from iheard_io.files import ReadFromJsonLines

        return pipeline | "ReadJsonLines" >> ReadFromJsonLines(conns.input)
    if conns.kafka_bootstrap:
        from iheard_io.kafka import ReadFromKafka

        mode = opts.kafka_mode or ("streaming" if streaming else "bounded")
        return pipeline | "ReadFromKafka" >> ReadFromKafka(
            bootstrap_servers=conns.kafka_bootstrap,
            topics=[opts.kafka_topic or default_topic],
            mode=mode,
            group_id=opts.kafka_group_id,
            start_from=opts.kafka_start_from,
            consumer_config=dict(conns.kafka_security),
        )
    raise ValueError(
        "no source: pass --input=FILE.jsonl[.gz] or --kafka_bootstrap=HOST:PORT"
    )


def write_rows(
    rows: beam.PCollection, table: str, conns: Connections, pipeline: str
) -> beam.PCollection:
    """Upserts dict rows into ``table``; returns the rejected rows as
    ``FailedRecord``s (for the dead-letter sink)."""
    if conns.postgres_dsn:
        from iheard_io.postgres import WriteToPostgres

        return rows | f"WriteToPostgres[{table}]" >> WriteToPostgres(
            conns.postgres_dsn, table, pipeline=pipeline
        )
    from iheard_io.embedded import WriteToEmbeddedDb

    return rows | f"WriteToEmbeddedDb[{table}]" >> WriteToEmbeddedDb(
        conns.embedded_db, table, pipeline=pipeline
    )


def write_dead_letters(
    failed: typing.Sequence[beam.PCollection], conns: Connections, pipeline: str
) -> None:
    """Every ``FailedRecord`` reaches ``failed_events`` (and the dead-letter topic).

    Rows the dead-letter table itself rejects cannot go anywhere else; they are
    logged with their content and counted by the sink.
    """
    all_failed = tuple(failed) | "FlattenFailures" >> beam.Flatten()
    if conns.dead_letter_topic and conns.kafka_bootstrap:
        from iheard_io.kafka import WriteToKafka

        _ = (
            all_failed
            | "DeadLetterAsDict" >> beam.Map(lambda f: f._asdict())
            | "PublishDeadLetters" >> WriteToKafka(
                conns.kafka_bootstrap,
                conns.dead_letter_topic,
                producer_config=dict(conns.kafka_security),
            )
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
