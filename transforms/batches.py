"""Lists of events as pipeline elements: the streaming hot path.

On portable Flink every element that leaves a fused stage crosses the Fn API
data plane between the TaskManager and the Python worker, and every element
that reaches a stateful step costs a keyed-state access. Both are fixed costs
per *element*, so the streaming pipelines carry a batch of events (one Kafka
poll of a partition, up to a few hundred records) as one element from the
source to the sinks::

    ReadFromKafka(batched=True)   list[SourceRecord] per poll
      -> ParseEvents(batched)     list[event] + one FailedRecord per bad record
      -> RedactPii / Enrich       list[event] -> list[event] (+ failures)
      -> DedupeEvents(batched)    list split by id-hash bucket and time slice;
                                  state read/written once per sub-list
      -> sinks                    one write (COPY, Redis pipeline, archive
                                  group) per list
      '-> ExplodeBatches          events one by one again, each at its own
                                  event time, only where a step needs
                                  per-event windows (session windows)

Each list is an ``EventBatch`` (schemas/records.py): a ``list`` whose type
makes Beam's default coder pickle it whole, about half the encoding time and
a third of the bytes of a plain list of dicts at every stage boundary.

Why lists and not Beam's own batching facilities:

* Batched DoFns (``process_batch``) batch *inside* a fused stage only: at a
  stage boundary the runner still encodes and ships elements one by one,
  which is the cost removed here.
* ``BatchElements`` would batch after the source has already paid the
  per-record crossing; the Kafka poll is already a natural batch.
* ``GroupIntoBatches`` needs a keyed state access and a timer per key to form
  each batch: the per-element state cost this design avoids.

A batch's element timestamp is its oldest event's time (never later than any
event in it); each event keeps its own ``timestamp_ms``, and
``ExplodeBatches`` restores per-event timestamps where windows need them.
Every step that can fail on one event routes that event alone to its failed
output; the rest of the batch goes on.
"""
from __future__ import annotations

import typing

import apache_beam as beam
from apache_beam.transforms.window import TimestampedValue

from schemas.records import EventBatch

__all__ = [
    "EventBatch",
    "ExplodeBatches",
    "MapBatchMixin",
    "batch_timestamp",
    "split_by",
    "timestamped_batch",
]


def batch_timestamp(events: typing.Sequence[dict]) -> float:
    """Epoch seconds of the oldest event (``timestamp_ms``) in ``events``."""
    return min(e["timestamp_ms"] for e in events) / 1000.0


def timestamped_batch(events: typing.List[dict]) -> TimestampedValue:
    """``events`` as one element (an ``EventBatch``) stamped with its oldest
    event's time."""
    return TimestampedValue(EventBatch(events), batch_timestamp(events))


def split_by(items: typing.Iterable, key_fn: typing.Callable) -> typing.Dict[typing.Any, EventBatch]:
    """Items grouped by ``key_fn(item)``, each group an ``EventBatch`` in
    input order (the groups are what crosses the next stage boundary)."""
    groups: typing.Dict[typing.Any, EventBatch] = {}
    for item in items:
        key = key_fn(item)
        group = groups.get(key)
        if group is None:
            groups[key] = EventBatch((item,))
        else:
            group.append(item)
    return groups


class MapBatchMixin:
    """Makes a per-event DoFn take lists of events.

    The DoFn's ``_one(item)`` returns ``(value, None)`` or ``(None,
    FailedRecord)``; this ``process`` applies it to every item of a list,
    yields each failure on the ``failed`` output and the values as one list
    (``_batch_of`` can stamp it). Every per-event step of the batched path
    (parse, PII, enrichment) is its per-event DoFn plus this mixin."""

    FAILED_TAG = "failed"

    def _batch_of(self, values: list):
        return EventBatch(values)

    def process(self, items):
        values = []
        for item in items:
            value, failed = self._one(item)
            if failed is not None:
                yield beam.pvalue.TaggedOutput(self.FAILED_TAG, failed)
            else:
                values.append(value)
        if values:
            yield self._batch_of(values)


def _explode(batch):
    for event in batch:
        yield TimestampedValue(event, event["timestamp_ms"] / 1000.0)


class ExplodeBatches(beam.PTransform):
    """``PCollection[list[event]]`` -> ``PCollection[event]``, each event at
    its own event time (``timestamp_ms``), as the per-event path emits them."""

    def expand(self, batches):
        return batches | "OneElementPerEvent" >> beam.FlatMap(_explode)
