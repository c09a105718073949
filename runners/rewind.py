"""Move a stopped streaming job's Kafka consumer group back to a point in event time.

Step 2 of the README's "procedure when the state cannot be carried over":
after ``runners.submit stop`` and before the new version starts without a
savepoint, the group's committed offsets go back to the start of the oldest
window still open, so the new job rebuilds those windows whole instead of
splitting them. ``python -m runners.submit rewind`` is the command line.

The rewind time is either given (``--to``) or read from the job's tables
(``--to_open_windows``, ``open_windows_start``):

* an event (a turn) is *open* when no fired window covers it: no
  ``frontend_sessions`` / ``agent_conversations`` row of its session with
  ``window_start <= timestamp < window_end``, and for the text agent no
  ``agent_billing_hourly`` row of its tenant and hour. The earliest open
  event within ``lookback`` of the newest one is where the job's state began;
* that time is floored to a boundary of the windows the job cuts by the clock
  (the 5-minute archive windows; the text agent's billing hour), and moved
  back to the start of any *fired* session/conversation that contains it
  (``whole_windows``), so that every window the new job reads again is read
  whole: it rewrites the same row under the same key instead of a partial
  row (a fired session cut at the rewind point would come back as a second
  row with a later ``window_start``; a billing hour cut would be overwritten
  by its tail).

Offsets: per partition, the first offset whose record timestamp is at or
after that time (``KafkaConsumer.offsets_for_times``; none: the end offset),
but never after the committed offset (records not yet read are never
skipped). They are committed with the admin API (OffsetCommit outside any
generation, as the job's own reader commits them: ``iheard_io.kafka_read``),
which the broker accepts only while the group has no members; a group with
members is refused here before anything is moved, and a per-partition error
from the broker (a consumer joined meanwhile) is reported, not ignored.
The job's reader itself never joins the group, so a running job is not a
member: ``--job_name`` with ``--flink_master`` also refuses while Flink runs a
job of that name.
"""
from __future__ import annotations

import dataclasses
import datetime
import typing

__all__ = [
    "RewindError",
    "Move",
    "parse_time",
    "iso",
    "floor_to",
    "whole_windows",
    "plan_moves",
    "open_windows_start",
    "group_members",
    "rewind_group",
    "JOBS",
]

ARCHIVE_WINDOW_MS = 5 * 60 * 1000
HOUR_MS = 3600 * 1000


class RewindError(Exception):
    """The group cannot (or must not) be moved; the message says why."""


@dataclasses.dataclass(frozen=True)
class JobTables:
    """Where a job's events and fired windows are, and its clock boundary."""

    events: str                 # one row per event/turn, with session_id and timestamp
    sessions: str               # fired session windows: session_id, window_start, window_end
    boundary_ms: int            # the rewind time is floored to a multiple of this
    billing: typing.Optional[str] = None   # fired billing hours: tenant_id, hour


JOBS = {
    "frontend": JobTables("frontend_analytics", "frontend_sessions", ARCHIVE_WINDOW_MS),
    "text_agent": JobTables("agent_turns", "agent_conversations", HOUR_MS, billing="agent_billing_hourly"),
}


@dataclasses.dataclass(frozen=True)
class Move:
    partition: int
    old: typing.Optional[int]   # committed offset before (None: the group had none)
    new: int
    note: str = ""

    def line(self) -> str:
        old = "none" if self.old is None else str(self.old)
        return f"{self.partition}: {old} -> {self.new}" + (f" ({self.note})" if self.note else "")


# ------------------------------------------------------------------ pure core


def parse_time(text: str) -> int:
    """ISO 8601 (``2026-12-07T00:00:00``, ``...Z``, ``...+01:00``; no zone: UTC) -> epoch ms."""
    try:
        value = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise RewindError(f"--to must be an ISO 8601 time, got {text!r}") from exc
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return round(value.timestamp() * 1000)


def iso(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).isoformat(timespec="milliseconds")


def floor_to(ms: int, boundary_ms: int) -> int:
    return ms - ms % boundary_ms


def whole_windows(t_ms: int, fired: typing.Iterable[typing.Tuple[int, int]], boundary_ms: int) -> int:
    """The latest time <= ``t_ms`` on a ``boundary_ms`` multiple that cuts none of the
    ``fired`` windows ``[start, end)``: reading from it re-reads each of them whole or not at all."""
    fired = sorted(fired)
    t = floor_to(t_ms, boundary_ms)
    while True:
        cut = [start for start, end in fired if start < t < end]
        if not cut:
            return t
        t = floor_to(min(cut), boundary_ms)


def plan_moves(
    committed: typing.Mapping[int, typing.Optional[int]],
    at_time: typing.Mapping[int, typing.Optional[int]],
    end: typing.Mapping[int, int],
) -> typing.List[Move]:
    """Per partition: the first offset at or after the time (``at_time``; None: no such
    record, so the end offset), never past the committed one."""
    moves = []
    for partition in sorted(end):
        target = at_time.get(partition)
        target = end[partition] if target is None else target
        old = committed.get(partition)
        if old is not None and old < target:
            moves.append(Move(partition, old, old, "kept: the job had not read that far"))
        else:
            moves.append(Move(partition, old, target))
    return moves


# ------------------------------------------------------------------ the tables


def _ms(value) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return round(value.timestamp() * 1000)


