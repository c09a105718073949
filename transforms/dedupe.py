"""Drop duplicate events (producer retries, replayed Kafka ranges) by event id.

::

    events --KeyByEventId--> (event_id, event) --_DedupeFn (stateful)--> first occurrences

``_DedupeFn`` keeps one flag per event id in bag state (bag is the user-state
kind every portable runner supports, Flink included) and an expiry timer.

Time domain of the TTL: event time. The timer is set, on the first
occurrence, to ``event timestamp + ttl_seconds`` in the WATERMARK domain.

* Duplicates of one event carry the same event time (the parse step
  timestamps each event from its payload), so "alive until the watermark
  passes first-seen event time + TTL" is a statement about the data, and a
  replay after a restart reproduces the same decisions.
* It needs only bag state and event-time timers, which every portable
  runner supports: on FnApiRunner (batch) the watermark stays at -inf until
  the input is exhausted, so every duplicate in the batch is dropped, then
  the timers fire and clear state; on BundleBasedDirectRunner and Flink
  (streaming) state is cleared as the watermark advances. The unit tests
  cover the first two; on Flink it runs wherever the frontend job does.
  Processing-time timers would behave differently per runner (batch
  runners fire them at the end or not at all) and would make the result
  depend on how fast the job runs.

Guarantee: within the TTL (measured on the watermark) a duplicate is dropped
and counted in ``duplicates_dropped``; a duplicate arriving after its state
expired (a replay older than the TTL, or an event so late that the watermark
is already past its time + TTL) is emitted again. That is acceptable because
every sink upserts on ``event_id``: dedupe here saves work and keeps session
counts right in the common case, it is not the only line of defence.

Batched path (``batched=True``, the streaming Kafka jobs' default): lists of
events are split by ``bucket_key`` = (time slice of the event time, crc32 of
the id % buckets); one bag of id lists, one small version value and ONE timer
per (slice, bucket) key, at slice end + TTL, where the whole key is dropped.
Slices are TTL / 24 long, so an id is remembered from its first occurrence
until the watermark passes its slice's end + TTL: at least the TTL, at most
TTL * 25 / 24. Within that a duplicate is dropped, exactly as above; after it
the copy is emitted again and the sinks' upserts absorb it. State holds the
ids of at most 25 slices per bucket, so it is bounded by the TTL whatever the
job's age, and a batch touches one key per (slice, bucket) it contains: with
16 buckets a 500-event poll costs about 16 state reads and writes instead of
500 reads, 500 writes and 500 timers.

Worked timeline (ttl_seconds = 3600, times in event time)::

    e1 id=A t=10:00  -> emitted, state[A]=seen, timer[A]=11:00
    e2 id=A t=10:00  -> dropped (duplicates_dropped=1)       (producer retry)
    watermark 11:00  -> timer[A] fires, state[A] cleared
    e3 id=A t=10:00  -> emitted again (replay beyond the TTL; sinks upsert)
"""
from __future__ import annotations

import random
import typing
import zlib

import apache_beam as beam
from apache_beam.coders import BooleanCoder, IterableCoder, StrUtf8Coder, VarIntCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (
    BagStateSpec,
    ReadModifyWriteStateSpec,
    TimerSpec,
    on_timer,
)
from apache_beam.utils.timestamp import Duration, Timestamp

from transforms.batches import split_by, timestamped_batch
from transforms.beam_compat import use_fast_state_cache_sizing

__all__ = ["DedupeEvents", "DEFAULT_TTL_SECONDS", "DEFAULT_BUCKETS", "bucket_key", "slice_ms_for"]

DEFAULT_TTL_SECONDS = 86400  # a day covers producer retries and same-day replays
# Batched path: id-hash buckets per time slice. Each batch of events is split
# into at most this many sub-lists per slice, so a 500-event poll becomes ~16
# state accesses instead of 500; 16 keys still spread over a few subtasks.
DEFAULT_BUCKETS = 16
# Batched path: a slice of event time is TTL / SLICES_PER_TTL long; an id is
# kept from its first occurrence until the watermark passes its slice's end +
# TTL, i.e. between TTL and TTL * (1 + 1 / SLICES_PER_TTL).
SLICES_PER_TTL = 24


def _event_id(event: dict) -> str:
    return event["event_id"]


