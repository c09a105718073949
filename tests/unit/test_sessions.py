"""Session aggregation: the pure combine logic, batch on FnApiRunner, panes and
late data with TestStream on BundleBasedDirectRunner (streaming)."""
import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.test_stream import TestStream as BeamTestStream
from apache_beam.testing.util import assert_that, equal_to, equal_to_per_window
from apache_beam.transforms.window import IntervalWindow, TimestampedValue

from schemas.tables import FRONTEND_SESSIONS, row_values
from transforms.sessions import (
    AggregateSessions,
    SessionSummaryFn,
    add_event,
    merge_accumulators,
    new_accumulator,
    session_summary,
    summarise_events,
)
from tests.unit.conftest import fn_api_runner

T0 = 1705312800  # 2024-01-15T10:00:00Z in epoch seconds


def ev(minute, stage="page_view", type_stage=None, session="s1", user="u1",
       score=10, page="https://acme.com/"):
    """An enriched event at T0 + minute."""
    return {
        "event_id": f"{session}-{minute}-{stage}",
        "session_id": session,
        "user_id": user,
        "timestamp_ms": (T0 + minute * 60) * 1000,
        "conversion_stage": stage,
        "event_stage": type_stage or stage,
        "engagement_score": score,
        "page_url": page,
    }


# --- pure ---------------------------------------------------------------------------
VISIT = [
    ev(0, page="https://acme.com/?utm_source=x", user=None, score=10),
    ev(10, "widget_open", score=30, page="https://acme.com/#chat"),
    ev(12, "product_interest", type_stage="user_message", score=50, page="https://acme.com/pricing"),
    ev(25, "user_message", score=44, page="https://acme.com/pricing?plan=team", user="u9"),
]


def test_summary_hand_computed():
    s = summarise_events(VISIT)
    assert s == {
        "user_id": "u1",  # the earliest event with a user id (10:10), not u9 (10:25)
        "event_count": 4,
        "first_event_at": "2024-01-15T10:00:00.000+00:00",
        "last_event_at": "2024-01-15T10:25:00.000+00:00",
        "duration_seconds": 1500.0,  # 25 min * 60
        "page_count": 2,  # acme.com/ (query and fragment stripped) and /pricing
        "widget_opens": 1,
        "messages": 2,  # the 10:12 message counted by its type although its stage is product_interest
        "conversions": 0,
        "furthest_stage": "product_interest",
        "avg_engagement_score": 33.5,  # (10 + 30 + 50 + 44) / 4 = 134 / 4
        "max_engagement_score": 50,
    }


def test_order_independent_and_merge_equals_single_pass():
    reversed_ = summarise_events(list(reversed(VISIT)))
    assert reversed_ == summarise_events(VISIT)
    a, b = new_accumulator(), new_accumulator()
    for e in VISIT[::2]:
        add_event(a, e)
    for e in VISIT[1::2]:
        add_event(b, e)
    assert session_summary(merge_accumulators([a, new_accumulator(), b])) == summarise_events(VISIT)


def test_single_event_and_missing_scores():
    s = summarise_events([dict(ev(3, "conversion"), engagement_score=None, user_id=None)])
    assert s["event_count"] == 1 and s["duration_seconds"] == 0.0
    assert s["conversions"] == 1 and s["furthest_stage"] == "conversion"
    assert s["avg_engagement_score"] is None and s["max_engagement_score"] is None
    assert s["user_id"] is None


def test_empty_accumulator_summary():
    s = session_summary(new_accumulator())
    assert s["event_count"] == 0 and s["furthest_stage"] is None and s["first_event_at"] is None


def test_combine_fn_delegates():
    fn = SessionSummaryFn()
    acc = fn.create_accumulator()
    for e in VISIT:
        acc = fn.add_input(acc, e)
    assert fn.extract_output(fn.merge_accumulators([acc])) == summarise_events(VISIT)


# --- batch: FnApiRunner ---------------------------------------------------------------
def _timestamped(events):
    return [TimestampedValue(e, e["timestamp_ms"] / 1000.0) for e in events]


