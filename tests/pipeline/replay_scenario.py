"""The dead-letter replay scenario shared by the DuckDB and PostgreSQL tests.

Frontend: sample events, a share of them sent by a "buggy producer" (the
time as ``ts`` in epoch seconds instead of ``timestamp`` in ms), plus the
hostile-input generator's lines (beam_pipelines/hostile_input.py). The fix,
``repair_frontend`` (``--fix=tests.pipeline.replay_scenario:repair_frontend``),
undoes the producer bug and repairs what it can of the hostile ``wrong_type``
lines; the rest stays broken. The *corrected input* is every line with the
same fix applied at the source: a clean run over it is what the tables must
hold after run + replay.

Text agent: sample turns, a share sent with ``sid`` for ``session_id`` and
the time in seconds; the fix spec ``TEXT_AGENT_SPEC`` (YAML) renames and
converts it back.

Lines whose text the dead-letter redaction would change (PII) are never
chosen as broken ones: a dead letter is stored with its PII replaced by
tokens, so its replay cannot give back the original values.
"""
from __future__ import annotations

import json
import re
import typing

from beam_pipelines import frontend, replay, text_agent

from beam_pipelines.generate import frontend_events, sample_turns
from beam_pipelines.hostile_input import STRING_FIELDS, hostile_lines
from transforms.fix_spec import FixSpec
from transforms.pii import PiiRedactor
from transforms.pii_regions import text_region_hints

SECRET = "test-secret-0123456789"
GAP_S = 1800

TEXT_AGENT_SPEC = """\
# The producer sent session_id as "sid" and the time in epoch seconds.
version: 1
rename:
  sid: session_id
timestamp_unit:
  timestamp: s
"""

# Per table: the key and the columns a replay may not reproduce (when the row
# was written; the replay's origin in a turn's lineage).
TABLES = {
    "frontend": {"frontend_analytics": (("event_id",), ()),
                 "frontend_sessions": (("session_id", "window_start"), ("updated_at",))},
    "text_agent": {"agent_turns": (("session_id", "turn_id"), ()),
                   "agent_conversations": (("session_id", "window_start"), ("updated_at",)),
                   "agent_billing_hourly": (("tenant_id", "model", "hour"), ("updated_at",))},
}


def repair_frontend(obj: dict) -> typing.Optional[dict]:
    """The test's ``--fix``: ``ts`` (seconds) -> ``timestamp`` (ms); a
    declared string field holding another JSON type -> dropped (or, for the
    two required ones, a stand-in); a wrong-typed optional number -> dropped."""
    out = dict(obj)
    if "ts" in out and "timestamp" not in out and isinstance(out["ts"], int):
        out["timestamp"] = out.pop("ts") * 1000
    for field in STRING_FIELDS:
        value = out.get(field)
        if value is None or isinstance(value, str):
            continue
        if field == "event_type":
            out[field] = "page_view"
        elif field == "session_id":
            out[field] = f"repaired-{out.get('event_id')}"
        else:
            del out[field]
    for field in ("time_on_page", "message_length"):
        value = out.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            del out[field]
    if "click_coordinates" in out and not isinstance(out["click_coordinates"], (dict, type(None))):
        del out["click_coordinates"]
    return out if out != obj else None


def _no_pii(line: str, redactor: PiiRedactor) -> bool:
    return redactor.redact_text(line, text_region_hints(line))[0] == line


def _dump(obj) -> str:
    return json.dumps(obj, ensure_ascii=False)


def frontend_lines(n_events: int = 240, n_hostile: int = 64, every: int = 9
                   ) -> typing.Tuple[typing.List[bytes], typing.List[bytes], int]:
    """(input as received, corrected input, number of buggy-producer lines)."""
    redactor = PiiRedactor(SECRET.encode())
    received: typing.List[bytes] = []
    corrected: typing.List[bytes] = []
    broken = 0
    for i, line in enumerate(frontend_events(n_events, seed=5, malformed_ratio=0.0,
                                             duplicate_ratio=0.0)):
        obj = json.loads(line)
        if i % every == 0 and _no_pii(line, redactor):
            obj["ts"] = obj.pop("timestamp") // 1000
            received.append(_dump(obj).encode())
            corrected.append(_dump(repair_frontend(obj)).encode())
            broken += 1
        else:
            received.append(line.encode())
            corrected.append(line.encode())
    for _, line in hostile_lines(n_hostile, huge_lines=0):
        received.append(line)
        try:
            obj = json.loads(line.decode("utf-8"))
        except (ValueError, RecursionError):
            obj = None
        fixed = repair_frontend(obj) if isinstance(obj, dict) else None
        corrected.append(_dump(fixed).encode() if fixed is not None else line)
    return received, corrected, broken


