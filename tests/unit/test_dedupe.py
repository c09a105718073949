"""Dedupe: the DoFn with stand-in state, batch on FnApiRunner, TTL expiry with TestStream."""
import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.test_stream import TestStream as BeamTestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from transforms.dedupe import DedupeEvents, _DedupeFn
from tests.unit.conftest import fn_api_runner


class _Bag:
    def __init__(self):
        self.items = []

    def read(self):
        return list(self.items)

    def add(self, value):
        self.items.append(value)

    def clear(self):
        self.items = []


class _Timer:
    def __init__(self):
        self.set_to = []

    def set(self, ts):
        self.set_to.append(ts)


def test_fn_first_emitted_duplicate_dropped_timer_clears():
    fn = _DedupeFn(ttl_seconds=60, namespace="test")
    fn.setup()
    bag, timer = _Bag(), _Timer()
    ts = Timestamp(1000)
    first = list(fn.process(("A", {"event_id": "A"}), timestamp=ts, seen=bag, expiry=timer))
    dup = list(fn.process(("A", {"event_id": "A"}), timestamp=ts, seen=bag, expiry=timer))
    assert first == [{"event_id": "A"}] and dup == []
    assert timer.set_to == [Timestamp(1060)]  # set once, at first-seen event time + 60 s
    fn.expire(seen=bag)
    again = list(fn.process(("A", {"event_id": "A"}), timestamp=ts, seen=bag, expiry=timer))
    assert again == [{"event_id": "A"}]  # after expiry the id is new again


def test_batch_keeps_first_of_each_id():
    events = [{"event_id": i, "n": n} for n, i in enumerate("AABCBA")]
    with BeamTestPipeline(runner=fn_api_runner()) as p:
        out = (p | beam.Create(events)
               | beam.Map(lambda e: TimestampedValue(e, 1705314600))
               | DedupeEvents(namespace="frontend"))
        assert_that(out | beam.Map(lambda e: e["event_id"]), equal_to(["A", "B", "C"]))
    counters = {c.key.metric.name: c.committed
                for c in p.result.metrics().query(MetricsFilter().with_namespace("frontend"))["counters"]}
    # 6 inputs: A A B C B A -> kept A, B, C; dropped 2nd A, 2nd B, 3rd A
    assert counters == {"dedupe_kept": 3, "duplicates_dropped": 3}


def test_custom_key_fn():
    events = [{"k": "x", "v": 1}, {"k": "x", "v": 2}, {"k": "y", "v": 3}]
    with BeamTestPipeline(runner=fn_api_runner()) as p:
        out = p | beam.Create(events) | DedupeEvents(key_fn=lambda e: e["k"], ttl_seconds=10)
        assert_that(out | beam.Map(lambda e: e["k"]), equal_to(["x", "y"]))


def test_ttl_expiry_on_watermark_streaming():
    """ttl 60 s. A@t=100 kept; dup A@t=100 dropped; watermark 200 (> 100 + 60)
    fires the timer and clears state; replayed A@t=100 is emitted again
    (the documented guarantee); B@t=150 unaffected."""
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    stream = (
        BeamTestStream()
        .add_elements([TimestampedValue({"event_id": "A", "n": 1}, 100)])
        .add_elements([TimestampedValue({"event_id": "A", "n": 2}, 100),
                       TimestampedValue({"event_id": "B", "n": 3}, 150)])
        .advance_watermark_to(200)
        .add_elements([TimestampedValue({"event_id": "A", "n": 4}, 100),
                       TimestampedValue({"event_id": "B", "n": 5}, 150)])
        .advance_watermark_to_infinity()
    )
    with BeamTestPipeline(runner="BundleBasedDirectRunner", options=options) as p:
        out = p | stream | DedupeEvents(ttl_seconds=60)
        # B's timer is at 210 > watermark 200, so the second B is still a duplicate.
        assert_that(out | beam.Map(lambda e: e["n"]), equal_to([1, 3, 4]))


def test_rejects_bad_ttl():
    with pytest.raises(ValueError):
        DedupeEvents(ttl_seconds=0)


# --- batched path ------------------------------------------------------------------
class _Value:
    def __init__(self):
        self.value = None

    def read(self):
        return self.value

    def write(self, value):
        self.value = value

    def clear(self):
        self.value = None


def _events(*ids, t_ms=1_705_314_600_000):
    return [{"event_id": i, "timestamp_ms": t_ms, "n": n} for n, i in enumerate(ids)]


