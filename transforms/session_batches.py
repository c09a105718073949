"""Session windows over lists of events, in keyed state: the batched path's sessions.

``AggregateSessions`` (transforms/sessions.py) hands every event to Beam's
merging ``Sessions`` windows. On portable Flink that costs about 1.6 ms of
runner time per event (window merging and trigger state per element, measured
with benchmarks/experiments/flink_state_cost.py ``sess_late``: 613 events/s
against 11,000 per element through a plain shuffle), which caps the whole job.
``AggregateSessionBatches`` computes the same rows from lists of events with
one state access per list::

    lists of events
      --SplitBySessionBucket--> (crc32(session_id) % buckets, [session fields])
      --SessionizeBuckets-->    stateful DoFn: a SessionBook per bucket
                                (open and fired windows of its sessions),
                                one watermark timer per bucket at its next
                                deadline rounded up to TIMER_STEP_MS (1 s)
      => frontend_sessions rows, one per pane

Same semantics as the per-event path (tests/unit/test_session_batches.py runs
the sessions.py timeline on both and compares every row):

* a window per session is the span of its events plus ``gap``; windows that
  overlap merge (``Sessions.merge``: ``[t, t + gap)`` per event);
* ON_TIME pane (``pane_index`` 0) once the watermark passes the window end;
* a late event that falls inside a fired window fires a LATE pane at once,
  restating the whole session (accumulating, ``pane_index`` + 1), one pane per
  late event as Beam's ``AfterCount(1)`` does; a late event that extends or
  bridges fired windows makes a new window (``pane_index`` 0) that fires when
  the watermark passes its end;
* a window is dropped when the watermark passes its end + allowed lateness;
  an event whose own window ``[t, t + gap)`` is already past that is dropped
  and counted in ``session_events_too_late``.

One difference, in the safe direction: a DoFn cannot read the watermark, so
"already past" is judged against the latest timer that fired for the bucket,
which trails the runner's watermark. An event the per-event path would drop
as too late may still be counted here; it is never the other way round. The
timer step (``TIMER_STEP_MS``) widens the same gap by at most a second: an
event arriving after the watermark passed its window's end, but before the
bucket's rounded timer fired, joins the ON_TIME pane instead of firing a LATE
one; the final row is the same.

State and memory: per bucket, a log (bag) of the sessions changed by each
call plus a small ``meta`` value (version, watermark seen, log length); the
log is compacted into one snapshot when it grows past twice the live
sessions. As in transforms/dedupe.py, the decoded book is kept in memory next
to the random version it was built from, so a call reads one small value, not
the log; a restore or a failed bundle leaves another version and the book is
rebuilt from the log. Live state is bounded by the sessions whose window end
+ allowed lateness is ahead of the watermark.
"""
from __future__ import annotations

import heapq
import pickle
import random
import typing
import zlib

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (
    BagStateSpec,
    ReadModifyWriteStateSpec,
    TimerSpec,
    on_timer,
)
from apache_beam.utils.timestamp import MAX_TIMESTAMP, Timestamp

from transforms.batches import split_by
from transforms.beam_compat import use_fast_state_cache_sizing
from transforms.sessions import (
    DEFAULT_ALLOWED_LATENESS_SECONDS,
    DEFAULT_GAP_SECONDS,
    add_event,
    check_session_args,
    merge_accumulators,
    new_accumulator,
    session_fields,
    session_row,
    session_summary,
)

__all__ = ["AggregateSessionBatches", "SessionBook", "DEFAULT_SESSION_BUCKETS"]

# Sub-lists per batch: few enough that a poll of a few hundred events makes
# sub-lists of tens of events, enough to spread over a few subtasks.
DEFAULT_SESSION_BUCKETS = 8
# A bucket's timer is set at its next deadline rounded up to this step, and a
# firing closes every window due by the timer's time. A DoFn cannot read the
# watermark, so with exact deadlines each distinct one costs a timer round
# trip through the runner: after a backlog (tens of thousands of sessions
# closing within a minute of event time) rows came at ~36/s, ~25 minutes for
# 50,000 sessions (README, Faults on Flink). Rounded, a bucket needs about one
# firing per second of event time; an ON_TIME pane comes at most this much
# after the watermark passed its window's end.
TIMER_STEP_MS = 1000

