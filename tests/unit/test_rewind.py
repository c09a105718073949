"""runners.rewind's pure core: the rewind time and the per-partition moves."""
from __future__ import annotations

import pytest

from runners import submit
from runners.rewind import HOUR_MS, Move, RewindError, floor_to, iso, parse_time, plan_moves, whole_windows

MIN = 60_000


def test_parse_time_takes_utc_by_default_and_zones_when_given():
    assert parse_time("1970-01-01T01:00:00") == HOUR_MS
    assert parse_time("1970-01-01T01:00:00Z") == HOUR_MS
    assert parse_time("1970-01-01T02:00:00+01:00") == HOUR_MS
    assert iso(HOUR_MS) == "1970-01-01T01:00:00.000+00:00"
    with pytest.raises(RewindError, match="ISO 8601"):
        parse_time("yesterday")


def test_whole_windows_floors_to_the_boundary_when_no_fired_window_is_cut():
    assert whole_windows(62 * MIN, [(0, 40 * MIN)], 5 * MIN) == 60 * MIN
    assert floor_to(62 * MIN, HOUR_MS) == HOUR_MS


def test_whole_windows_moves_back_to_the_start_of_every_fired_window_it_would_cut():
    # 100 min cuts [80, 130); moving to 80 cuts [50, 90); 50 floors to 50 and cuts nothing.
    fired = [(80 * MIN, 130 * MIN), (50 * MIN, 90 * MIN), (0, 40 * MIN)]
    assert whole_windows(100 * MIN, fired, 5 * MIN) == 50 * MIN
    # on an hour boundary: 50 min floors to 0
    assert whole_windows(100 * MIN, fired, HOUR_MS) == 0
    # a window starting exactly at the time is read whole: not moved
    assert whole_windows(80 * MIN, [(80 * MIN, 130 * MIN)], 5 * MIN) == 80 * MIN


def test_plan_moves_never_skips_records_the_job_has_not_read():
    moves = plan_moves(committed={0: 50, 1: 7, 2: None, 3: 9},
                       at_time={0: 20, 1: 30, 2: 4, 3: None},
                       end={0: 60, 1: 40, 2: 10, 3: 12})
    assert moves == [
        Move(0, 50, 20),
        Move(1, 7, 7, "kept: the job had not read that far"),
        Move(2, None, 4),
        Move(3, 9, 9, "kept: the job had not read that far"),  # no record at or after: the end (12) > 9
    ]
    assert moves[0].line() == "0: 50 -> 20" and moves[2].line() == "2: none -> 4"


def test_rewind_command_line_needs_a_time_or_the_open_windows_but_no_flink_master(monkeypatch):
    monkeypatch.delenv("FLINK_MASTER", raising=False)
    args, _ = submit.parse_args(["rewind", "--job=frontend", "--kafka_group_id=g", "--topic=t", "--to=2026-12-07"])
    assert args.to == "2026-12-07" and not args.to_open_windows
    with pytest.raises(SystemExit):
        submit.parse_args(["rewind", "--job=frontend", "--kafka_group_id=g", "--topic=t"])
    with pytest.raises(SystemExit):
        submit.parse_args(["rewind", "--job=marketo", "--kafka_group_id=g", "--topic=t", "--to_open_windows"])
