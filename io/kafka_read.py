"""``ReadFromKafka``: the splittable-DoFn Kafka source (see iheard_io.kafka for the design).
"""
from __future__ import annotations

import logging
import threading
import time
import typing

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange
from apache_beam.io.restriction_trackers import OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration
from apache_beam.utils.timestamp import Timestamp

from schemas.records import SourceRecord

from iheard_io.kafka_client import _tuning_config, kafka_client_config
from iheard_io.security import resolve_secret_files

__all__ = ['ReadFromKafka', 'START_FROM', 'DEFAULT_MAX_READ_TIME_S', 'DEFAULT_MAX_OUT_OF_ORDER_S']

_LOG = logging.getLogger(__name__)

START_FROM = ("committed", "earliest", "latest")

# A streaming restriction has no end; the largest int64 is the usual stand-in
# (Kafka offsets are int64 and never get near it).
_UNBOUNDED_STOP = 2**63 - 1

# How long one process() call may read before it hands the remainder back to
# the runner. Short enough that Flink can checkpoint between calls (a Python
# SDF cannot be split while it runs), long enough to amortise the call.
DEFAULT_MAX_READ_TIME_S = 1.0

# Producer (CreateTime) timestamps within one partition are out of order by
# up to a few hundred ms when several producers write to it; 2 s of slack
# keeps those records on time at the cost of 2 s of window latency.
DEFAULT_MAX_OUT_OF_ORDER_S = 2.0

# How long discovery waits for topic metadata before it gives up: a topic that
# is still being created shows no partitions for a moment.
_METADATA_WAIT_S = 15.0


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------


class _PartitionSpec(typing.NamedTuple):
    """One SDF input element: where a partition's restriction starts and,
    in bounded mode, where it stops."""
    topic: str
    partition: int
    start_offset: int
    stop_offset: int  # _UNBOUNDED_STOP in streaming mode


class _DiscoverPartitionsFn(beam.DoFn):
    """Impulse -> one ``_PartitionSpec`` per partition of each topic.

    Runs at pipeline start on a worker, so end offsets (bounded mode) and
    committed offsets are those of the moment the job starts, not of the
    moment it was built."""

    def __init__(self, client_config, topics, group_id, bounded, start_from,
                 consumer_config):
        self._client_config = client_config
        self._topics = list(topics)
        self._group_id = group_id
        self._bounded = bounded
        self._start_from = start_from
        self._consumer_config = dict(consumer_config or {})

    def process(self, unused_impulse):
        from kafka import KafkaConsumer
        from kafka import TopicPartition

        consumer = KafkaConsumer(**resolve_secret_files({
            **self._client_config,
            **self._consumer_config,
            "group_id": self._group_id,
            "enable_auto_commit": False,
        }))
        try:
            partitions = []
            for topic in self._topics:
                deadline = time.monotonic() + _METADATA_WAIT_S
                ids = consumer.partitions_for_topic(topic)
                while not ids and time.monotonic() < deadline:
                    time.sleep(0.5)
                    consumer.topics()  # refreshes cluster metadata
                    ids = consumer.partitions_for_topic(topic)
                if not ids:
                    raise ValueError(f"Kafka topic {topic!r} has no partitions (does it exist?)")
                partitions.extend(TopicPartition(topic, p) for p in sorted(ids))

            beginning = consumer.beginning_offsets(partitions)
            end = consumer.end_offsets(partitions)
            for tp in partitions:
                start = beginning[tp]
                if self._start_from == "latest":
                    start = end[tp]
                elif self._start_from == "committed" and self._group_id:
                    committed = consumer.committed(tp)
                    if committed is not None:
                        start = max(committed, beginning[tp])
                stop = end[tp] if self._bounded else _UNBOUNDED_STOP
                _LOG.info("Kafka %s[%d]: reading offsets [%d, %s)", tp.topic,
                          tp.partition, start, stop if self._bounded else "inf")
                yield _PartitionSpec(tp.topic, tp.partition, start, max(start, stop))
        finally:
            consumer.close(autocommit=False)


class _PartitionRestrictionProvider(RestrictionProvider):
    def initial_restriction(self, spec: _PartitionSpec) -> OffsetRange:
        return OffsetRange(spec.start_offset, spec.stop_offset)

    def create_tracker(self, restriction: OffsetRange) -> OffsetRestrictionTracker:
        return OffsetRestrictionTracker(restriction)

    def restriction_size(self, spec, restriction: OffsetRange):
        return restriction.size()

    def split(self, spec, restriction):
        # Offsets of one partition must be read in order by one reader: no
        # initial splitting (dynamic checkpointing still works).
        yield restriction


