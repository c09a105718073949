"""Kafka source and sink built on kafka-python (no Java expansion service).

``ReadFromKafka`` is a splittable DoFn with one restriction per
(topic, partition): an ``OffsetRange`` of Kafka offsets. It runs on the
FnApiRunner, the DirectRunner and on portable Flink, in a bounded mode (read up
to the end offsets seen at start, then finish) and a streaming mode (read
forever, returning to the runner about once a second so it can
checkpoint)::

    Impulse
      -> DiscoverPartitions        one _PartitionSpec per (topic, partition):
                                   start offset (committed / earliest / latest)
                                   and, in bounded mode, the end offset now
      -> ReadPartitions            SDF: OffsetRange restriction, manual
                                   watermark, emits SourceRecord timestamped at
                                   the Kafka record timestamp

There is deliberately no Reshuffle between discovery and the reader: the
runner already spreads (element, restriction) pairs over workers (Flink keys
them for the SDF's state). In a run on portable Flink streaming (Beam 2.62,
Flink 1.19) with a Reshuffle there, the partition elements never reached the
reader; the same job without it read every record, fired its windows and
committed the group offsets after checkpoints.

Delivery guarantee (source): every record in the restriction is emitted at
least once; on Flink the checkpointed restriction is the true read position,
so after a failure the job replays from the last checkpoint and downstream
sinks must be idempotent (ours upsert / overwrite). Consumer-group offsets are
committed only from the bundle finalizer, i.e. after the runner made the bundle
durable; they are there for monitoring and lag alerts (``kafka-consumer-groups
--describe``) and as the starting point of a *new* job (``start_from=
"committed"``), never as the position of a running one.

The reader never looks inside a payload: decoding happens in the parse step
(``json_decoder`` / ``avro_decoder`` below are handed to it), so a payload that
cannot be decoded becomes a dead letter there, with its topic, partition and
offset, instead of failing the read.

``WriteToKafka`` sends each element with one producer per DoFn instance and
flushes at the end of every bundle; a bundle whose sends failed is failed, so
the runner retries it: at-least-once (consumers dedupe on ``event_id`` /
``failure_id``).

Security: ``security_protocol`` PLAINTEXT, SASL_PLAINTEXT or SASL_SSL;
``sasl_mechanism`` PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; ``username`` and
``password`` are arguments (the pipelines take them from ``KAFKA_USER`` /
``KAFKA_PASSWORD`` in ``beam_pipelines.options.resolve_connections``; this
module reads no environment), so they travel with the pickled transform and
workers need no environment of their own; ``ssl_cafile`` names the broker CA
bundle for SASL_SSL. ``password_file`` instead of ``password`` names a file
the workers read in ``setup()`` (iheard_io.security), so the password itself
never travels with the job. ``consumer_config`` / ``producer_config`` are for
tuning only: a key that ``kafka_client_config`` sets (servers, security,
credentials) is refused there, so it cannot override what was validated.
``check_kafka_connection`` tells a refused connection (TLS, authentication)
apart from an absent broker, within seconds.

The code is split by concern; this module is the connector's public surface:

- ``kafka_client.py``: client settings, validation, connection checks;
- ``kafka_decoders.py``: payload decoders for the parse step;
- ``kafka_read.py``: ``ReadFromKafka`` (partition discovery, the SDF reader);
- ``kafka_write.py``: ``WriteToKafka``.
"""
from __future__ import annotations

from iheard_io.kafka_client import (
    SASL_MECHANISMS,
    SECURITY_PROTOCOLS,
    KafkaConnectionRefused,
    check_kafka_connection,
    kafka_client_config,
)
from iheard_io.kafka_decoders import avro_decoder, json_decoder
from iheard_io.kafka_read import (
    DEFAULT_MAX_OUT_OF_ORDER_S,
    DEFAULT_MAX_READ_TIME_S,
    START_FROM,
    ReadFromKafka,
)
from iheard_io.kafka_write import WriteToKafka, json_value

__all__ = [
    "ReadFromKafka",
    "WriteToKafka",
    "json_decoder",
    "avro_decoder",
    "kafka_client_config",
    "check_kafka_connection",
    "KafkaConnectionRefused",
    "json_value",
    "START_FROM",
    "DEFAULT_MAX_READ_TIME_S",
    "DEFAULT_MAX_OUT_OF_ORDER_S",
    "SECURITY_PROTOCOLS",
    "SASL_MECHANISMS",
]
