"""Kafka publishing for the collector and the producer client.

``KafkaPublisher.publish`` sends a batch of records and returns once Kafka has
acknowledged every one of them (``acks=all``: the partition leader and its
in-sync replicas have the record), or raises ``PublishUnavailable``. The
producer batches across concurrent calls (``linger_ms``), so many small HTTP
requests share produce requests::

    request A --send x3--\\                          /--> A's future resolves
    request B --send x1----> producer batch (linger) --acks=all--> B's future
    request C --send x2--/                          \\--> C's future

kafka-python's ``send`` may block (waiting for topic metadata, or for buffer
space), so it runs on a small thread pool, never on the event loop; its
delivery callbacks run on the producer's I/O thread and hand the outcome back
to the loop with ``call_soon_threadsafe``, once per batch.

Delivery guarantee: at least once. A batch that fails part-way may have put
some of its records in Kafka while the caller is told it failed; the caller
retries, and the pipelines de-duplicate on the payload's ``event_id`` (or its
content hash). Nothing is reported as delivered that Kafka did not
acknowledge.

When the broker cannot be reached the producer is not created (or its sends
time out after ``max_block_ms``): ``publish`` raises ``PublishUnavailable``
and a later call tries again, at most once per ``reconnect_interval_s``.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
import typing

from iheard_io.security import resolve_secret_files

__all__ = ["KafkaPublisher", "PublishUnavailable", "Delivery", "DEFAULT_PRODUCER_CONFIG"]

# acks=all and idempotence: an acknowledged record is on every in-sync
# replica, and the producer's own retries do not duplicate it.
# linger_ms=5 lets concurrent requests share a produce request; 256 KiB
# batches hold a few hundred widget events.
DEFAULT_PRODUCER_CONFIG = {
    "acks": "all",
    "enable_idempotence": True,
    "linger_ms": 5,
    "batch_size": 256 * 1024,
    "compression_type": None,
    "retries": 5,
    # Bounds on waiting for a broker that is gone: metadata / buffer space,
    # and the whole life of a record in the producer.
    "max_block_ms": 3000,
    "request_timeout_ms": 5000,
    "delivery_timeout_ms": 10000,
    "bootstrap_timeout_ms": 3000,
}


class PublishUnavailable(RuntimeError):
    """Kafka did not acknowledge the batch (unreachable, timed out, refused)."""


class Delivery(typing.NamedTuple):
    """Where an acknowledged record landed."""

    topic: str
    partition: int
    offset: int


class _BatchWaiter:
    """Counts a batch's delivery callbacks down on the producer's thread and
    resolves one asyncio future when the last one arrives (or the first fails)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future, size: int,
                 on_each: typing.Optional[typing.Callable] = None):
        self._loop = loop
        self._future = future
        self._remaining = size
        self._results: typing.List[typing.Optional[Delivery]] = [None] * size
        self._lock = threading.Lock()
        self._done = False
        self._on_each = on_each

    def callbacks(self, index: int):
        def ok(metadata):
            delivery = Delivery(metadata.topic, metadata.partition, metadata.offset)
            if self._on_each is not None:
                self._on_each(index, delivery, None)
            with self._lock:
                self._results[index] = delivery
                self._remaining -= 1
                finished = self._remaining == 0 and not self._done
                self._done = self._done or finished
            if finished:
                self._loop.call_soon_threadsafe(_resolve, self._future, self._results, None)

        def failed(exc):
            if self._on_each is not None:
                self._on_each(index, None, exc)
            with self._lock:
                first = not self._done
                self._done = True
            if first:
                self._loop.call_soon_threadsafe(_resolve, self._future, None, exc)

        return ok, failed


def _resolve(future: asyncio.Future, result, exc) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(PublishUnavailable(f"Kafka did not acknowledge: {type(exc).__name__}: {exc}"))
    else:
        future.set_result(list(result))


