"""Archive re-runs give the original run's tables (embedded DuckDB here;
tests/integration/test_archive_rerun_postgres.py runs the same on PostgreSQL).

For each job (frontend, text agent), on input that spans midnight UTC with
sessions crossing it:

1. the job over the JSON lines -> tables + a local archive; snapshot;
2. a re-run of every day from the archive into a fresh store -> the snapshot;
3. in the first store, day 2's per-event rows are spoilt and the aggregates
   of the sessions crossing midnight deleted (billing hours of day 2 zeroed);
   a re-run of day 2 alone (``--input=.../source=<job>/date=<day 2>``) ->
   the snapshot again: per-event rows rewritten, the crossing sessions whole
   (recomputed from both days' events), not cut at midnight;
4. the archive the re-runs read is byte-for-byte as it was (no object
   written, none replaced).

Compared: every column but ``updated_at`` (the time a row was written) and,
in ``agent_turns.transformation_metadata``, ``source`` (where this run read
the turn: the JSON-lines file, then the archive object).
"""
import datetime as dt
import json
import pathlib
import typing

import pytest

from beam_pipelines import frontend, text_agent
from beam_pipelines.generate import frontend_events, sample_turns
from iheard_io.embedded import close_embedded
from iheard_io.sql_tables import SqlTables

SECRET = "test-secret-0123456789"
GAP_S = 1800
UTC = dt.timezone.utc
DAY_MS = 86_400_000
MIDNIGHT_MS = int(dt.datetime(2031, 5, 17, tzinfo=UTC).timestamp() * 1000)
DAY1, DAY2 = "2031-05-16", "2031-05-17"

TABLES = {
    "frontend": {"frontend_analytics": ("event_id",),
                 "frontend_sessions": ("session_id", "window_start")},
    "text_agent": {"agent_turns": ("session_id", "turn_id"),
                   "agent_conversations": ("session_id", "window_start"),
                   "agent_billing_hourly": ("tenant_id", "model", "hour")},
}
EVENT_TABLE = {"frontend": "frontend_analytics", "text_agent": "agent_turns"}
MODULES = {"frontend": frontend, "text_agent": text_agent}


def _times(lines) -> typing.Dict[str, typing.List[int]]:
    by_session: typing.Dict[str, typing.List[int]] = {}
    for line in lines:
        try:
            event = json.loads(line)
            by_session.setdefault(event["session_id"], []).append(int(event["timestamp"]))
        except (ValueError, KeyError, TypeError):
            continue  # the malformed lines
    return by_session


def crossing_sessions(lines) -> typing.Set[str]:
    """Sessions with events on both sides of MIDNIGHT_MS (the precondition)."""
    return {s for s, ts in _times(lines).items()
            if min(ts) < MIDNIGHT_MS <= max(ts)}


def input_lines(pipeline: str) -> typing.List[str]:
    """Generated input around MIDNIGHT_MS, from the first seed that gives
    sessions crossing it."""
    for seed in range(1, 60):
        if pipeline == "frontend":
            lines = list(frontend_events(500, seed=seed, start_ms=MIDNIGHT_MS - 8 * 60_000))
        else:
            lines = sample_turns(n_sessions=40, seed=seed, start_ms=MIDNIGHT_MS - 3 * 3_600_000)
        if len(crossing_sessions(lines)) >= 2:
            return lines
    raise AssertionError("no seed gives sessions crossing midnight")


class Store:
    """Where a run writes its tables: the DuckDB file of an output folder,
    or a PostgreSQL database (``dsn``)."""

    def __init__(self, output_dir: pathlib.Path, dsn: typing.Optional[str] = None):
        self.output_dir = output_dir
        self.dsn = dsn

    def args(self) -> typing.List[str]:
        args = [f"--output_dir={self.output_dir}"]
        return args + ([f"--postgres_dsn={self.dsn}"] if self.dsn else [])

    def tables(self) -> SqlTables:
        return SqlTables.open(dsn=self.dsn,
                              embedded_db=str(self.output_dir / "iheardai.duckdb"))

    def release(self) -> None:
        if not self.dsn:
            close_embedded(str(self.output_dir / "iheardai.duckdb"))


def run_job(pipeline: str, store: Store, input_path, *extra: str) -> None:
    MODULES[pipeline].run([
        f"--input={input_path}", *store.args(), f"--pii_secret={SECRET}",
        f"--session_gap_seconds={GAP_S}", "--profile=direct", "--progress=off", *extra])
    store.release()