def text_agent_lines(n_sessions: int = 40, every: int = 5
                     ) -> typing.Tuple[typing.List[bytes], typing.List[bytes], int]:
    """(input as received, corrected input, number of buggy-producer lines):
    turns of sessions with other turns, sent with ``sid`` and seconds."""
    redactor = PiiRedactor(SECRET.encode())
    spec = FixSpec.from_dict(__import__("yaml").safe_load(TEXT_AGENT_SPEC))
    lines = sample_turns(n_sessions, seed=21, malformed_share=0.0, duplicate_share=0.0)
    per_session: typing.Dict[str, int] = {}
    for line in lines:
        sid = json.loads(line)["session_id"]
        per_session[sid] = per_session.get(sid, 0) + 1
    received, corrected, broken = [], [], 0
    for i, line in enumerate(lines):
        obj = json.loads(line)
        if i % every == 0 and per_session[obj["session_id"]] >= 2 and _no_pii(line, redactor):
            obj["sid"] = obj.pop("session_id")
            obj["timestamp"] = obj["timestamp"] // 1000
            received.append(_dump(obj).encode())
            corrected.append(_dump(spec.apply(obj)).encode())
            broken += 1
        else:
            received.append(line.encode())
            corrected.append(line.encode())
    return received, corrected, broken


def _normal(value):
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def snapshot(db, pipeline: str) -> typing.Dict[str, dict]:
    """Every row of the pipeline's tables by key, without the columns a
    replay may change (``TABLES``); JSON text parsed (DuckDB) and a turn's
    lineage (``transformation_metadata.source``) left out."""
    out = {}
    for table, (key, skip) in TABLES[pipeline].items():
        rows = {}
        for row in db.select(f"SELECT * FROM {table}"):
            row = {k: _normal(v) for k, v in row.items() if k not in skip}
            meta = row.get("transformation_metadata")
            if table == "agent_turns" and isinstance(meta, dict):
                meta.pop("source", None)
            rows[tuple(str(row[k]) for k in key)] = row
        out[table] = rows
    return out


def failed_events(db) -> typing.Dict[str, dict]:
    return {r["failure_id"]: r for r in db.select("SELECT * FROM failed_events")}