class _ReadFromKafkaPartitionFn(beam.DoFn):
    """Reads one partition's ``OffsetRange``.

    Each ``process()`` call assigns the partition to the instance's consumer
    and seeks to the restriction start (unless the consumer is already there,
    which keeps its prefetched records). Streaming: it polls for at most
    ``max_read_time_s``, or only until it has emitted records and reached the
    partition's high watermark (so a live stream's records go downstream at
    once while a backlog is read in large calls), then defers the remainder,
    so the runner can checkpoint between calls. Bounded: it reads until the
    consumer position reaches the stop, then claims the stop offset to finish
    (a Kafka error defers the remainder instead, to retry later).

    Offsets can have gaps (compaction, transaction markers), so completion is
    decided by the consumer position reaching the stop, and the restriction is
    closed with ``try_claim(stop)`` - ``OffsetRestrictionTracker.check_done``
    wants the last claim attempt at or past ``stop - 1``, which a gap at the
    end would otherwise never give.

    Watermark: after records, the latest record timestamp seen minus
    ``max_out_of_order_s`` (never moving back); when the partition is caught
    up and a poll returns nothing, wall clock minus ``idle_watermark_lag_s``,
    so that session windows downstream close even on quiet partitions.
    """

    COMMITTED = "committed_offsets"

    def __init__(self, client_config, group_id, consumer_config, bounded,
                 max_records_per_poll, poll_timeout_ms, idle_watermark_lag_s,
                 max_out_of_order_s, timestamp_fn, max_read_time_s,
                 stop_after_idle_s, commit_offsets, batched=False):
        self._client_config = client_config
        self._group_id = group_id
        self._consumer_config = dict(consumer_config or {})
        self._bounded = bounded
        self._max_records_per_poll = max_records_per_poll
        self._poll_timeout_ms = poll_timeout_ms
        self._idle_watermark_lag_s = idle_watermark_lag_s
        self._max_out_of_order_s = max_out_of_order_s
        self._timestamp_fn = timestamp_fn
        self._max_read_time_s = max_read_time_s
        self._stop_after_idle_s = stop_after_idle_s
        self._commit_offsets = commit_offsets and group_id is not None
        self._batched = batched
        self._consumer = None
        self._lock = None
        self._idle_since: typing.Dict[tuple, float] = {}
        self._records = Metrics.counter("ReadFromKafka", "records")
        self._commits = Metrics.counter("ReadFromKafka", "offset_commits")
        self._commit_failures = Metrics.counter("ReadFromKafka", "offset_commit_failures")

    def setup(self):
        from kafka import KafkaConsumer

        # The bundle finalizer may run on another thread than process().
        self._lock = threading.RLock()
        config = {
            # Only used when the restriction start fell out of retention.
            "auto_offset_reset": "earliest",
            **self._client_config,
            **self._consumer_config,
            "group_id": self._group_id,
            # Our restriction is the position; the group offset is committed by
            # hand after the bundle is durable, never automatically.
            "enable_auto_commit": False,
        }
        self._consumer = KafkaConsumer(**resolve_secret_files(config))

    def teardown(self):
        if self._consumer is not None:
            try:
                self._consumer.close(autocommit=False)
            except Exception:  # pylint: disable=broad-except
                _LOG.warning("closing Kafka consumer failed", exc_info=True)
            self._consumer = None

    # Bounded, no offset commits. Asking for a BundleFinalizerParam makes the
    # portable Flink runner refuse a batch job (Beam issue 19526), so the
    # variants that commit are separate classes below.
    def process(
        self,
        spec: _PartitionSpec,
        tracker=beam.DoFn.RestrictionParam(_PartitionRestrictionProvider()),
        watermark_estimator=beam.DoFn.WatermarkEstimatorParam(
            ManualWatermarkEstimator.default_provider()),
    ):
        return self._read(spec, tracker, watermark_estimator, None)

    def _read(self, spec, tracker, watermark_estimator, bundle_finalizer):
        from kafka import TopicPartition
        from kafka.errors import KafkaError

        tp = TopicPartition(spec.topic, spec.partition)
        key = (spec.topic, spec.partition)
        restriction = tracker.current_restriction()
        stop = restriction.stop
        with self._lock:
            if self._consumer.assignment() != {tp}:
                self._consumer.assign([tp])
                self._consumer.seek(tp, restriction.start)
            elif self._consumer.position(tp) != restriction.start:
                self._consumer.seek(tp, restriction.start)
            # else: resuming where this consumer stopped; keep what it has
            # already fetched.

        next_offset = None  # one past the last claimed offset
        started = time.monotonic()
        # Bounded reads need no checkpoints: one call reads to the stop.
        max_read_time_s = float("inf") if self._bounded else self._max_read_time_s
        while time.monotonic() - started < max_read_time_s:
            try:
                with self._lock:
                    polled = self._consumer.poll(
                        timeout_ms=self._poll_timeout_ms,
                        max_records=self._max_records_per_poll)
                    position = self._consumer.position(tp)
            except KafkaError:
                # Broker hiccup: give the restriction back and retry later;
                # nothing was claimed past what was emitted.
                _LOG.warning("Kafka poll of %s failed; retrying", tp, exc_info=True)
                break
            records = polled.get(tp, [])
            if not records:
                if position >= stop:
                    tracker.try_claim(stop)  # bounded: done (gaps included)
                    self._register_commit(bundle_finalizer, tp, next_offset)
                    return
                if self._on_idle(key, watermark_estimator, tracker, stop, position):
                    self._register_commit(bundle_finalizer, tp, next_offset)
                    return
                continue
            self._idle_since.pop(key, None)
            newest_ts = oldest_ts = None
            batch = []
            emitted = 0
            claimed_all = True
            for rec in records:
                if not tracker.try_claim(rec.offset):
                    # Reached the stop, or the runner split the restriction.
                    claimed_all = False
                    break
                next_offset = rec.offset + 1
                record = SourceRecord(
                    value=rec.value if rec.value is not None else b"",
                    topic=rec.topic,
                    partition=rec.partition,
                    offset=rec.offset,
                    key=rec.key,
                    timestamp_ms=rec.timestamp if rec.timestamp is not None and rec.timestamp >= 0 else None,
                )
                event_ts = self._event_timestamp(record)
                if newest_ts is None:
                    newest_ts = oldest_ts = event_ts
                else:
                    newest_ts = max(newest_ts, event_ts)
                    oldest_ts = min(oldest_ts, event_ts)
                emitted += 1
                if self._batched:
                    batch.append(record)
                else:
                    yield TimestampedValue(record, event_ts)
            if batch:
                # One element per poll: the list crosses the Fn API data plane
                # once, stamped with its oldest record's time.
                yield TimestampedValue(batch, oldest_ts)
            self._records.inc(emitted)
            if not claimed_all:
                self._register_commit(bundle_finalizer, tp, next_offset)
                return
            if newest_ts is not None:
                self._advance_watermark(
                    watermark_estimator, newest_ts - Duration(seconds=self._max_out_of_order_s))
            if next_offset >= stop:
                tracker.try_claim(stop)
                self._register_commit(bundle_finalizer, tp, next_offset)
                return
            if not self._bounded and self._caught_up(tp, next_offset):
                # Streaming and nothing more on the broker: hand these records
                # downstream now (on Flink they leave this stage when the call
                # returns) rather than polling on until max_read_time_s. With a
                # backlog the call keeps reading, so bundles stay large.
                break

        self._register_commit(bundle_finalizer, tp, next_offset)
        # Resume at once: the next call's poll blocks (up to poll_timeout_ms)
        # until records arrive, so there is no busy loop, and a record that
        # arrives right after this call returns does not wait out a delay.
        # benchmarks/flink_bench.py, 600 events at 30/s live (loaded machine):
        # produce -> Redis p50 0.29 s / p95 0.68-0.80 s with a 200 ms delay,
        # 0.24 / 0.52 s without.
        tracker.defer_remainder(Duration(seconds=0))

    def _event_timestamp(self, record: SourceRecord) -> Timestamp:
        if self._timestamp_fn is not None:
            try:
                value = self._timestamp_fn(record)
                if value is not None:
                    return value if isinstance(value, Timestamp) else Timestamp(seconds=float(value))
            except Exception:  # pylint: disable=broad-except
                # The reader never fails on payload content: fall back to the
                # broker timestamp; the parse step reports the bad payload.
                pass
        if record.timestamp_ms is not None:
            return Timestamp(micros=record.timestamp_ms * 1000)
        return Timestamp.now()

    @staticmethod
    def _advance_watermark(estimator, candidate: Timestamp):
        current = estimator.current_watermark()
        if current is None or candidate > current:
            estimator.set_watermark(candidate)

    def _caught_up(self, tp, position) -> bool:
        """Whether ``position`` is at the partition's high watermark as of the
        last fetch. Unknown (no fetch response yet) counts as not caught up:
        an empty poll before the first fetch returns must not move the
        watermark to wall clock over a backlog of older records."""
        with self._lock:
            highwater = self._consumer.highwater(tp)
        return highwater is not None and position >= highwater

    def _on_idle(self, key, estimator, tracker, stop, position) -> bool:
        """Caught up (no records): moves the watermark; returns True when the
        restriction was ended by ``stop_after_idle_s``."""
        if not self._caught_up(_topic_partition(key), position):
            return False
        now = time.time()
        if not self._bounded:
            self._advance_watermark(
                estimator, Timestamp(seconds=now - self._idle_watermark_lag_s))
        since = self._idle_since.setdefault(key, now)
        if self._stop_after_idle_s is not None and now - since >= self._stop_after_idle_s:
            self._idle_since.pop(key, None)
            tracker.try_claim(stop)
            return True
        return False

    def _register_commit(self, bundle_finalizer, tp, next_offset):
        if bundle_finalizer is None or not self._commit_offsets or next_offset is None:
            return
        from kafka.structs import OffsetAndMetadata

        def commit():
            # Runs once the runner made the bundle durable (on Flink: after
            # the checkpoint that holds the restriction). A lost commit only
            # makes the monitoring lag look larger for a while.
            try:
                with self._lock:
                    self._consumer.commit({tp: OffsetAndMetadata(next_offset, "", -1)})
                self._commits.inc()
            except Exception:  # pylint: disable=broad-except
                self._commit_failures.inc()
                _LOG.warning("committing offset %d for %s failed", next_offset, tp, exc_info=True)

        bundle_finalizer.register(commit)