def _comparable(table: str, row: dict) -> dict:
    out = {k: v for k, v in row.items() if k != "updated_at"}
    if table == "agent_turns":
        meta = out["transformation_metadata"]
        meta = json.loads(meta) if isinstance(meta, str) else dict(meta)
        meta.pop("source", None)
        out["transformation_metadata"] = meta
    return out


def snapshot(pipeline: str, store: Store) -> typing.Dict[str, list]:
    out = {}
    with store.tables() as db:
        for table, key in TABLES[pipeline].items():
            order = ", ".join(f'"{k}"' for k in key)
            out[table] = [_comparable(table, r) for r in db.select(
                f"SELECT * FROM {table} ORDER BY {order}")]
    store.release()
    return out


def assert_same_tables(got, want):
    for table, rows in want.items():
        assert len(got[table]) == len(rows), table
        for a, b in zip(got[table], rows):
            assert a == b, (table, {k: (a.get(k), v) for k, v in b.items() if a.get(k) != v})


def spoil_day2(pipeline: str, store: Store, crossing) -> None:
    """What a re-run of day 2 must repair: day 2's per-event rows changed,
    the crossing sessions' aggregates gone, day 2's billing zeroed."""
    day2 = dt.datetime.fromtimestamp(MIDNIGHT_MS / 1000, tz=UTC)
    ids = sorted(crossing)
    marks = ", ".join(["%s"] * len(ids))
    with store.tables() as db:
        if pipeline == "frontend":
            changed = db.execute('UPDATE frontend_analytics SET user_segment = %s '
                                 'WHERE "timestamp" >= %s', ["spoilt", day2])
            db.execute(f"DELETE FROM frontend_sessions WHERE session_id IN ({marks})", ids)
        else:
            changed = db.execute('UPDATE agent_turns SET channel = %s '
                                 'WHERE "timestamp" >= %s', ["spoilt", day2])
            db.execute(f"DELETE FROM agent_conversations WHERE session_id IN ({marks})", ids)
            db.execute('UPDATE agent_billing_hourly SET turns = 0, estimated_cost_usd = 0 '
                       'WHERE "hour" >= %s', [day2])
    store.release()
    assert changed != 0  # day 2 has events (-1: the count is not reported)


def archive_state(archive: pathlib.Path) -> typing.Dict[str, bytes]:
    return {str(p.relative_to(archive)): p.read_bytes()
            for p in sorted(archive.rglob("*")) if p.is_file()}


def check_rerun_equals_original(pipeline: str, tmp_path: pathlib.Path, first: Store,
                                fresh: Store, archive: typing.Optional[str] = None,
                                state: typing.Callable[[str], dict] = None,
                                extra: typing.Sequence[str] = ()) -> None:
    """The whole check (module docstring). ``archive``: its root (default a
    local folder); ``state``: root -> {object name: bytes} of the archive."""
    lines = input_lines(pipeline)
    crossing = crossing_sessions(lines)
    source = tmp_path / "input.jsonl"
    source.write_text("\n".join(lines) + "\n")
    archive = archive or str(tmp_path / "archive")
    state = state or (lambda root: archive_state(pathlib.Path(root)))

    run_job(pipeline, first, source, f"--archive_path={archive}", *extra)
    want = snapshot(pipeline, first)
    archived = state(archive)
    assert {name.split("/")[1] for name in archived} == {f"date={DAY1}", f"date={DAY2}"}

    # Every day, into an empty store.
    run_job(pipeline, fresh, f"{archive}/source={pipeline}", *extra)
    assert_same_tables(snapshot(pipeline, fresh), want)

    # Day 2 alone, over the spoilt first store.
    spoil_day2(pipeline, first, crossing)
    assert snapshot(pipeline, first) != want
    run_job(pipeline, first, f"{archive}/source={pipeline}/date={DAY2}", *extra)
    assert_same_tables(snapshot(pipeline, first), want)

    assert state(archive) == archived


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", ["frontend", "text_agent"])
def test_archive_rerun_equals_the_original_run_duckdb(pipeline, tmp_path):
    check_rerun_equals_original(pipeline, tmp_path, Store(tmp_path / "first"),
                                Store(tmp_path / "fresh"))


def test_a_rerun_refuses_to_write_the_archive_it_reads(tmp_path):
    archive = tmp_path / "archive"
    (archive / "source=frontend").mkdir(parents=True)
    with pytest.raises(ValueError, match="archive --input reads"):
        frontend.run([f"--input={archive}/source=frontend", f"--archive_path={archive}",
                      f"--output_dir={tmp_path}", "--profile=direct"])
    with pytest.raises(ValueError, match="archive of 'text_agent'"):
        frontend.run([f"--input={archive}/source=text_agent", f"--output_dir={tmp_path}",
                      "--profile=direct"])