class KafkaPublisher:
    """A kafka-python producer shared by every request of the process.

    ``client_config`` is ``iheard_io.kafka.kafka_client_config(...)`` (bootstrap
    servers, security); ``producer_config`` overrides ``DEFAULT_PRODUCER_CONFIG``.
    """

    def __init__(
        self,
        client_config: typing.Mapping[str, typing.Any],
        producer_config: typing.Optional[typing.Mapping[str, typing.Any]] = None,
        send_threads: int = 2,
        reconnect_interval_s: float = 2.0,
    ):
        if not client_config.get("bootstrap_servers"):
            raise ValueError("client_config needs bootstrap_servers")
        if send_threads < 1:
            raise ValueError(f"send_threads must be >= 1, got {send_threads}")
        self._config = {**DEFAULT_PRODUCER_CONFIG, **resolve_secret_files(client_config), **(producer_config or {})}
        # A little past the producer's own bound, so its error (which names
        # the cause) normally arrives first.
        self._ack_timeout_s = self._config["delivery_timeout_ms"] / 1000.0 + 2.0
        self._reconnect_interval_s = reconnect_interval_s
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=send_threads, thread_name_prefix="kafka-send")
        self._producer = None
        self._producer_lock = threading.Lock()
        self._last_attempt = float("-inf")
        self._last_error: typing.Optional[str] = None
        self._closed = False

    @property
    def connected(self) -> bool:
        return self._producer is not None

    @property
    def last_error(self) -> typing.Optional[str]:
        return self._last_error

    def _get_producer(self):
        if self._producer is not None:
            return self._producer
        with self._producer_lock:
            if self._producer is not None:
                return self._producer
            if self._closed:
                raise PublishUnavailable("publisher is closed")
            now = time.monotonic()
            if now - self._last_attempt < self._reconnect_interval_s:
                raise PublishUnavailable(f"Kafka unavailable: {self._last_error}")
            self._last_attempt = now
            from kafka import KafkaProducer
            from kafka.errors import KafkaError

            try:
                self._producer = KafkaProducer(**self._config)
            except KafkaError as exc:
                self._last_error = str(exc) or type(exc).__name__
                raise PublishUnavailable(f"Kafka unavailable: {self._last_error}") from None
            self._last_error = None
            return self._producer

    def connect(self) -> bool:
        """Creates the producer now (a server's startup); False when Kafka is
        unreachable (``publish`` will try again)."""
        try:
            self._get_producer()
            return True
        except PublishUnavailable:
            return False

    def send_batch(self, records: typing.Sequence[typing.Tuple[str, bytes, bytes, typing.Optional[int]]],
                   callbacks: typing.Callable[[int], typing.Tuple[typing.Callable, typing.Callable]]) -> None:
        """Hands ``(topic, key, value, timestamp_ms)`` records to the producer
        (blocking; call it off the event loop) with per-record callbacks."""
        from kafka.errors import KafkaError

        producer = self._get_producer()
        try:
            for index, (topic, key, value, timestamp_ms) in enumerate(records):
                future = producer.send(topic, key=key, value=value, timestamp_ms=timestamp_ms)
                ok, failed = callbacks(index)
                future.add_callback(ok)
                future.add_errback(failed)
        except KafkaError as exc:
            self._last_error = str(exc) or type(exc).__name__
            raise PublishUnavailable(f"Kafka unavailable: {self._last_error}") from None

    async def publish(self, records, on_each=None) -> typing.List[Delivery]:
        """Publishes ``(topic, key, value, timestamp_ms)`` records; returns their
        deliveries once all are acknowledged. ``on_each(index, delivery, error)``
        is called on the producer's thread for every record (delivery callbacks)."""
        records = list(records)
        if not records:
            return []
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        waiter = _BatchWaiter(loop, future, len(records), on_each)
        await loop.run_in_executor(self._executor, self.send_batch, records, waiter.callbacks)
        try:
            return await asyncio.wait_for(future, self._ack_timeout_s)
        except asyncio.TimeoutError:
            raise PublishUnavailable(
                f"Kafka did not acknowledge within {self._ack_timeout_s:.0f} s") from None

    def flush(self, timeout_s: typing.Optional[float] = None) -> None:
        if self._producer is not None:
            self._producer.flush(timeout=timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        """Delivers what is pending (up to ``timeout_s``) and closes."""
        self._closed = True
        self._executor.shutdown(wait=True)
        with self._producer_lock:
            if self._producer is not None:
                self._producer.close(timeout=timeout_s)
                self._producer = None