class _DedupeFn(beam.DoFn):
    SEEN = BagStateSpec("seen", BooleanCoder())
    EXPIRY = TimerSpec("expiry", TimeDomain.WATERMARK)

    def __init__(self, ttl_seconds: int, namespace: str):
        self._ttl = Duration(seconds=ttl_seconds)
        self._kept = Metrics.counter(namespace, "dedupe_kept")
        self._dropped = Metrics.counter(namespace, "duplicates_dropped")

    def setup(self):
        # Per-key state reads/writes are this step's hot path; see
        # transforms/beam_compat.py for why the cache sizing is replaced.
        use_fast_state_cache_sizing()

    def process(
        self,
        element,
        timestamp=beam.DoFn.TimestampParam,
        seen=beam.DoFn.StateParam(SEEN),
        expiry=beam.DoFn.TimerParam(EXPIRY),
    ):
        _, event = element
        if next(iter(seen.read()), False):
            self._dropped.inc()
            return
        seen.add(True)
        expiry.set(timestamp + self._ttl)
        self._kept.inc()
        yield event

    @on_timer(EXPIRY)
    def expire(self, seen=beam.DoFn.StateParam(SEEN)):
        seen.clear()


def _origin(event: dict) -> tuple:
    source = event.get("_source") or {}
    return (str(source.get("topic", "")), int(source.get("partition", -1)),
            int(source.get("offset", -1)))


class _KeepFirstFn(beam.DoFn):
    """Bounded input: all copies of an id arrive in one group; keep the one
    first in the source (lowest topic/partition/offset), so re-runs keep the
    same copy."""

    def __init__(self, namespace: str):
        self._kept = Metrics.counter(namespace, "dedupe_kept")
        self._dropped = Metrics.counter(namespace, "duplicates_dropped")

    def process(self, element):
        _, copies = element
        copies = list(copies)
        first = min(copies, key=_origin) if len(copies) > 1 else copies[0]
        self._kept.inc()
        if len(copies) > 1:
            self._dropped.inc(len(copies) - 1)
        # GroupByKey stamps its output at the end of the window; put the
        # event back at its own event time for the session windows after us.
        yield beam.window.TimestampedValue(first, first["timestamp_ms"] / 1000.0)