def _batch_fn(ttl_seconds=3600):
    from transforms.dedupe import _DedupeBatchFn, _event_id, slice_ms_for

    fn = _DedupeBatchFn(_event_id, ttl_seconds, slice_ms_for(ttl_seconds), "test")
    fn.setup()
    return fn


T_MS = 1_705_314_600_000


def _key():
    from transforms.dedupe import bucket_key, slice_ms_for

    return bucket_key("A", T_MS, 1, slice_ms_for(3600))


def _ids(outputs):
    return [e["event_id"] for out in outputs for e in out.value]


def test_batch_fn_drops_duplicates_within_and_across_batches_one_timer_per_key():
    from transforms.dedupe import slice_ms_for

    fn = _batch_fn()
    bag, version, timer = _Bag(), _Value(), _Timer()
    first = list(fn.process((_key(), _events("A", "B", "A")), ids=bag, version=version, expiry=timer))
    second = list(fn.process((_key(), _events("B", "C")), ids=bag, version=version, expiry=timer))
    assert _ids(first) == ["A", "B"] and _ids(second) == ["C"]
    # One timer for the key, at its slice's end + TTL; one bag entry per batch.
    slice_ms = slice_ms_for(3600)
    start = 1_705_314_600_000 - 1_705_314_600_000 % slice_ms
    assert timer.set_to == [Timestamp(micros=(start + slice_ms + 3_600_000) * 1000)]
    assert bag.items == [["A", "B"], ["C"]]
    # The output list keeps the oldest event's time.
    assert first[0].timestamp == Timestamp(1_705_314_600)


def test_batch_fn_rebuilds_from_state_when_the_version_differs():
    """A restore (or a failed bundle) leaves the durable state behind the
    instance's memory: the set is rebuilt from the bag, so an id whose write
    was rolled back is emitted again (never lost), a durable one is still a
    duplicate."""
    fn = _batch_fn()
    bag, version, timer = _Bag(), _Value(), _Timer()
    list(fn.process((_key(), _events("A")), ids=bag, version=version, expiry=timer))
    durable_bag, durable_version = list(bag.items), version.value
    list(fn.process((_key(), _events("B")), ids=bag, version=version, expiry=timer))
    bag.items, version.value = durable_bag, durable_version  # B's bundle rolled back
    again = list(fn.process((_key(), _events("A", "B")), ids=bag, version=version, expiry=timer))
    assert _ids(again) == ["B"]
    fresh = _batch_fn()  # another worker after a restore
    assert list(fresh.process((_key(), _events("A", "B")), ids=bag, version=version, expiry=timer)) == []


def test_batch_fn_expiry_forgets_the_key():
    fn = _batch_fn()
    bag, version, timer = _Bag(), _Value(), _Timer()
    list(fn.process((_key(), _events("A")), ids=bag, version=version, expiry=timer))
    fn.expire(key=_key(), ids=bag, version=version)
    assert bag.items == [] and version.value is None
    assert _ids(fn.process((_key(), _events("A")), ids=bag, version=version, expiry=timer)) == ["A"]


def test_batched_ttl_expiry_on_watermark_streaming():
    """ttl 240 s -> slices of 10 s. A@100 s kept, its copy dropped; the key
    (slice [100, 110)) expires when the watermark passes 110 + 240 = 350: a
    copy after watermark 340 is still dropped, one after 360 is emitted."""
    from transforms.dedupe import DEFAULT_BUCKETS

    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True

    def batch(*pairs):
        return [TimestampedValue([{"event_id": i, "timestamp_ms": 100_000, "n": n} for i, n in pairs], 100)]

    stream = (
        BeamTestStream()
        .add_elements(batch(("A", 1), ("A", 2)))
        .advance_watermark_to(340)
        .add_elements(batch(("A", 3), ("B", 4)))
        .advance_watermark_to(360)
        .add_elements(batch(("A", 5), ("B", 6)))
        .advance_watermark_to_infinity()
    )
    with BeamTestPipeline(runner="BundleBasedDirectRunner", options=options) as p:
        out = p | stream | DedupeEvents(ttl_seconds=240, batched=True, buckets=DEFAULT_BUCKETS)
        assert_that(out | beam.FlatMap(lambda b: [e["n"] for e in b]), equal_to([1, 4, 5, 6]))


def test_batched_needs_streaming():
    with pytest.raises(ValueError):
        DedupeEvents(batched=True, streaming=False)
