"""The bounded session path (GroupByKey + split_sessions) gives the rows the
windowed path (Beam Sessions windows) gives, on the same bounded input."""
import random

import apache_beam as beam
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from transforms.sessions import AggregateSessions, split_sessions

T0 = 1_767_225_600_000
GAP_S = 1800


def _events(seed=5, n=400):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        sid = f"s{rng.randrange(25)}"
        ts = T0 + rng.randrange(0, 6 * 3600) * 1000
        out.append({
            "event_id": f"e{i}", "session_id": sid, "timestamp_ms": ts,
            "user_id": f"u{rng.randrange(3)}", "page_url": f"https://x.test/p{rng.randrange(5)}",
            "conversion_stage": rng.choice(["page_view", "widget_open", "user_message",
                                            "product_interest", "conversion"]),
            "engagement_score": rng.randrange(101),
        })
    return out


def test_split_sessions_follows_session_window_merging():
    gap = GAP_S * 1000
    events = [{"timestamp_ms": t} for t in (0, gap - 1, 2 * gap - 2, 4 * gap, 4 * gap)]
    # 0 -> [0, gap); gap-1 overlaps it; 2gap-2 overlaps [gap-1, 2gap-1); 4gap is
    # gap+2 past the latest (2gap-2) so it opens a new visit, joined by its twin.
    assert [[e["timestamp_ms"] for e in v] for v in split_sessions(events, gap)] == [
        [0, gap - 1, 2 * gap - 2], [4 * gap, 4 * gap]]
    # exactly one gap apart: windows [0,gap) and [gap,2gap) touch but do not overlap
    assert len(split_sessions([{"timestamp_ms": 0}, {"timestamp_ms": gap}], gap)) == 2


def _comparable(row):
    return tuple(sorted((k, str(v)) for k, v in row.items() if k != "updated_at"))


def _more_than(minimum):
    def check(actual):
        if actual[0] <= minimum:
            raise AssertionError(f"expected more than {minimum} visits, got {actual}")
    return check


def test_bounded_path_equals_windowed_path():
    events = _events()
    with beam.Pipeline(runner=FnApiRunner()) as p:
        stamped = (
            p | beam.Create(events)
            | beam.Map(lambda e: beam.window.TimestampedValue(e, e["timestamp_ms"] / 1000))
        )
        tagged = []
        for streaming in (False, True):
            tagged.append(
                stamped
                | f"Sessions[{streaming}]" >> AggregateSessions(
                    gap_seconds=GAP_S, allowed_lateness_seconds=0, streaming=streaming)
                | f"Global[{streaming}]" >> beam.WindowInto(beam.window.GlobalWindows())
                | f"Tag[{streaming}]" >> beam.Map(lambda r, t: (_comparable(r), t), streaming)
            )
        by_row = tagged | beam.Flatten() | beam.GroupByKey()
        # every row produced once by each path, nothing else
        mismatches = by_row | beam.Filter(lambda kv: sorted(kv[1]) != [False, True])
        assert_that(mismatches, equal_to([]), label="SameRows")
        visits = by_row | beam.combiners.Count.Globally()
        assert_that(visits, _more_than(25), label="SeveralVisits")
