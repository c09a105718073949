"""Per-session aggregates of frontend events: the ``frontend_sessions`` rows.

::

    enriched events --KeyBySession--> (session_id, event)
        --WindowIntoSessions--> Sessions(gap_seconds), AfterWatermark + late firings,
                                ACCUMULATING, allowed lateness
        --SummariseSession--> CombinePerKey(SessionSummaryFn)
        --ToSessionRow--> dict with the FRONTEND_SESSIONS columns

Windowing and triggers
----------------------
A session window is the span of a session id's events extended by
``gap_seconds``; windows of one key merge when an event falls inside (or
bridges) the gap. Trigger: ``AfterWatermark(late=AfterCount(1))`` with
ACCUMULATING panes, so

* the ON_TIME pane fires once the watermark passes the window end (the last
  event + gap): one row per session in the normal case;
* each late event (within ``allowed_lateness_seconds``) fires one more pane
  that restates the *whole* session (accumulating), with ``pane_index``
  incremented; the sink upserts on ``(session_id, window_start)``, so the
  table converges to the complete session;
* events later than the allowed lateness are dropped by the runner (counted
  by Beam as dropped-due-to-lateness); the archive still has them.

Worked timeline (gap 30 min, allowed lateness 1 h; times in event time;
observed on BundleBasedDirectRunner, see tests/unit/test_sessions.py)::

    10:00  e1 page_view     -> window [10:00, 10:30)
    10:10  e2 widget_open   -> merged [10:00, 10:40)
    10:25  e3 message_sent  -> merged [10:00, 10:55)
    watermark -> 10:56      -> ON_TIME pane_index 0: event_count 3,
                               duration 1500 s, furthest_stage user_message
    e4 conversion @10:20 arrives (watermark 10:56 > window end 10:55: late,
       but within the 1 h lateness) -> merged window is still [10:00, 10:55)
                            -> LATE pane_index 1 fires at once: event_count 4,
                               conversions 1, furthest_stage conversion; the
                               sink's upsert on (session_id, 10:00) replaces
                               the pane-0 row
    watermark -> 11:56      -> window garbage-collected (10:55 + 1 h)
    e5 page_view @10:05 arrives -> too late: dropped by the runner, no pane

A late event that *extends* a fired session (e.g. @10:40 with watermark
11:00) merges into a new window [10:00, 11:10) with the same window_start;
it fires as that window's ON_TIME pane when the watermark passes 11:10 and
the upsert replaces the row again. pane_index restarts at 0 for the merged
window (observed), so order restatements by ``updated_at``, not by
pane_index. (The Python BundleBasedDirectRunner then reports a "pipeline
stall" at shutdown, so the unit tests cover only the in-window late event;
this case is not verified on Flink here.) A late event that *bridges* two fired
sessions gives a merged window starting at the earlier session's start: that
row is replaced by the merged one, the later session's row (other
window_start) stays. Readers needing strictly one row per visit take, per
session_id, the rows whose window is not inside another row's window.

``session_summary`` / ``add_event`` / ``merge_accumulators`` are the pure
core (tested directly); ``SessionSummaryFn`` only delegates to them.
"""
from __future__ import annotations

import datetime as _dt
import typing

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger as trig
from apache_beam.transforms import window

from schemas.records import ms_to_iso
from transforms.frontend_enrich import STAGE_RANK

__all__ = [
    "AggregateSessions",
    "SessionSummaryFn",
    "new_accumulator",
    "add_event",
    "merge_accumulators",
    "session_summary",
    "check_session_args",
    "summarise_events",
    "split_sessions",
    "visit_rows",
    "session_fields",
    "SESSION_FIELDS",
    "DEFAULT_GAP_SECONDS",
    "DEFAULT_ALLOWED_LATENESS_SECONDS",
]

DEFAULT_GAP_SECONDS = 1800  # 30 min of inactivity ends a visit (web-analytics norm)
# Late events still restate a session this long after the watermark passed its
# end (mobile clients flush queued events late); the pipelines' default too.
DEFAULT_ALLOWED_LATENESS_SECONDS = 24 * 60 * 60

_RANK_STAGE = {rank: stage for stage, rank in STAGE_RANK.items()}


def _iso(ms: typing.Optional[float]) -> typing.Optional[str]:
    return ms_to_iso(ms, timespec="milliseconds")


def _page_key(url) -> typing.Optional[str]:
    if not url:
        return None
    return url.split("#", 1)[0].split("?", 1)[0]


# The only event fields a session summary reads (see add_event). Events are
# cut down to these before the shuffle: an enriched event has ~45 fields,
# and encoding/decoding them across the GroupByKey dominated this step.
SESSION_FIELDS = ("session_id", "timestamp_ms", "user_id", "page_url", "event_stage",
                  "conversion_stage", "engagement_score")


def session_fields(event: dict) -> dict:
    """The part of an event that session aggregation needs."""
    return {k: event.get(k) for k in SESSION_FIELDS}