class PostgresStore:
    """Each named run's own database on the server of ``base_dsn``, created
    on first use (a replay selects every dead letter of its pipeline, so it
    must not see other tests' rows); ``drop_all`` at the end."""

    def __init__(self, base_dsn):
        self._base = base_dsn
        self._dbs = {}

    def dsn(self, name):
        import uuid

        import psycopg

        if name not in self._dbs:
            db = f"replay_test_{uuid.uuid4().hex[:10]}"
            with psycopg.connect(self._base, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{db}"')
            self._dbs[name] = db
        # A later dbname= in a libpq string wins over the earlier one.
        return f"{self._base} dbname={self._dbs[name]}"

    def args(self, name):
        return [f"--postgres_dsn={self.dsn(name)}"]

    def state(self, name, pipeline):
        from iheard_io.sql_tables import SqlTables

        with SqlTables.open(dsn=self.dsn(name)) as db:
            return snapshot(db, pipeline), failed_events(db)

    def drop_all(self):
        import psycopg

        with psycopg.connect(self._base, autocommit=True) as conn:
            for db in self._dbs.values():
                conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


# -- the scenario, on any store -------------------------------------------------
MODULES = {"frontend": frontend, "text_agent": text_agent}


def _run_job(pipeline, lines, store, tmp_path, name):
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    MODULES[pipeline].run([f"--input={path}", *store.args(name), f"--pii_secret={SECRET}",
                           f"--session_gap_seconds={GAP_S}", "--runner=DirectRunner",
                           f"--archive_path={tmp_path / name / 'archive'}"])


def _replay(pipeline, store, fix_args, *extra, replay_fn=None):
    argv = [f"--pipeline={pipeline}", *store.args("replayed"), f"--pii_secret={SECRET}",
            f"--session_gap_seconds={GAP_S}", *fix_args, *extra]
    if replay_fn is not None:
        return replay_fn(argv)
    return replay.run(argv + ["--runner=DirectRunner"])


_SUMMARY = re.compile(
    r"(?P<selected>\d+) dead letters selected, (?P<passed>\d+) now stored, "
    r"(?P<failed_again>\d+) failed again .*?, (?P<not_replayable>\d+) not replayable .*?, "
    r"(?P<pending>\d+) left pending")


def parse_summary(stdout: str) -> dict:
    """The counts of a replay's last summary line (a replay run as a command)."""
    found = [m for m in _SUMMARY.finditer(stdout)]
    assert found, stdout[-3000:]
    return {k: int(v) for k, v in found[-1].groupdict().items()}


def _fix_args(pipeline, tmp_path):
    if pipeline == "frontend":
        return ["--fix=tests.pipeline.replay_scenario:repair_frontend"]
    spec = tmp_path / "fix.yaml"
    spec.write_text(TEXT_AGENT_SPEC)
    return [f"--fix_spec={spec}"]


def check_replay(pipeline, tmp_path, store, replay_fn=None) -> None:
    """Input as received -> the job -> dry run (writes nothing, predicts the
    run) -> replay with the fix -> the tables equal a clean run of the
    corrected input; the marks and new dead letters are consistent; a second
    replay changes nothing. ``store``: ``args(name)`` (connection flags of
    run ``name``: "replayed" or "clean") and ``state(name, pipeline)``
    ((snapshot, failed_events) of that run's database). ``replay_fn(argv)``:
    runs the (non-dry) replays and returns their counts (default: in this
    process on the DirectRunner)."""
    received, corrected, broken = (frontend_lines() if pipeline == "frontend"
                                   else text_agent_lines())
    assert broken >= 5
    _run_job(pipeline, received, store, tmp_path, "replayed")
    _run_job(pipeline, corrected, store, tmp_path, "clean")
    clean_tables, _ = store.state("clean", pipeline)
    tables0, failed0 = store.state("replayed", pipeline)
    assert tables0 != clean_tables  # the buggy lines are missing

    fix = _fix_args(pipeline, tmp_path)
    report = _replay(pipeline, store, fix, "--dry_run")
    assert store.state("replayed", pipeline) == (tables0, failed0)  # a dry run writes nothing
    would_pass = sum(entry["pass"] for entry in report.values())
    assert would_pass >= broken

    summary = _replay(pipeline, store, fix, "--run_id=replay1", replay_fn=replay_fn)
    tables1, failed1 = store.state("replayed", pipeline)
    assert summary["passed"] == would_pass
    assert summary["selected"] == (summary["passed"] + summary["failed_again"]
                                   + summary["pending"] + summary["not_replayable"])
    assert tables1 == clean_tables

    # Originals are kept and marked; what failed again is a new dead letter
    # pointing at its original, with the replay's run id.
    originals = {k: v for k, v in failed1.items() if v["replay_of"] is None}
    assert originals.keys() == failed0.keys()
    marked = {k: v for k, v in originals.items() if v["replayed_by"] == "replay1"}
    assert len(marked) == summary["selected"] - summary["pending"]
    outcomes = [v["replay_outcome"] for v in marked.values()]
    assert outcomes.count("passed") == summary["passed"]
    assert outcomes.count("not_replayable") == summary["not_replayable"]
    refailures = {k: v for k, v in failed1.items() if v["replay_of"] is not None}
    assert len(refailures) == summary["failed_again"]
    for row in refailures.values():
        assert row["replay_run_id"] == "replay1"
        assert originals[row["replay_of"]]["replay_outcome"] == "failed"
        assert row["replayed_by"] is None

    # Twice: nothing left to do, nothing changes. (Only what the fix raised
    # on stays pending, for a better fix.)
    again = _replay(pipeline, store, fix, "--run_id=replay2", replay_fn=replay_fn)
    assert again["selected"] == again["pending"] == summary["pending"]
    assert again["passed"] == again["failed_again"] == 0
    assert store.state("replayed", pipeline) == (tables1, failed1)