# A window: [start_ms, end_ms, accumulator, pane_index, fired]
_START, _END, _ACC, _PANE, _FIRED = range(5)
_FIRE, _GC = 0, 1
_MAX_TIMER_MS = MAX_TIMESTAMP.micros // 1000


class SessionBook:
    """The session windows of one bucket, with Beam's merging and firing rules.

    Pure (no Beam): ``add`` folds events in and returns the LATE panes they
    fire; ``fire(watermark_ms)`` returns the ON_TIME panes due and drops
    expired windows. A pane is ``(session_id, window)``; ``changed`` collects
    the session ids whose windows changed since it was last emptied.
    Times in milliseconds, as the runner's watermark on Flink: a window's
    max timestamp is its end - 1 ms (Beam Java's ``IntervalWindow``); a
    deadline in finer units would be truncated by the runner, and a timer
    would fire before the deadline it was set for.
    """

    def __init__(self, gap_ms: int, lateness_ms: int):
        self.gap_ms = gap_ms
        self.lateness_ms = lateness_ms
        self.sessions: typing.Dict[str, list] = {}
        self.watermark_ms = -(2 ** 62)
        self.changed: typing.Set[str] = set()
        self._deadlines: list = []  # heap of (deadline_ms, kind, session_id, start_ms)

    @staticmethod
    def _max_ms(end_ms: int) -> int:
        return end_ms - 1

    def _schedule(self, session_id: str, window: list) -> None:
        if window[_FIRED]:
            deadline = self._max_ms(window[_END]) + self.lateness_ms
            heapq.heappush(self._deadlines, (deadline, _GC, session_id, window[_START]))
        else:
            heapq.heappush(self._deadlines,
                           (self._max_ms(window[_END]), _FIRE, session_id, window[_START]))

    def load(self, sessions: typing.Dict[str, list], watermark_ms: int) -> None:
        self.sessions = sessions
        self.watermark_ms = watermark_ms
        self._deadlines = []
        for session_id, windows in sessions.items():
            for window in windows:
                self._schedule(session_id, window)

    def next_deadline_ms(self) -> typing.Optional[int]:
        while self._deadlines:
            deadline, kind, session_id, start = self._deadlines[0]
            if self._current(deadline, kind, session_id, start) is not None:
                return deadline
            heapq.heappop(self._deadlines)  # superseded by a merge or a firing
        return None

    def _current(self, deadline, kind, session_id, start):
        for window in self.sessions.get(session_id, ()):
            if window[_START] == start and bool(window[_FIRED]) == (kind == _GC):
                expected = self._max_ms(window[_END]) + (self.lateness_ms if kind == _GC else 0)
                return window if expected == deadline else None
        return None

    def add(self, session_id: str, event: dict) -> typing.Tuple[typing.List[tuple], bool]:
        """Folds one event in: (LATE panes fired, whether the event was kept)."""
        ts = event.get("timestamp_ms")
        if ts is None:
            return [], False
        start, end = ts, ts + self.gap_ms
        if self._max_ms(end) + self.lateness_ms < self.watermark_ms:
            return [], False  # its own window is already expired: too late
        acc = add_event(new_accumulator(), event)
        windows = self.sessions.setdefault(session_id, [])
        overlapping = [w for w in windows if w[_START] < end and start < w[_END]]
        self.changed.add(session_id)
        if not overlapping:
            window = [start, end, acc, 0, False]
            windows.append(window)
            self._schedule(session_id, window)
            return [], True
        merged_start = min(start, *(w[_START] for w in overlapping))
        merged_end = max(end, *(w[_END] for w in overlapping))
        merged_acc = merge_accumulators([w[_ACC] for w in overlapping] + [acc])
        if len(overlapping) == 1 and (overlapping[0][_START], overlapping[0][_END]) == (
                merged_start, merged_end):
            window = overlapping[0]
            window[_ACC] = merged_acc
            if window[_FIRED]:
                # Late data inside a fired window: AfterCount(1) fires at once.
                window[_PANE] += 1
                return [(session_id, window)], True
            return [], True
        # A new (merged) window: its trigger starts afresh.
        for w in overlapping:
            windows.remove(w)
        window = [merged_start, merged_end, merged_acc, 0, False]
        windows.append(window)
        self._schedule(session_id, window)
        return [], True

    def fire(self, watermark_ms: int) -> typing.List[tuple]:
        """ON_TIME panes of windows whose end the watermark passed; drops the
        windows whose end + allowed lateness it passed."""
        self.watermark_ms = max(self.watermark_ms, watermark_ms)
        panes = []
        while self._deadlines and self._deadlines[0][0] <= watermark_ms:
            deadline, kind, session_id, start = heapq.heappop(self._deadlines)
            window = self._current(deadline, kind, session_id, start)
            if window is None:
                continue
            self.changed.add(session_id)
            if kind == _FIRE:
                window[_FIRED] = True
                panes.append((session_id, window))
                self._schedule(session_id, window)
            else:
                windows = self.sessions[session_id]
                windows.remove(window)
                if not windows:
                    del self.sessions[session_id]
        return panes

    def take_changes(self) -> typing.Dict[str, typing.Optional[list]]:
        """The changed sessions' windows (None: session gone), for the log."""
        changes = {sid: self.sessions.get(sid) for sid in self.changed}
        self.changed = set()
        return changes


