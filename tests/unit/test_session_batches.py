"""Batched sessions (transforms/session_batches.py): the SessionBook rules, and the
sessions.py timeline through both paths on BundleBasedDirectRunner, row for row."""
import random

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.test_stream import TestStream as BeamTestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from transforms.session_batches import (
    TIMER_STEP_MS, AggregateSessionBatches, SessionBook, _pane_row, timer_time_ms)
from transforms.sessions import AggregateSessions, split_sessions, summarise_events
from tests.unit.test_sessions import T0, ev

GAP_MS = 1800 * 1000
HOUR_MS = 3600 * 1000


def _ms(minute):
    return (T0 + minute * 60) * 1000


def _brief(pane):
    row = _pane_row(pane)
    return (row["session_id"], row["pane_index"], row["event_count"], row["conversions"],
            row["furthest_stage"], row["duration_seconds"])


def test_book_follows_the_sessions_timeline():
    """transforms/sessions.py's worked timeline (gap 30 min, lateness 1 h)."""
    book = SessionBook(GAP_MS, HOUR_MS)
    for e in [ev(0), ev(10, "widget_open"), ev(25, "user_message"), ev(40, session="s2", user="u2")]:
        assert book.add(e["session_id"], e) == ([], True)
    assert book.next_deadline_ms() == _ms(55) - 1  # s1's window [10:00, 10:55)
    assert [_brief(p) for p in book.fire(_ms(56))] == [("s1", 0, 3, 0, "user_message", 1500.0)]
    late, kept = book.add("s1", ev(20, "conversion"))
    assert kept and [_brief(p) for p in late] == [("s1", 1, 4, 1, "conversion", 1500.0)]
    # 11:56: s2 fires on time, s1 is past 10:55 + 1 h and is dropped.
    assert [_brief(p) for p in book.fire(_ms(116))] == [("s2", 0, 1, 0, "page_view", 0.0)]
    assert "s1" not in book.sessions
    assert book.add("s1", ev(5)) == ([], False)  # too late: [10:05, 10:35) + 1 h < 11:56


def test_book_late_event_extending_a_fired_window_opens_a_new_one():
    book = SessionBook(GAP_MS, HOUR_MS)
    book.add("s1", ev(0))
    book.fire(_ms(31))  # [10:00, 10:30) fired
    late, kept = book.add("s1", ev(20))  # extends the window to 10:50: new window, pane 0
    assert kept and late == []
    assert book.next_deadline_ms() == _ms(50) - 1
    assert [_brief(p) for p in book.fire(_ms(51))] == [("s1", 0, 2, 0, "page_view", 1200.0)]


def test_book_bridging_event_merges_two_sessions():
    book = SessionBook(GAP_MS, HOUR_MS)
    book.add("s1", ev(0))
    book.add("s1", ev(50))
    assert len(book.sessions["s1"]) == 2
    book.add("s1", ev(25))
    (window,) = book.sessions["s1"]
    assert window[:2] == [(T0) * 1000, (T0 + 80 * 60) * 1000]


def test_book_equals_split_sessions_on_random_in_order_input():
    """With no late data, the book's final panes are the bounded path's visits."""
    rng = random.Random(3)
    events = []
    for s in range(40):
        t = rng.randint(0, 600)
        for _ in range(rng.randint(1, 12)):
            t += rng.choice([1, 5, 20, 29, 31, 45])
            events.append(ev(t, session=f"s{s}"))
    book = SessionBook(GAP_MS, HOUR_MS)
    panes = []
    for e in sorted(events, key=lambda e: e["timestamp_ms"]):
        book.add(e["session_id"], e)
    panes = book.fire(2 ** 62)
    got = sorted((sid, w[0], w[1], summarise_events_count(w)) for sid, w in panes)
    expected = []
    by_session = {}
    for e in events:
        by_session.setdefault(e["session_id"], []).append(e)
    for sid, evs in by_session.items():
        for visit in split_sessions(evs, GAP_MS):
            times = [e["timestamp_ms"] for e in visit]
            expected.append((sid, min(times), max(times) + GAP_MS, len(visit)))
    assert got == sorted(expected)


def summarise_events_count(window):
    return window[2]["count"]


# --- both paths on BundleBasedDirectRunner ------------------------------------------------
def _options():
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    return options


def _row_key(row):
    return (row["session_id"], row["window_start"], row["window_end"], row["pane_index"],
            row["event_count"], row["conversions"], row["furthest_stage"], row["duration_seconds"])