def test_batch_sessions_split_by_gap_rows_insertable():
    # s1: 10:00, 10:20 | gap 40 min > 30 | 11:00 -> two sessions; s2: one event.
    events = [ev(0), ev(20, "widget_open"), ev(60, "conversion"), ev(5, session="s2", user="u2")]
    with BeamTestPipeline(runner=fn_api_runner()) as p:
        rows = (p | beam.Create(_timestamped(events))
                | AggregateSessions(gap_seconds=1800, allowed_lateness_seconds=0, pipeline="frontend"))
        assert_that(
            rows | beam.Map(lambda r: (r["session_id"], r["window_start"], r["window_end"],
                                       r["event_count"], r["furthest_stage"], r["pane_index"])),
            equal_to([
                # 10:00..10:20 + 30 min gap -> window end 10:50
                ("s1", "2024-01-15T10:00:00.000+00:00", "2024-01-15T10:50:00.000+00:00", 2, "widget_open", 0),
                ("s1", "2024-01-15T11:00:00.000+00:00", "2024-01-15T11:30:00.000+00:00", 1, "conversion", 0),
                ("s2", "2024-01-15T10:05:00.000+00:00", "2024-01-15T10:35:00.000+00:00", 1, "page_view", 0),
            ]),
            label="SessionRows")
        assert_that(rows | beam.Map(lambda r: len(row_values(FRONTEND_SESSIONS, r))),
                    equal_to([len(FRONTEND_SESSIONS.columns)] * 3), label="Insertable")


# --- streaming: TestStream with late data ------------------------------------------------
def _streaming_options():
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    return options


def _project(row):
    return (row["pane_index"], row["event_count"], row["conversions"], row["furthest_stage"],
            row["duration_seconds"])


def test_on_time_pane_then_late_restatement_then_too_late_dropped():
    """The module docstring's timeline: gap 30 min, lateness 1 h.

    e1 10:00, e2 10:10, e3 10:25 -> window [10:00, 10:55)
    watermark 10:56 -> pane 0: 3 events, duration 25 min = 1500 s
    late e4 conversion @10:20 -> pane 1 restates: 4 events, 1 conversion
    watermark 11:56 (past 10:55 + 1 h) -> window expired
    e5 @10:05 -> dropped (no pane 2)
    s2 @10:40 on time in its own window [10:40, 11:10)
    """
    minute = lambda m: T0 + m * 60  # noqa: E731
    stream = (
        BeamTestStream()
        .add_elements(_timestamped([ev(0), ev(10, "widget_open"), ev(25, "user_message")]))
        .add_elements(_timestamped([ev(40, session="s2", user="u2")]))
        .advance_watermark_to(minute(56))
        .add_elements(_timestamped([ev(20, "conversion")]))
        .advance_watermark_to(minute(116))
        .add_elements(_timestamped([ev(5)]))
        .advance_watermark_to(minute(200))
        .advance_watermark_to_infinity()
    )
    with BeamTestPipeline(runner="BundleBasedDirectRunner", options=_streaming_options()) as p:
        rows = p | stream | AggregateSessions(gap_seconds=1800, allowed_lateness_seconds=3600)
        s1_window = IntervalWindow(minute(0), minute(55))
        s2_window = IntervalWindow(minute(40), minute(70))
        assert_that(
            rows | "ProjectPanes" >> beam.Map(_project),
            equal_to_per_window({
                s1_window: [(0, 3, 0, "user_message", 1500.0),
                            (1, 4, 1, "conversion", 1500.0)],
                s2_window: [(0, 1, 0, "page_view", 0.0)],
            }),
            reify_windows=True,
            label="PanesPerWindow")
        assert_that(rows | "Keys" >> beam.Map(lambda r: (r["session_id"], r["window_start"])),
                    equal_to([("s1", "2024-01-15T10:00:00.000+00:00")] * 2
                             + [("s2", "2024-01-15T10:40:00.000+00:00")]),
                    label="UpsertKeys")


