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

Worked timeline (ttl_seconds = 3600, times in event time)::

    e1 id=A t=10:00  -> emitted, state[A]=seen, timer[A]=11:00
    e2 id=A t=10:00  -> dropped (duplicates_dropped=1)       (producer retry)
    watermark 11:00  -> timer[A] fires, state[A] cleared
    e3 id=A t=10:00  -> emitted again (replay beyond the TTL; sinks upsert)
"""
from __future__ import annotations

import typing

import apache_beam as beam
from apache_beam.coders import BooleanCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Duration

from transforms.beam_compat import use_fast_state_cache_sizing

__all__ = ["DedupeEvents", "DEFAULT_TTL_SECONDS"]

DEFAULT_TTL_SECONDS = 86400  # a day covers producer retries and same-day replays


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


class DedupeEvents(beam.PTransform):
    """Keeps the first occurrence of each key (default: ``event["event_id"]``).

    ``streaming=True`` (unbounded input): a stateful DoFn remembers each id for
    ``ttl_seconds`` of event time; see the module docstring for the guarantee.
    ``streaming=False`` (bounded input: files, Kafka backfills): a GroupByKey
    on the id, which is exact for the whole input and much cheaper than
    per-key state on batch runners (no state reads, writes or timers).

    The input must be in the global window (dedupe runs before session
    windowing); event timestamps are kept."""

    def __init__(self, key_fn: typing.Callable[[dict], str] = _event_id,
                 ttl_seconds: int = DEFAULT_TTL_SECONDS, namespace: str = "frontend",
                 streaming: bool = True):
        super().__init__()
        if ttl_seconds is None or ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        self._key_fn = key_fn
        self._ttl_seconds = int(ttl_seconds)
        self._namespace = namespace
        self._streaming = streaming

    def expand(self, events):
        key_fn = self._key_fn
        keyed = events | "KeyByEventId" >> beam.Map(lambda e: (str(key_fn(e)), e)).with_output_types(
            typing.Tuple[str, typing.Any])
        if not self._streaming:
            return (
                keyed
                | "GroupByEventId" >> beam.GroupByKey()
                | "KeepFirstOccurrence" >> beam.ParDo(_KeepFirstFn(self._namespace))
            )
        return keyed | "DropDuplicates" >> beam.ParDo(_DedupeFn(self._ttl_seconds, self._namespace))