def _timeline(batched):
    def add(stream, events):
        if batched:
            ts = min(e["timestamp_ms"] for e in events) / 1000.0
            return stream.add_elements([TimestampedValue(events, ts)])
        return stream.add_elements([TimestampedValue(e, e["timestamp_ms"] / 1000.0) for e in events])

    minute = lambda m: T0 + m * 60  # noqa: E731
    stream = BeamTestStream()
    stream = add(stream, [ev(0), ev(10, "widget_open"), ev(25, "user_message")])
    stream = add(stream, [ev(40, session="s2", user="u2")])
    stream = stream.advance_watermark_to(minute(56))
    stream = add(stream, [ev(20, "conversion")])
    stream = stream.advance_watermark_to(minute(116))
    stream = add(stream, [ev(5)])
    return stream.advance_watermark_to(minute(200)).advance_watermark_to_infinity()


EXPECTED_TIMELINE_ROWS = [
    ("s1", "2024-01-15T10:00:00.000+00:00", "2024-01-15T10:55:00.000+00:00", 0, 3, 0, "user_message", 1500.0),
    ("s1", "2024-01-15T10:00:00.000+00:00", "2024-01-15T10:55:00.000+00:00", 1, 4, 1, "conversion", 1500.0),
    ("s2", "2024-01-15T10:40:00.000+00:00", "2024-01-15T11:10:00.000+00:00", 0, 1, 0, "page_view", 0.0),
]


@pytest.mark.parametrize("batched", [False, True], ids=["per_event", "batched"])
def test_timeline_rows_equal_on_both_paths(batched):
    with BeamTestPipeline(runner="BundleBasedDirectRunner", options=_options()) as p:
        if batched:
            rows = p | _timeline(True) | AggregateSessionBatches(
                gap_seconds=1800, allowed_lateness_seconds=3600, buckets=3)
        else:
            rows = p | _timeline(False) | AggregateSessions(gap_seconds=1800, allowed_lateness_seconds=3600)
        assert_that(rows | beam.Map(_row_key), equal_to(EXPECTED_TIMELINE_ROWS))


@pytest.mark.parametrize("gap, lateness, buckets", [(0, 0, 1), (1800, -1, 1), (1800, 0, 0)])
def test_constructor_checks(gap, lateness, buckets):
    with pytest.raises(ValueError):
        AggregateSessionBatches(gap_seconds=gap, allowed_lateness_seconds=lateness, buckets=buckets)


def test_book_fires_at_its_own_deadline_in_whole_milliseconds():
    """A runner keeps watermarks and timers in milliseconds (Flink): a timer set
    for a deadline must find that deadline due when it fires. (With microsecond
    deadlines of end - 1 us the timer fired at the truncated millisecond, found
    nothing due and re-armed itself forever.)"""
    book = SessionBook(GAP_MS, HOUR_MS)
    book.add("s1", ev(0))
    due = book.next_deadline_ms()
    assert due == _ms(30) - 1
    assert [_brief(p) for p in book.fire(due)] == [("s1", 0, 1, 0, "page_view", 0.0)]


@pytest.mark.parametrize("deadline", [-1_001, -1, 0, 1, 999, 1_000, 1_001, _ms(30) - 1])
def test_timer_time_is_the_next_step_never_before_the_deadline(deadline):
    at = timer_time_ms(deadline)
    assert at % TIMER_STEP_MS == 0
    assert deadline <= at < deadline + TIMER_STEP_MS
    assert timer_time_ms(deadline, step_ms=1) == deadline


def test_timer_time_stays_within_the_runners_timestamps():
    from apache_beam.utils.timestamp import MAX_TIMESTAMP
    top = MAX_TIMESTAMP.micros // 1000
    assert timer_time_ms(top - 1) == top


def test_one_rounded_firing_closes_every_session_due_within_the_step():
    """A backlog: 500 sessions whose windows end at 500 distinct milliseconds
    of one second. With exact deadlines that is 500 timer firings (one runner
    round trip each); at the rounded time one firing closes all of them, and
    nothing that is not due yet."""
    book = SessionBook(GAP_MS, HOUR_MS)
    # window ends (and deadlines) fall in one step: (k * step, (k + 1) * step]
    base = (T0 * 1000) - (T0 * 1000) % TIMER_STEP_MS + 2
    for i in range(500):
        event = ev(0, session=f"s{i}")
        event["timestamp_ms"] = base + i
        book.add(f"s{i}", event)
    later = ev(0, session="later")
    later["timestamp_ms"] = base + TIMER_STEP_MS
    book.add("later", later)
    first = book.next_deadline_ms()
    panes = book.fire(timer_time_ms(first))
    assert sorted(p[0] for p in panes) == sorted(f"s{i}" for i in range(500))
    assert book.next_deadline_ms() == later["timestamp_ms"] + GAP_MS - 1