def new_accumulator() -> dict:
    return {
        "count": 0, "first_ms": None, "last_ms": None, "user": None,
        "pages": set(), "widget_opens": 0, "messages": 0, "conversions": 0,
        "max_rank": 0, "eng_sum": 0, "eng_n": 0, "eng_max": None,
    }


def add_event(acc: dict, event: dict) -> dict:
    """Folds one enriched event into ``acc`` (mutates and returns it)."""
    # Parsed events always carry timestamp_ms; a CombineFn cannot route a bad
    # element to a dead letter, so a missing one is counted, not fatal.
    ts = event.get("timestamp_ms")
    acc["count"] += 1
    if ts is not None:
        if acc["first_ms"] is None or ts < acc["first_ms"]:
            acc["first_ms"] = ts
        if acc["last_ms"] is None or ts > acc["last_ms"]:
            acc["last_ms"] = ts
    user = event.get("user_id")
    if user and ts is not None and (acc["user"] is None or (ts, user) < acc["user"]):
        acc["user"] = (ts, user)  # the earliest event's user id (deterministic)
    page = _page_key(event.get("page_url"))
    if page:
        acc["pages"].add(page)
    # What the event *is* (its type), not the stage its page implies.
    type_stage = event.get("event_stage") or event.get("conversion_stage")
    if type_stage == "widget_open":
        acc["widget_opens"] += 1
    elif type_stage == "user_message":
        acc["messages"] += 1
    elif type_stage == "conversion":
        acc["conversions"] += 1
    rank = STAGE_RANK.get(event.get("conversion_stage"), 0)
    if rank > acc["max_rank"]:
        acc["max_rank"] = rank
    score = event.get("engagement_score")
    if score is not None:
        acc["eng_sum"] += score
        acc["eng_n"] += 1
        if acc["eng_max"] is None or score > acc["eng_max"]:
            acc["eng_max"] = score
    return acc


def merge_accumulators(accs: typing.Iterable[dict]) -> dict:
    out = new_accumulator()
    for acc in accs:
        if not acc["count"]:
            continue
        out["count"] += acc["count"]
        for key, better in (("first_ms", min), ("last_ms", max)):
            if acc[key] is not None:
                out[key] = acc[key] if out[key] is None else better(out[key], acc[key])
        if acc["user"] is not None and (out["user"] is None or acc["user"] < out["user"]):
            out["user"] = acc["user"]
        out["pages"] |= acc["pages"]
        for key in ("widget_opens", "messages", "conversions", "eng_sum", "eng_n"):
            out[key] += acc[key]
        out["max_rank"] = max(out["max_rank"], acc["max_rank"])
        if acc["eng_max"] is not None and (out["eng_max"] is None or acc["eng_max"] > out["eng_max"]):
            out["eng_max"] = acc["eng_max"]
    return out


def session_summary(acc: dict) -> dict:
    """The session columns computable from the events alone (no window/pane)."""
    first, last = acc["first_ms"], acc["last_ms"]
    return {
        "user_id": acc["user"][1] if acc["user"] else None,
        "event_count": acc["count"],
        "first_event_at": _iso(first),
        "last_event_at": _iso(last),
        "duration_seconds": (last - first) / 1000.0 if first is not None else 0.0,
        "page_count": len(acc["pages"]),
        "widget_opens": acc["widget_opens"],
        "messages": acc["messages"],
        "conversions": acc["conversions"],
        "furthest_stage": _RANK_STAGE.get(acc["max_rank"]),
        "avg_engagement_score": (round(acc["eng_sum"] / acc["eng_n"], 2)
                                 if acc["eng_n"] else None),
        "max_engagement_score": acc["eng_max"],
    }


def summarise_events(events: typing.Iterable[dict]) -> dict:
    """``session_summary`` of a list of events (the CombineFn, without Beam)."""
    acc = new_accumulator()
    for event in events:
        add_event(acc, event)
    return session_summary(acc)


class SessionSummaryFn(beam.CombineFn):
    """Thin CombineFn over the pure functions above (mergeable: sessions merge)."""

    def create_accumulator(self):
        return new_accumulator()

    def add_input(self, acc, event):
        return add_event(acc, event)

    def merge_accumulators(self, accs):
        return merge_accumulators(accs)

    def extract_output(self, acc):
        return session_summary(acc)


def session_row(session_id: str, summary: dict, start_ms: float, end_ms: float,
                pane_index: int) -> dict:
    """A ``frontend_sessions`` row: the summary plus window bounds and pane."""
    row = {"session_id": session_id}
    row.update(summary)
    row["window_start"] = _iso(start_ms)
    row["window_end"] = _iso(end_ms)
    row["pane_index"] = pane_index
    row["updated_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")
    return row


class _ToSessionRowFn(beam.DoFn):
    def __init__(self, namespace: str):
        self._panes = Metrics.counter(namespace, "session_panes_emitted")
        self._late = Metrics.counter(namespace, "session_late_panes")

    def process(self, element, win=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam):
        session_id, summary = element
        self._panes.inc()
        if pane.index > 0:
            self._late.inc()
        yield session_row(session_id, summary, win.start.micros / 1000.0,
                          win.end.micros / 1000.0, pane.index)