def _topic_partition(key):
    from kafka import TopicPartition
    return TopicPartition(*key)


class _ReadFromKafkaPartitionCommittingFn(_ReadFromKafkaPartitionFn):
    """Bounded, committing the group's offsets from the bundle finalizer
    (FnApiRunner, DirectRunner; not portable Flink batch)."""

    def process(
        self,
        spec: _PartitionSpec,
        bundle_finalizer=beam.DoFn.BundleFinalizerParam,
        # Beam passes the tracker and the estimator as keywords: they must
        # come last, after every positional DoFn parameter.
        tracker=beam.DoFn.RestrictionParam(_PartitionRestrictionProvider()),
        watermark_estimator=beam.DoFn.WatermarkEstimatorParam(
            ManualWatermarkEstimator.default_provider()),
    ):
        return self._read(spec, tracker, watermark_estimator, bundle_finalizer)


class _ReadFromKafkaPartitionUnboundedFn(_ReadFromKafkaPartitionFn):
    """Streaming variant: same reader, marked as unbounded per element so the
    runner treats its output as an unbounded PCollection."""

    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        spec: _PartitionSpec,
        bundle_finalizer=beam.DoFn.BundleFinalizerParam,
        # Beam passes the tracker and the estimator as keywords: they must
        # come last, after every positional DoFn parameter.
        tracker=beam.DoFn.RestrictionParam(_PartitionRestrictionProvider()),
        watermark_estimator=beam.DoFn.WatermarkEstimatorParam(
            ManualWatermarkEstimator.default_provider()),
    ):
        return self._read(spec, tracker, watermark_estimator, bundle_finalizer)


