"""benchmarks/flink_bench.py stamps a dense backlog's Kafka records with
their event times, so the reader's watermark follows event time rather than
produce time (else the whole backlog after the first poll is late data and
the archive writes one file set per late firing: the secure-mode tail of
issue 20 item 5)."""
import importlib.util
import json
import os

import pytest

_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "flink_bench.py")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("flink_bench_under_test", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_record_times_follow_the_payload_and_carry_over_malformed_lines(bench):
    lines = ["not json", '{"timestamp": 1000}', "{broken", '{"timestamp": "2026-12-07T00:00:00Z"}',
             '{"timestamp": true}', '{"timestamp": 900}', "[1, 2]"]
    assert list(bench.record_times(lines)) == [
        ("not json", None), ('{"timestamp": 1000}', 1000), ("{broken", 1000),
        ('{"timestamp": "2026-12-07T00:00:00Z"}', 1000), ('{"timestamp": true}', 1000),
        ('{"timestamp": 900}', 900), ("[1, 2]", 900)]


def test_a_generated_backlog_is_stamped_inside_its_event_time_span(bench):
    start_ms, span_ms = 1_700_000_000_000, 20_000
    lines = [line for line, _ in bench._events(2000, "runx", 7, start_ms, "frontend", span_ms)]
    stamped = list(bench.record_times(lines))
    assert [line for line, _ in stamped] == lines
    times = [ts for _, ts in stamped if ts is not None]
    # Every record after the first valid one gets a time, all of them the
    # backlog's event times (the generator's own malformed lines included).
    assert len(times) >= len(lines) - 5
    assert all(start_ms <= ts <= start_ms + span_ms for ts in times)
    for line, ts in stamped:
        try:
            payload = json.loads(line)
        except ValueError:
            continue
        if isinstance(payload, dict) and type(payload.get("timestamp")) is int:
            assert ts == payload["timestamp"]
