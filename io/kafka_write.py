"""``WriteToKafka``: one producer per DoFn instance, flushed per bundle (see iheard_io.kafka).
"""
from __future__ import annotations

import json
import logging
import time
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


# How long a bundle keeps re-sending records the broker did not take for a
# retriable reason (broker down, leader moving, timeout) before it gives up
# and fails, so the runner replays it: a broker restart of tens of seconds
# is ridden out inside the bundle instead of failing the whole job.
DEFAULT_RETRY_TIMEOUT_S = 300.0
_RETRY_FIRST_DELAY_S = 0.5
_RETRY_MAX_DELAY_S = 10.0


class _WriteToKafkaFn(beam.DoFn):
    FAILED = "failed"

    def __init__(self, client_config, topic, key_fn, value_fn, producer_config, pipeline,
                 retry_timeout_s=DEFAULT_RETRY_TIMEOUT_S):
        self._client_config = client_config
        self._topic = topic
        self._key_fn = key_fn
        self._value_fn = value_fn
        self._producer_config = dict(producer_config or {})
        self._pipeline = pipeline
        self._retry_timeout_s = retry_timeout_s
        self._producer = None
        self._pending = []
        self._retry = []
        self._sent = Metrics.counter("WriteToKafka", "sent")
        self._failed = Metrics.counter("WriteToKafka", "failed")
        self._resent = Metrics.counter("WriteToKafka", "resent")

    def setup(self):
        # The producer is made on first use (``_ensure_producer``): kafka-python
        # bootstraps in its constructor, and a worker that starts while the
        # broker is down must retry like any other send, not fail setup.
        self._producer = None

    def _ensure_producer(self):
        if self._producer is None:
            from kafka import KafkaProducer

            self._producer = KafkaProducer(**resolve_secret_files({
                "acks": "all", "retries": 5, "linger_ms": 5,
                # A send waits at most this long for metadata while the broker
                # is away; the bundle's own retries (finish_bundle) go on.
                "max_block_ms": 10000,
                **self._client_config, **self._producer_config}))
        return self._producer

    def start_bundle(self):
        self._pending = []
        self._retry = []

    def _enqueue(self, element, timestamp, window):
        """Sends ``element``; returns a failure output for a record Kafka
        will never take, else None (retriable refusals wait in ``_retry``)."""
        from kafka.errors import KafkaError

        try:
            key = self._key_fn(element) if self._key_fn else None
            if isinstance(key, str):
                key = key.encode("utf-8")
            value = self._value_fn(element)
            if isinstance(value, str):
                value = value.encode("utf-8")
            future = self._ensure_producer().send(self._topic, key=key, value=value)
        except KafkaError as exc:
            if getattr(exc, "retriable", False):
                self._retry.append((element, timestamp, window, exc))
                return None
            return self._failure(element, timestamp, window, exc)  # e.g. too large
        except (TypeError, ValueError) as exc:
            return self._failure(element, timestamp, window, exc)
        self._pending.append((future, element, timestamp, window))
        return None

    def process(self, element, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        failure = self._enqueue(element, timestamp, window)
        if failure is not None:
            yield failure

    def finish_bundle(self):
        from kafka.errors import KafkaError

        # flush() waits for every send. A record refused for a retriable
        # reason (broker down, timeout) is sent again, with backoff, for up
        # to retry_timeout_s; after that the bundle fails and the runner
        # retries it: at-least-once either way, nothing dropped. A record
        # the broker will never take (too large, invalid) is a dead letter
        # instead of a bundle that fails forever.
        deadline = time.monotonic() + self._retry_timeout_s
        delay = _RETRY_FIRST_DELAY_S
        while True:
            if self._producer is not None:
                self._producer.flush()
            pending, self._pending = self._pending, []
            for future, element, timestamp, window in pending:
                try:
                    future.get(timeout=30)
                except KafkaError as exc:
                    if getattr(exc, "retriable", False):
                        self._retry.append((element, timestamp, window, exc))
                        continue
                    yield self._failure(element, timestamp, window, exc)
                    continue
                self._sent.inc()
            if not self._retry:
                return
            last_error = self._retry[-1][3]
            if time.monotonic() + delay > deadline:
                self._retry = []
                raise last_error
            _LOG.warning("Kafka did not take %d record(s) for %s (%s: %s); sending again in %.1f s",
                         len(self._retry), self._topic, type(last_error).__name__, last_error, delay)
            time.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX_DELAY_S)
            retry, self._retry = self._retry, []
            self._resent.inc(len(retry))
            for element, timestamp, window, _ in retry:
                failure = self._enqueue(element, timestamp, window)
                if failure is not None:
                    yield failure

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
    of every bundle; records refused for a retriable reason (broker
    unreachable, timeout) are sent again with backoff for up to
    ``retry_timeout_s`` (default 300 s, so a broker restart is ridden out
    inside the bundle), after which the bundle fails and the runner retries
    it - so a record can appear twice, never zero times. Readers of the topic dedupe on the payload's id
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
        retry_timeout_s: float = DEFAULT_RETRY_TIMEOUT_S,
        **security,
    ):
        super().__init__()
        if not topic:
            raise ValueError("topic is required")
        if retry_timeout_s < 0:
            raise ValueError("retry_timeout_s must be >= 0")
        self._retry_timeout_s = retry_timeout_s
        self._client_config = kafka_client_config(bootstrap_servers, **security)
        self._topic = topic
        self._key_fn = key_fn
        self._value_fn = value_fn
        self._producer_config = _tuning_config(producer_config, "producer_config")
        self._pipeline = pipeline

    def expand(self, pcoll):
        results = pcoll | "SendToKafka" >> beam.ParDo(_WriteToKafkaFn(
            self._client_config, self._topic, self._key_fn, self._value_fn,
            self._producer_config, self._pipeline, self._retry_timeout_s)).with_outputs(
                _WriteToKafkaFn.FAILED, main="sent")
        return results[_WriteToKafkaFn.FAILED]