class ReadFromKafka(beam.PTransform):
    """Reads Kafka topics as ``SourceRecord``s timestamped at the record time.

    Args:
      bootstrap_servers: ``host:port`` (or a list of them).
      topics: a topic name or a list of names.
      mode: ``"bounded"`` reads each partition up to its end offset at job
        start and then finishes; ``"streaming"`` reads forever.
      group_id: consumer group whose committed offsets are the start position
        (``start_from="committed"``) and which receives commits after each
        durable bundle (monitoring and lag; see the module docstring).
      start_from: ``"committed"`` (the group's committed offset, else the
        earliest offset), ``"earliest"`` or ``"latest"``.
      consumer_config: extra kafka-python ``KafkaConsumer`` settings (tuning
        only; security and servers are the arguments below).
      max_records_per_poll, poll_timeout_ms: one ``poll()``.
      idle_watermark_lag_seconds: on a caught-up partition the watermark moves
        to wall clock minus this; records that arrive later with older
        timestamps are late data.
      max_out_of_order_seconds: the watermark trails the newest record
        timestamp by this much, so records a little out of order within a
        partition (several producers, client clocks) are not late data.
      timestamp_fn: ``SourceRecord -> epoch seconds`` (or a Beam
        ``Timestamp``) for the element timestamp; default the Kafka record
        timestamp. If it raises, the Kafka timestamp is used.
      max_read_time_seconds: streaming only; how long one ``process()`` call
        reads before it hands the rest back to the runner (checkpoint
        latency on Flink).
      commit_offsets: commit the group's offsets from the bundle finalizer
        (only with a ``group_id``). Default: on in streaming mode, off in
        bounded mode, because the portable Flink runner rejects batch jobs
        that ask for bundle finalization (Beam issue 19526); pass ``True`` for
        a bounded read on the FnApiRunner/DirectRunner that should move the
        group (e.g. hourly catch-up runs with ``start_from="committed"``).
      batched: emit one ``list`` of ``SourceRecord``s per poll of a partition
        (up to ``max_records_per_poll``), stamped with its oldest record's
        time, instead of one element per record. A streaming job on Flink
        pays a fixed cost per element crossing the Fn API data plane; lists
        of hundreds of records pay it once (see transforms/batches.py).
      stop_after_idle_seconds: streaming only; ends a partition's restriction
        once it has been caught up with no new records for this long. For tests
        and backfills; ``None`` (default) reads forever.
      **security: the keyword arguments of ``kafka_client_config``
        (security_protocol, sasl_mechanism, username, password, password_file,
        ssl_cafile), listed and checked there only.
    """

    def __init__(
        self,
        bootstrap_servers,
        topics,
        mode: str = "bounded",
        group_id: typing.Optional[str] = None,
        consumer_config: typing.Optional[dict] = None,
        max_records_per_poll: int = 500,
        poll_timeout_ms: int = 200,
        idle_watermark_lag_seconds: float = 5.0,
        timestamp_fn: typing.Optional[typing.Callable[[SourceRecord], typing.Any]] = None,
        start_from: str = "committed",
        max_out_of_order_seconds: float = DEFAULT_MAX_OUT_OF_ORDER_S,
        max_read_time_seconds: float = DEFAULT_MAX_READ_TIME_S,
        stop_after_idle_seconds: typing.Optional[float] = None,
        commit_offsets: typing.Optional[bool] = None,
        batched: bool = False,
        **security,
    ):
        super().__init__()
        if mode not in ("bounded", "streaming"):
            raise ValueError(f"mode must be 'bounded' or 'streaming', got {mode!r}")
        if start_from not in START_FROM:
            raise ValueError(f"start_from must be one of {START_FROM}, got {start_from!r}")
        if isinstance(topics, str):
            topics = [topics]
        if not topics:
            raise ValueError("topics must name at least one topic")
        if max_records_per_poll <= 0 or poll_timeout_ms <= 0 or not max_read_time_seconds > 0:
            raise ValueError("max_records_per_poll, poll_timeout_ms and max_read_time_seconds must be positive")
        if stop_after_idle_seconds is not None and mode != "streaming":
            raise ValueError("stop_after_idle_seconds applies to streaming mode only")
        if commit_offsets is None:
            commit_offsets = mode == "streaming"
        self._client_config = kafka_client_config(bootstrap_servers, **security)
        self._topics = list(topics)
        self._bounded = mode == "bounded"
        self._group_id = group_id
        self._start_from = start_from
        self._consumer_config = _tuning_config(consumer_config, "consumer_config")
        self._fn_args = dict(
            max_records_per_poll=max_records_per_poll,
            poll_timeout_ms=poll_timeout_ms,
            idle_watermark_lag_s=idle_watermark_lag_seconds,
            max_out_of_order_s=max_out_of_order_seconds,
            timestamp_fn=timestamp_fn,
            max_read_time_s=max_read_time_seconds,
            stop_after_idle_s=stop_after_idle_seconds,
            commit_offsets=commit_offsets,
            batched=batched,
        )

    def expand(self, pbegin):
        if not self._bounded:
            fn_class = _ReadFromKafkaPartitionUnboundedFn
        elif self._fn_args["commit_offsets"] and self._group_id:
            fn_class = _ReadFromKafkaPartitionCommittingFn
        else:
            fn_class = _ReadFromKafkaPartitionFn
        return (
            pbegin
            | "Impulse" >> beam.Impulse()
            | "DiscoverPartitions" >> beam.ParDo(_DiscoverPartitionsFn(
                self._client_config, self._topics, self._group_id,
                self._bounded, self._start_from, self._consumer_config))
            | "ReadPartitions" >> beam.ParDo(fn_class(
                self._client_config, self._group_id, self._consumer_config,
                self._bounded, **self._fn_args))
        )