def timer_time_ms(deadline_ms: int, step_ms: int = TIMER_STEP_MS) -> int:
    """``deadline_ms`` rounded up to a multiple of ``step_ms``: never before
    the deadline, so a window never fires before the watermark passed it."""
    if step_ms <= 1:
        return deadline_ms
    return min(-(-deadline_ms // step_ms) * step_ms, _MAX_TIMER_MS)


def _pane_row(pane) -> dict:
    session_id, window = pane
    return session_row(session_id, session_summary(window[_ACC]), window[_START],
                       window[_END], window[_PANE])


class _SessionizeFn(beam.DoFn):
    """``(bucket, [session fields])`` -> session rows; see the module docstring."""

    LOG = BagStateSpec("log", PickleCoder())
    META = ReadModifyWriteStateSpec("meta", PickleCoder())  # (version, watermark_ms, log_len)
    DEADLINE = TimerSpec("deadline", TimeDomain.WATERMARK)

    def __init__(self, gap_seconds: int, lateness_seconds: int, namespace: str):
        self._gap_ms = int(gap_seconds * 1000)
        self._lateness_ms = int(lateness_seconds * 1000)
        self._panes = Metrics.counter(namespace, "session_panes_emitted")
        self._late = Metrics.counter(namespace, "session_late_panes")
        self._too_late = Metrics.counter(namespace, "session_events_too_late")
        self._books: typing.Dict[typing.Any, list] = {}

    def setup(self):
        use_fast_state_cache_sizing()
        self._books = {}

    def _book(self, key, log, meta) -> list:
        """[version, SessionBook, log_len, armed deadline] for ``key``, rebuilt
        from the log unless the cached one has the durable version."""
        durable = meta.read()
        entry = self._books.get(key)
        if entry is not None and durable is not None and entry[0] == durable[0]:
            return entry
        book = SessionBook(self._gap_ms, self._lateness_ms)
        sessions: typing.Dict[str, list] = {}
        watermark_ms, log_len = -(2 ** 62), 0
        if durable is not None:
            _, watermark_ms, log_len = durable
            for changes in log.read():
                # A private copy: the SDK's state cache may hold these objects.
                changes = pickle.loads(pickle.dumps(changes, pickle.HIGHEST_PROTOCOL))
                for session_id, windows in changes.items():
                    if windows:
                        sessions[session_id] = windows
                    else:
                        sessions.pop(session_id, None)
        book.load(sessions, watermark_ms)
        entry = [None if durable is None else durable[0], book, log_len, None]
        self._books[key] = entry
        return entry

    def _save(self, entry, log, meta, deadline) -> None:
        book = entry[1]
        changes = book.take_changes()
        if changes:
            # Appended as a snapshot: the book keeps mutating its windows.
            changes = pickle.loads(pickle.dumps(changes, pickle.HIGHEST_PROTOCOL))
            if entry[2] > 2 * len(book.sessions) + 16:
                log.clear()  # compact: one snapshot instead of the history
                log.add(pickle.loads(pickle.dumps(book.sessions, pickle.HIGHEST_PROTOCOL)))
                entry[2] = 1
            else:
                log.add(changes)
                entry[2] += 1
            entry[0] = random.getrandbits(62) + 1
            meta.write((entry[0], book.watermark_ms, entry[2]))
        due = book.next_deadline_ms()
        if due is not None:
            due = timer_time_ms(due)
        if due is not None and due != entry[3]:
            deadline.set(Timestamp(micros=due * 1000))
            entry[3] = due

    def _emit(self, panes):
        for pane in panes:
            self._panes.inc()
            if pane[1][_PANE] > 0:
                self._late.inc()
            yield _pane_row(pane)

    def process(self, element, log=beam.DoFn.StateParam(LOG), meta=beam.DoFn.StateParam(META),
                deadline=beam.DoFn.TimerParam(DEADLINE)):
        key, events = element
        entry = self._book(key, log, meta)
        book = entry[1]
        panes = []
        for event in events:
            late_panes, kept = book.add(str(event["session_id"]), event)
            if not kept:
                self._too_late.inc()
            for pane in late_panes:
                panes.append((pane[0], list(pane[1])))  # the row as of this event
        self._save(entry, log, meta, deadline)
        yield from self._emit(panes)

    @on_timer(DEADLINE)
    def on_deadline(self, key=beam.DoFn.KeyParam, fired_at=beam.DoFn.TimestampParam,
                    log=beam.DoFn.StateParam(LOG), meta=beam.DoFn.StateParam(META),
                    deadline=beam.DoFn.TimerParam(DEADLINE)):
        entry = self._book(key, log, meta)
        entry[3] = None  # this timer is spent
        panes = entry[1].fire(fired_at.micros // 1000)
        self._save(entry, log, meta, deadline)
        yield from self._emit(panes)


def _split_by_session_bucket(buckets: int):
    def split(events):
        return list(split_by(
            (session_fields(e) for e in events),
            lambda e: zlib.crc32(str(e["session_id"]).encode("utf-8")) % buckets).items())
    return split


class AggregateSessionBatches(beam.PTransform):
    """Lists of enriched events -> ``frontend_sessions`` rows (one per pane),
    equal to ``AggregateSessions(streaming=True)`` on the same events (see the
    module docstring). Input in the global window."""

    def __init__(self, gap_seconds: int = DEFAULT_GAP_SECONDS,
                 allowed_lateness_seconds: int = DEFAULT_ALLOWED_LATENESS_SECONDS,
                 pipeline: str = "frontend", buckets: int = DEFAULT_SESSION_BUCKETS):
        super().__init__()
        check_session_args(gap_seconds, allowed_lateness_seconds)
        if buckets <= 0:
            raise ValueError("buckets must be positive")
        self._gap_seconds = gap_seconds
        self._lateness_seconds = allowed_lateness_seconds
        self._pipeline = pipeline
        self._buckets = buckets

    def expand(self, batches):
        return (
            batches
            | "SplitBySessionBucket" >> beam.FlatMap(
                _split_by_session_bucket(self._buckets)).with_output_types(
                    typing.Tuple[int, typing.Any])
            | "SessionizeBuckets" >> beam.ParDo(_SessionizeFn(
                self._gap_seconds, self._lateness_seconds, self._pipeline)).with_output_types(
                    typing.Dict[str, typing.Any])
        )