def open_windows_start(job: str, dsn: str, lookback_ms: int,
                       slack_ms: int = 0) -> typing.Tuple[typing.Optional[int], dict]:
    """(rewind time in epoch ms, what it was computed from) from ``job``'s PostgreSQL tables;
    None when the tables hold no event. ``slack_ms`` goes further back before the time is
    widened to whole windows (for records whose Kafka timestamp is before their event time)."""
    import psycopg

    tables = JOBS[job]
    detail: dict = {"job": job}
    with psycopg.connect(dsn) as conn:
        latest = conn.execute(f"SELECT max(timestamp) FROM {tables.events}").fetchone()[0]
        if latest is None:
            return None, dict(detail, reason=f"{tables.events} is empty")
        latest_ms = _ms(latest)
        horizon = latest - datetime.timedelta(milliseconds=lookback_ms)
        detail["last_event_time"] = iso(latest_ms)
        not_in_session = (
            f"NOT EXISTS (SELECT 1 FROM {tables.sessions} s WHERE s.session_id = e.session_id "
            "AND s.window_start <= e.timestamp AND e.timestamp < s.window_end)"
        )
        opens = [("open_session_since", not_in_session)]
        if tables.billing:
            opens.append(("open_billing_hour_since",
                          f"NOT EXISTS (SELECT 1 FROM {tables.billing} b WHERE b.tenant_id = e.tenant_id "
                          "AND b.hour = date_trunc('hour', e.timestamp))"))
        earliest = []
        for name, condition in opens:
            found = conn.execute(
                f"SELECT min(e.timestamp) FROM {tables.events} e WHERE e.timestamp >= %s "
                f"AND e.session_id IS NOT NULL AND {condition}", (horizon,)).fetchone()[0]
            if found is not None:
                detail[name] = iso(_ms(found))
                earliest.append(_ms(found))
        # Nothing open: the job's state holds no window; the last event is a safe start.
        start = (min(earliest) if earliest else latest_ms) - slack_ms
        fired = [(_ms(s), _ms(e)) for s, e in conn.execute(
            f"SELECT window_start, window_end FROM {tables.sessions} WHERE window_end > %s",
            (horizon,)).fetchall()]
    rewind = whole_windows(start, fired, tables.boundary_ms)
    detail["rewind_to"] = iso(rewind)
    return rewind, detail


# ------------------------------------------------------------------ Kafka


def _client_config(bootstrap: str) -> dict:
    from iheard_io import settings
    from iheard_io.kafka_client import kafka_client_config
    from iheard_io.security import resolve_secret_files

    return resolve_secret_files(kafka_client_config(bootstrap, **settings.kafka_security()))


def group_members(config: typing.Mapping[str, typing.Any], group_id: str) -> typing.Tuple[str, list]:
    """(group state, member ids) as the broker's group coordinator reports them."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(**config)
    try:
        described = admin.describe_groups([group_id]).get(group_id) or {}
    finally:
        admin.close()
    members = [m.get("member_id") if isinstance(m, dict) else m for m in described.get("members") or []]
    return str(described.get("group_state", described.get("state", ""))), members


def rewind_group(bootstrap: str, group_id: str, topic: str, to_ms: int,
                 dry_run: bool = False) -> typing.List[Move]:
    """Commits, for ``group_id`` on every partition of ``topic``, the first offset at or
    after ``to_ms`` (never later than the committed one); returns the moves."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.admin import KafkaAdminClient
    from kafka.structs import OffsetAndMetadata

    config = _client_config(bootstrap)
    state, members = group_members(config, group_id)
    if members:
        raise RewindError(
            f"consumer group {group_id} has {len(members)} active member(s) (state {state}): stop every "
            "consumer of the group (runners.submit stop) before moving its offsets")
    # A consumer outside the group (no group_id) reads positions; the admin client commits.
    consumer = KafkaConsumer(**config, enable_auto_commit=False)
    admin = KafkaAdminClient(**config)
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise RewindError(f"topic {topic} does not exist or has no partitions")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        found = consumer.offsets_for_times({tp: to_ms for tp in tps})
        end = consumer.end_offsets(tps)
        committed = {tp.partition: meta.offset for tp, meta in admin.list_group_offsets(group_id).get(group_id, {}).items()
                     if tp.topic == topic and meta is not None and meta.offset >= 0}
        moves = plan_moves(
            committed,
            {tp.partition: (found[tp].offset if found.get(tp) is not None else None) for tp in tps},
            {tp.partition: end[tp] for tp in tps},
        )
        if not dry_run:
            errors = admin.alter_group_offsets(group_id, {
                TopicPartition(topic, m.partition): OffsetAndMetadata(m.new, "", -1) for m in moves})
            failed = {tp.partition: error.__name__ for tp, error in errors.items()
                      if getattr(error, "errno", 0) != 0}
            if failed:
                raise RewindError(f"the broker refused the new offsets of group {group_id}: {failed} "
                                  "(a consumer joined the group meanwhile?)")
            after = {tp.partition: meta.offset for tp, meta in admin.list_group_offsets(group_id).get(group_id, {}).items()
                     if tp.topic == topic}
            wrong = [m.line() for m in moves if after.get(m.partition) != m.new]
            if wrong:
                raise RewindError(f"the broker did not keep the commit for group {group_id}: {wrong}")
        return moves
    finally:
        consumer.close(autocommit=False)
        admin.close()