def split_sessions(events: typing.Iterable[dict], gap_ms: int) -> typing.List[typing.List[dict]]:
    """Splits one session id's events into visits, as Beam's ``Sessions(gap)``
    merges windows: each event opens ``[t, t + gap)``; overlapping windows
    merge, so a visit ends where the next event comes ``gap`` or more after the
    latest one so far. Events without a timestamp join the first visit."""
    timed = sorted((e for e in events if e.get("timestamp_ms") is not None),
                   key=lambda e: e["timestamp_ms"])
    untimed = [e for e in events if e.get("timestamp_ms") is None]
    visits: typing.List[typing.List[dict]] = []
    latest = None
    for event in timed:
        if latest is None or event["timestamp_ms"] - latest >= gap_ms:
            visits.append([])
        visits[-1].append(event)
        latest = event["timestamp_ms"] if latest is None else max(latest, event["timestamp_ms"])
    if untimed:
        if not visits:
            visits.append([])
        visits[0].extend(untimed)
    return visits


def visit_rows(session_id: str, events: typing.Iterable[dict], gap_ms: int,
               ) -> typing.List[typing.Tuple[dict, float]]:
    """Bounded input: one session id's events -> one ``frontend_sessions`` row
    per visit (``split_sessions``), with the window bounds Beam's session
    windows would give it, each with its window's end in epoch ms. The one
    definition of a complete session's row: the bounded job and the
    aggregate recompute of a replay (transforms/recompute.py) both use it."""
    out = []
    for visit in split_sessions(list(events), gap_ms):
        times = [e["timestamp_ms"] for e in visit if e.get("timestamp_ms") is not None]
        if not times:
            continue  # cannot happen after parse: every event has a time
        start_ms, end_ms = min(times), max(times) + gap_ms
        out.append((session_row(session_id, summarise_events(visit), start_ms, end_ms, 0),
                    end_ms))
    return out


class _BoundedSessionsFn(beam.DoFn):
    """Bounded input: one session id's events at once -> one row per visit,
    with the window bounds Beam's session windows would give it."""

    def __init__(self, gap_seconds: int, namespace: str):
        self._gap_ms = int(gap_seconds * 1000)
        self._panes = Metrics.counter(namespace, "session_panes_emitted")

    def process(self, element):
        session_id, events = element
        for row, end_ms in visit_rows(session_id, events, self._gap_ms):
            self._panes.inc()
            # At the end of its window, as the streaming path's on-time pane.
            yield beam.window.TimestampedValue(row, (end_ms - 1) / 1000.0)


def check_session_args(gap_seconds, allowed_lateness_seconds) -> None:
    """``ValueError`` unless the gap is positive and the lateness not negative."""
    if gap_seconds is None or gap_seconds <= 0:
        raise ValueError("gap_seconds must be positive")
    if allowed_lateness_seconds is None or allowed_lateness_seconds < 0:
        raise ValueError("allowed_lateness_seconds must be >= 0")


class AggregateSessions(beam.PTransform):
    """Enriched event dicts -> ``frontend_sessions`` row dicts, one per pane
    (see the module docstring for windowing, triggers and late data).

    ``streaming=False`` (bounded input) computes the same rows without
    merging windows: a GroupByKey per session id, then ``split_sessions``. On
    a batch runner all data is on time, so there is exactly one pane per
    visit either way, and Beam's general trigger driver (needed for merging
    windows with a custom trigger) costs about a millisecond per key."""

    def __init__(self, gap_seconds: int = DEFAULT_GAP_SECONDS,
                 allowed_lateness_seconds: int = DEFAULT_ALLOWED_LATENESS_SECONDS,
                 pipeline: str = "frontend", streaming: bool = True):
        super().__init__()
        check_session_args(gap_seconds, allowed_lateness_seconds)
        self._gap_seconds = gap_seconds
        self._lateness_seconds = allowed_lateness_seconds
        self._pipeline = pipeline
        self._streaming = streaming

    def expand(self, events):
        keyed = events | "KeyBySession" >> beam.Map(
            lambda e: (str(e["session_id"]), session_fields(e))).with_output_types(
                typing.Tuple[str, typing.Any])
        if not self._streaming:
            return (
                keyed
                | "GroupBySessionId" >> beam.GroupByKey()
                | "SplitIntoVisits" >> beam.ParDo(
                    _BoundedSessionsFn(self._gap_seconds, self._pipeline)).with_output_types(
                        typing.Dict[str, typing.Any])
            )
        return (
            keyed
            | "WindowIntoSessions" >> beam.WindowInto(
                window.Sessions(self._gap_seconds),
                trigger=trig.AfterWatermark(late=trig.AfterCount(1)),
                accumulation_mode=trig.AccumulationMode.ACCUMULATING,
                allowed_lateness=self._lateness_seconds,
            )
            | "SummariseSession" >> beam.CombinePerKey(SessionSummaryFn())
            # Explicit: inference would guess Dict[str, str] from the first key.
            | "ToSessionRow" >> beam.ParDo(_ToSessionRowFn(self._pipeline)).with_output_types(
                typing.Dict[str, typing.Any])
        )
