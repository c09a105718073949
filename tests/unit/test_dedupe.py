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
