"""``WriteToKafka``: one producer per DoFn instance, flushed per bundle (see iheard_io.kafka).
"""
from __future__ import annotations

import json
import logging
import typing

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue

from schemas.records import FailedRecord
from schemas.records import utc_now_iso
from schemas.tables import json_default

from iheard_io.kafka_client import _tuning_config, kafka_client_config
from iheard_io.security import resolve_secret_files

__all__ = ['WriteToKafka', 'json_value']

_LOG = logging.getLogger(__name__)


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------


def json_value(element) -> bytes:
    """Default ``value_fn``: the element as compact, key-sorted JSON (a
    ``FailedRecord`` or other NamedTuple as its fields)."""
    if hasattr(element, "_asdict"):
        element = element._asdict()
    return json.dumps(element, sort_keys=True, separators=(",", ":"),
                      default=json_default).encode("utf-8")


class _WriteToKafkaFn(beam.DoFn):
    FAILED = "failed"

    def __init__(self, client_config, topic, key_fn, value_fn, producer_config, pipeline):
        self._client_config = client_config
        self._topic = topic
        self._key_fn = key_fn
        self._value_fn = value_fn
        self._producer_config = dict(producer_config or {})
        self._pipeline = pipeline
        self._producer = None
        self._pending = []
        self._sent = Metrics.counter("WriteToKafka", "sent")
        self._failed = Metrics.counter("WriteToKafka", "failed")

    def setup(self):
        from kafka import KafkaProducer

        self._producer = KafkaProducer(**resolve_secret_files({
            "acks": "all", "retries": 5, "linger_ms": 5,
            **self._client_config, **self._producer_config}))

    def start_bundle(self):
        self._pending = []

    def process(self, element, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        from kafka.errors import KafkaError

        try:
            key = self._key_fn(element) if self._key_fn else None
            if isinstance(key, str):
                key = key.encode("utf-8")
            value = self._value_fn(element)
            if isinstance(value, str):
                value = value.encode("utf-8")
            future = self._producer.send(self._topic, key=key, value=value)
        except KafkaError as exc:
            if getattr(exc, "retriable", False):
                raise
            yield self._failure(element, timestamp, window, exc)  # e.g. too large
            return
        except (TypeError, ValueError) as exc:
            yield self._failure(element, timestamp, window, exc)
            return
        self._pending.append((future, element, timestamp, window))

    def finish_bundle(self):
        from kafka.errors import KafkaError

        # flush() waits for every send. A retriable failure (broker down,
        # timeout) fails the bundle, so the runner retries it: at-least-once.
        # A record the broker will never take (too large, invalid) is a dead
        # letter instead of a bundle that fails forever.
        self._producer.flush()
        pending, self._pending = self._pending, []
        for future, element, timestamp, window in pending:
            try:
                future.get(timeout=30)
            except KafkaError as exc:
                if getattr(exc, "retriable", False):
                    raise
                yield self._failure(element, timestamp, window, exc)
                continue
            self._sent.inc()

    def _failure(self, element, timestamp, window, exc):
        self._failed.inc()
        try:
            raw = json_value(element).decode("utf-8")
        except Exception:  # pylint: disable=broad-except
            raw = repr(element)
        failed = FailedRecord(
            raw=raw, error_class=type(exc).__name__, error_message=str(exc)[:4000],
            stage="sink:kafka", pipeline=self._pipeline, source_topic=self._topic,
            received_at=utc_now_iso())
        return beam.pvalue.TaggedOutput(self.FAILED, WindowedValue(failed, timestamp, [window]))

    def teardown(self):
        if self._producer is not None:
            try:
                self._producer.close(timeout=10)
            except Exception:  # pylint: disable=broad-except
                _LOG.warning("closing Kafka producer failed", exc_info=True)
            self._producer = None


class WriteToKafka(beam.PTransform):
    """Sends each element to ``topic``.

    ``key_fn(element) -> bytes|str|None`` picks the partitioning key;
    ``value_fn(element) -> bytes|str`` the payload (default: JSON).

    Delivery guarantee: at-least-once. Sends are flushed and checked at the end
    of every bundle, and a retriable failure (broker unreachable, timeout)
    fails the bundle, which the runner retries - so a record can appear
    twice, never zero times. Readers of the topic dedupe on the payload's id
    (``event_id``, ``failure_id``). Records Kafka will never accept (larger
    than the broker's limit, unserialisable) come out on the returned
    PCollection as ``FailedRecord``s (stage ``sink:kafka``).
    """

    def __init__(
        self,
        bootstrap_servers,
        topic: str,
        key_fn: typing.Optional[typing.Callable] = None,
        value_fn: typing.Callable = json_value,
        producer_config: typing.Optional[dict] = None,
        pipeline: str = "",
        **security,
    ):
        super().__init__()
        if not topic:
            raise ValueError("topic is required")
        self._client_config = kafka_client_config(bootstrap_servers, **security)
        self._topic = topic
        self._key_fn = key_fn
        self._value_fn = value_fn
        self._producer_config = _tuning_config(producer_config, "producer_config")
        self._pipeline = pipeline

    def expand(self, pcoll):
        results = pcoll | "SendToKafka" >> beam.ParDo(_WriteToKafkaFn(
            self._client_config, self._topic, self._key_fn, self._value_fn,
            self._producer_config, self._pipeline)).with_outputs(
                _WriteToKafkaFn.FAILED, main="sent")
        return results[_WriteToKafkaFn.FAILED]