def slice_ms_for(ttl_seconds: int) -> int:
    """Length of one time slice of the batched path, in milliseconds."""
    return max(1000, int(ttl_seconds) * 1000 // SLICES_PER_TTL)


def bucket_key(event_id: str, timestamp_ms: int, buckets: int, slice_ms: int) -> str:
    """``"<slice start ms>:<bucket>"``: the state key of one event id in the
    batched path. ``crc32``, not ``hash()``: Python salts ``hash`` per process,
    and a replay on another worker must find the same key."""
    bucket = zlib.crc32(event_id.encode("utf-8")) % buckets
    return f"{timestamp_ms - timestamp_ms % slice_ms}:{bucket}"


class _DedupeBatchFn(beam.DoFn):
    """Batched de-duplication: ``(bucket key, list of events)`` -> the list of
    first occurrences. One bag of id lists per key (an id-hash bucket within
    one time slice), one timer per key at slice end + TTL that drops it all.

    The id set of a key is kept decoded in this instance (``_index``) next to
    the random ``version`` it was built from; every write to the bag also
    writes a new version in the same bundle, so a matching version proves the
    in-memory set equals the durable state (a failed bundle or a restore
    leaves an older version behind, and the set is rebuilt from the bag).
    So a batch costs one small state read, one append and one write per key,
    not a read of every id seen so far.
    """

    IDS = BagStateSpec("ids", IterableCoder(StrUtf8Coder()))
    VERSION = ReadModifyWriteStateSpec("version", VarIntCoder())
    EXPIRY = TimerSpec("expiry", TimeDomain.WATERMARK)

    def __init__(self, key_fn, ttl_seconds: int, slice_ms: int, namespace: str):
        self._key_fn = key_fn
        self._ttl_ms = int(ttl_seconds) * 1000
        self._slice_ms = slice_ms
        self._kept = Metrics.counter(namespace, "dedupe_kept")
        self._dropped = Metrics.counter(namespace, "duplicates_dropped")
        self._index: typing.Dict[str, list] = {}
        self._newest_ms = 0

    def setup(self):
        use_fast_state_cache_sizing()
        self._index = {}
        self._newest_ms = 0

    def _expires_at_ms(self, key: str) -> int:
        return int(key.split(":", 1)[0]) + self._slice_ms + self._ttl_ms

    def _forget_expired(self, now_ms: int) -> None:
        # Only memory: an entry dropped here too early is rebuilt from state.
        for key in [k for k in self._index if self._expires_at_ms(k) < now_ms]:
            del self._index[key]

    def process(
        self,
        element,
        ids=beam.DoFn.StateParam(IDS),
        version=beam.DoFn.StateParam(VERSION),
        expiry=beam.DoFn.TimerParam(EXPIRY),
    ):
        key, events = element
        durable = version.read()
        entry = self._index.get(key)
        if entry is None or durable is None or entry[0] != durable:
            seen: typing.Set[str] = set()
            if durable is None:
                # First batch of this key: its one timer.
                expiry.set(Timestamp(micros=self._expires_at_ms(key) * 1000))
            else:
                for chunk in ids.read():
                    seen.update(chunk)
            entry = [durable, seen]
            newest = max(e["timestamp_ms"] for e in events)
            if newest > self._newest_ms:
                self._newest_ms = newest
                self._forget_expired(newest - self._slice_ms)
            self._index[key] = entry
        seen = entry[1]
        fresh_ids: typing.List[str] = []
        out = []
        for event in events:
            event_id = str(self._key_fn(event))
            if event_id in seen:
                continue
            seen.add(event_id)
            fresh_ids.append(event_id)
            out.append(event)
        dropped = len(events) - len(out)
        if dropped:
            self._dropped.inc(dropped)
        if not out:
            return
        ids.add(fresh_ids)
        entry[0] = random.getrandbits(62) + 1
        version.write(entry[0])
        self._kept.inc(len(out))
        yield timestamped_batch(out)

    @on_timer(EXPIRY)
    def expire(self, key=beam.DoFn.KeyParam, ids=beam.DoFn.StateParam(IDS),
               version=beam.DoFn.StateParam(VERSION)):
        ids.clear()
        version.clear()
        self._index.pop(key, None)


def _split_into_buckets(key_fn, buckets: int, slice_ms: int):
    def split(events):
        return list(split_by(
            events, lambda e: bucket_key(str(key_fn(e)), e["timestamp_ms"], buckets, slice_ms)).items())
    return split


class DedupeEvents(beam.PTransform):
    """Keeps the first occurrence of each key (default: ``event["event_id"]``).

    ``streaming=True`` (unbounded input): a stateful DoFn remembers each id for
    ``ttl_seconds`` of event time; see the module docstring for the guarantee.
    ``streaming=False`` (bounded input: files, Kafka backfills): a GroupByKey
    on the id, which is exact for the whole input and much cheaper than
    per-key state on batch runners (no state reads, writes or timers).

    ``batched=True`` (streaming only): elements are lists of events (see
    transforms/batches.py); each list is split by id-hash bucket and time
    slice and the state of a (slice, bucket) key is read and written once per
    sub-list. Same guarantee, with the id kept until the watermark passes its
    time slice's end + TTL (TTL to TTL * 25/24 after its event time). Output:
    lists of first occurrences.

    The input must be in the global window (dedupe runs before session
    windowing); event timestamps are kept."""

    def __init__(self, key_fn: typing.Callable[[dict], str] = _event_id,
                 ttl_seconds: int = DEFAULT_TTL_SECONDS, namespace: str = "frontend",
                 streaming: bool = True, batched: bool = False,
                 buckets: int = DEFAULT_BUCKETS):
        super().__init__()
        if ttl_seconds is None or ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        if batched and not streaming:
            raise ValueError("batched de-duplication is for streaming input")
        if buckets <= 0:
            raise ValueError("buckets must be positive")
        self._key_fn = key_fn
        self._ttl_seconds = int(ttl_seconds)
        self._namespace = namespace
        self._streaming = streaming
        self._batched = batched
        self._buckets = buckets

    def expand(self, events):
        key_fn = self._key_fn
        if self._batched:
            slice_ms = slice_ms_for(self._ttl_seconds)
            return (
                events
                | "SplitByIdBucket" >> beam.FlatMap(
                    _split_into_buckets(key_fn, self._buckets, slice_ms)).with_output_types(
                        typing.Tuple[str, typing.Any])
                | "DropDuplicateBatches" >> beam.ParDo(_DedupeBatchFn(
                    key_fn, self._ttl_seconds, slice_ms, self._namespace))
            )
        keyed = events | "KeyByEventId" >> beam.Map(lambda e: (str(key_fn(e)), e)).with_output_types(
            typing.Tuple[str, typing.Any])
        if not self._streaming:
            return (
                keyed
                | "GroupByEventId" >> beam.GroupByKey()
                | "KeepFirstOccurrence" >> beam.ParDo(_KeepFirstFn(self._namespace))
            )
        return keyed | "DropDuplicates" >> beam.ParDo(_DedupeFn(self._ttl_seconds, self._namespace))