def test_zero_lateness_drops_late_event():
    minute = lambda m: T0 + m * 60  # noqa: E731
    stream = (
        BeamTestStream()
        .add_elements(_timestamped([ev(0), ev(10)]))
        .advance_watermark_to(minute(41))
        .add_elements(_timestamped([ev(5, "conversion")]))
        .advance_watermark_to(minute(100))
        .advance_watermark_to_infinity()
    )
    with BeamTestPipeline(runner="BundleBasedDirectRunner", options=_streaming_options()) as p:
        rows = p | stream | AggregateSessions(gap_seconds=1800, allowed_lateness_seconds=0)
        assert_that(rows | beam.Map(_project), equal_to([(0, 2, 0, "page_view", 600.0)]))


@pytest.mark.parametrize("gap, lateness", [(0, 0), (-5, 0), (1800, -1)])
def test_constructor_checks(gap, lateness):
    with pytest.raises(ValueError):
        AggregateSessions(gap_seconds=gap, allowed_lateness_seconds=lateness)


def test_whole_frontend_chain_composes_on_fn_api_runner():
    """SourceRecord -> Parse -> Redact -> Enrich -> Dedupe -> Sessions, with a
    producer retry (same bytes twice) and one bad record."""
    import json

    from schemas.events import FrontendEvent
    from schemas.records import SourceRecord
    from transforms.dedupe import DedupeEvents
    from transforms.frontend_enrich import EnrichFrontendEvents, EnrichmentConfig
    from transforms.parse import ParseEvents
    from transforms.pii import RedactPii
    from tests.unit.conftest import SECRET, WIDGET_OPEN

    def record(offset, **changes):
        payload = dict(WIDGET_OPEN, **changes)
        return SourceRecord(json.dumps(payload).encode(), "frontend_user_interaction", 0, offset)

    base = WIDGET_OPEN["timestamp"]
    records = [
        record(0, event_type="page_view", timestamp=base),
        record(1, event_type="widget_open", timestamp=base + 60_000),
        record(2, event_type="widget_open", timestamp=base + 60_000),  # retry: same payload
        record(3, event_type="message_sent", timestamp=base + 120_000,
               element_text="mail me: jane@acme.com", message_length=20),
        SourceRecord(b"{broken", "frontend_user_interaction", 0, 4),
    ]
    with BeamTestPipeline(runner=fn_api_runner()) as p:
        parsed = p | beam.Create(records) | "Parse" >> ParseEvents(FrontendEvent, "frontend")
        redacted = parsed.valid | "Redact" >> RedactPii(SECRET, pipeline="frontend")
        enriched = redacted.valid | "Enrich" >> EnrichFrontendEvents(EnrichmentConfig(), "frontend")
        events = enriched.valid | "Dedupe" >> DedupeEvents(ttl_seconds=3600)
        sessions = events | "Sessions" >> AggregateSessions(1800, 0, "frontend")
        assert_that(parsed.failed | beam.Map(lambda f: f.source_offset), equal_to([4]), label="Failed")
        assert_that(events | beam.Map(lambda e: (e["event_type"], "jane@acme.com" in json.dumps(e))),
                    equal_to([("page_view", False), ("widget_open", False), ("message_sent", False)]),
                    label="Events")
        assert_that(sessions | beam.Map(lambda r: (r["event_count"], r["widget_opens"], r["messages"],
                                                   r["duration_seconds"])),
                    equal_to([(3, 1, 1, 120.0)]), label="Session")


def test_row_fn_adds_window_and_pane_columns():
    from apache_beam.utils.windowed_value import PaneInfo, PaneInfoTiming

    from transforms.sessions import _ToSessionRowFn

    fn = _ToSessionRowFn("frontend")
    fn.setup()
    win = IntervalWindow(T0, T0 + 1800)
    pane = PaneInfo(is_first=False, is_last=False, timing=PaneInfoTiming.LATE, index=2, nonspeculative_index=1)
    (row,) = list(fn.process(("s1", summarise_events(VISIT)), win=win, pane=pane))
    assert row["session_id"] == "s1" and row["pane_index"] == 2
    assert (row["window_start"], row["window_end"]) == (
        "2024-01-15T10:00:00.000+00:00", "2024-01-15T10:30:00.000+00:00")
    assert set(row) == set(FRONTEND_SESSIONS.columns)
