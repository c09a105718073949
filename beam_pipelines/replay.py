"""Replay dead letters through their pipeline, once, with an optional fix.

A producer bug (a renamed field, a new event type ...) leaves dead letters in
``failed_events``; once fixed, this sends them back through the same chain
the pipeline runs, writes what now passes to the same tables, and keeps the
aggregates whole::

    python -m beam_pipelines.replay --pipeline=frontend --dry_run --fix_spec=fix.yaml
    python -m beam_pipelines.replay --pipeline=frontend --fix_spec=fix.yaml
    python -m beam_pipelines.replay --pipeline=text_agent --fix=mypkg.fixes:rename_model \\
        --stage=validate --message_pattern='model_name' --since=2026-12-01 \\
        --postgres_dsn="host=127.0.0.1 port=15433 dbname=analytics user=iheard password=iheard"

Connection options are the pipelines' (``--postgres_dsn`` or ``POSTGRES_*``,
else the DuckDB file under ``--output_dir``, default ``./output``, as after
``make demo``; ``--redis_url``, ``--archive_path``, Snowflake ...).

The run::

    SelectDeadLetters   failed_events of --pipeline, not yet replayed, at a
                        source stage (decode / validate: the payload as it
                        arrived), filtered by --stage, --error_class,
                        --message_pattern (regex), --since/--until (received_at)
    ApplyFix            --fix / --fix_spec on the decoded JSON object
                        (transforms/fix_spec.py); None leaves the record as is
    dry run:            each record through the DoFns of the job's chain(),
                        in this process; prints per original reason how many
                        would pass / still fail and why, with examples; writes
                        nothing
    run:                records (origin replay:<run id>:<failure_id>) staged
                        in a JSON-lines file (--staging_dir), read back
                        -> the job's build_pipeline(aggregates=False,
                           archive_prefix=replay-<run id>): same parse /
                           redact / enrich / dedupe, same per-event sinks
                           (upserts by event id), failures -> failed_events
                        -> recompute_aggregates of the sessions /
                           conversations / billing hours touched
                           (beam_pipelines/aggregates.py)
                        -> marks: replayed_by, replayed_at, replay_outcome on
                           every replayed original (never deleted)

Guarantees: a record that fails again is a new dead letter with the replay's
reason, ``replay_run_id`` and ``replay_of`` (its id hashes the replay origin,
so it never overwrites the original or its mark); originals are marked only
where ``replayed_by`` is still empty, so a second replay of the same
selection finds nothing to do (dead letters a replay wrote are selected only
with ``--include_replayed_failures``, e.g. to try a better fix). A replay
that stops before its marks are written is replayed whole next time (the
per-event writes are upserts; its dead letters stay under its run id).
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime as _dt
import json
import logging
import re
import sys
import tempfile
import time
import typing
import uuid

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import TimestampedValue

from beam_pipelines import cli, common, progress
from beam_pipelines import frontend, marketo, text_agent
from beam_pipelines.aggregates import open_tables, recompute_aggregates
from beam_pipelines.options import IheardOptions, apply_s3_options, resolve_connections
from iheard_io import read_progress
from iheard_io.files import ReadFromJsonLines
from iheard_io.sql_tables import SqlTables
from schemas.events import FrontendEvent, MarketoLead
from schemas.records import SourceRecord, record_from_staged, staged_line
from schemas.tables import replay_topic, to_utc_datetime
from schemas.text_agent import TextAgentTurn
from transforms.fix_spec import fix_fingerprint, load_fix
from transforms.marketo import ENGAGEMENT_FIELD
from transforms.parse import parse_record
from transforms.recompute import touched_keys

__all__ = ["ReplayOptions", "run", "select_dead_letters", "prepare", "dry_run", "replay",
           "reason_of", "REPLAYABLE_STAGES", "JOBS"]

_LOG = logging.getLogger(__name__)

# Dead letters whose raw_payload is the record as it arrived. Later stages
# (redact, enrich, a sink) hold an intermediate dict, not something the
# chain's first step reads.
REPLAYABLE_STAGES = ("decode", "validate")


@dataclasses.dataclass(frozen=True)
class Job:
    module: typing.Any
    model: typing.Any
    event_table: typing.Optional[str]


JOBS = {
    "frontend": Job(frontend, FrontendEvent, "frontend_analytics"),
    "text_agent": Job(text_agent, TextAgentTurn, "agent_turns"),
    "marketo": Job(marketo, MarketoLead, None),
}


class ReplayOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        group = parser.add_argument_group("replay")
        group.add_argument("--pipeline", choices=sorted(JOBS),
                           help="Whose dead letters to replay (required).")
        group.add_argument("--fix", help="MODULE:FUNCTION taking the decoded JSON object of one "
                                         "record, returning the fixed object or None.")
        group.add_argument("--fix_spec", help="A fix spec file (YAML or JSON): renames, "
                                              "defaults, timestamp unit, event-type mapping.")
        group.add_argument("--stage", help="Only these stages (comma-separated; of "
                                           f"{', '.join(REPLAYABLE_STAGES)}).")
        group.add_argument("--error_class", help="Only these error classes (comma-separated).")
        group.add_argument("--message_pattern", help="Only dead letters whose error message "
                                                     "matches this regular expression.")
        group.add_argument("--since", help="received_at >= this (ISO-8601 or epoch ms).")
        group.add_argument("--until", help="received_at < this (ISO-8601 or epoch ms).")
        group.add_argument("--include_replayed_failures", action="store_true", default=False,
                           help="Also select dead letters an earlier replay wrote.")
        group.add_argument("--limit", type=int, help="At most this many dead letters.")
        group.add_argument("--examples", type=int, default=3,
                           help="Before/after examples per reason in a dry run (default 3).")
        group.add_argument("--run_id", help="This replay's id (default: time + random).")
        group.add_argument("--staging_dir", help="Where the replay stages its records for the "
                                                 "job (a folder or s3:// prefix the workers "
                                                 "can read; default: a local temporary folder).")


class DryRunFlag:
    """``--dry_run``, read before Beam parses the rest: Beam's own test
    options define a ``--dry_run`` that takes a value (and stops a runner
    from running), so the replay's flag never reaches Beam."""

    @staticmethod
    def _add_argparse_args(parser):
        parser.add_argument("--dry_run", action="store_true", default=False,
                            help="Write nothing; print per original reason how many would now "
                                 "pass, how many would still fail and why, with examples.")

    @classmethod
    def split(cls, argv) -> typing.Tuple[bool, typing.List[str]]:
        parser = argparse.ArgumentParser(add_help=False)
        cls._add_argparse_args(parser)
        known, rest = parser.parse_known_args(list(argv))
        return known.dry_run, rest


@dataclasses.dataclass
class Prepared:
    """One selected dead letter, fixed: ``record`` is what the chain reads."""
    failure_id: str
    root_id: str
    reason: str
    before: str
    after: str
    changed: bool
    record: typing.Optional[SourceRecord]
    # Why the record is not run: the fix raised (left pending, for a better
    # fix), or the stored payload is not the record as it arrived (marked
    # not_replayable: no fix can give the original back).
    skipped: typing.Optional[str] = None
    lossy: bool = False


# -- selection -----------------------------------------------------------------
def _time_bound(value):
    if value is None:
        return None
    text = str(value).strip()
    return to_utc_datetime(int(text) if text.isdigit() else text)


def select_dead_letters(db: SqlTables, pipeline: str, stages=None, error_classes=None,
                        message_pattern: typing.Optional[str] = None, since=None, until=None,
                        include_replayed_failures: bool = False,
                        limit: typing.Optional[int] = None) -> typing.List[dict]:
    """The ``failed_events`` rows a replay takes, oldest first."""
    stages = list(stages or REPLAYABLE_STAGES)
    bad = sorted(set(stages) - set(REPLAYABLE_STAGES))
    if bad:
        raise ValueError(f"stage(s) {bad} cannot be replayed: their dead letters hold an "
                         f"intermediate record; replayable: {list(REPLAYABLE_STAGES)}")
    where = ["pipeline = %s", "replayed_by IS NULL",
             "stage IN (" + ", ".join(["%s"] * len(stages)) + ")"]
    params: typing.List[typing.Any] = [pipeline, *stages]
    if not include_replayed_failures:
        where.append("replay_of IS NULL")
    if error_classes:
        where.append("error_class IN (" + ", ".join(["%s"] * len(error_classes)) + ")")
        params.extend(error_classes)
    if since is not None:
        where.append("received_at >= %s")
        params.append(_time_bound(since))
    if until is not None:
        where.append("received_at < %s")
        params.append(_time_bound(until))
    rows = db.select(
        "SELECT failure_id, stage, error_class, error_message, raw_payload, source_topic, "
        "source_partition, source_offset, received_at, replay_of FROM failed_events WHERE "
        + " AND ".join(where) + " ORDER BY received_at, failure_id", params)
    if message_pattern:
        pattern = re.compile(message_pattern)
        rows = [r for r in rows if pattern.search(r.get("error_message") or "")]
    return rows[:limit] if limit is not None else rows


# Quoted values and free-standing numbers (not the 8601 of "ISO-8601").
_SHAPE = re.compile(r"'[^']*'|\"[^\"]*\"|(?<![\w-])-?\d+(\.\d+)?(?!\w)")


def reason_of(stage: str, error_class: str, message: typing.Optional[str]) -> str:
    """A dead letter's reason for grouping: stage, error class and the first
    line of its message with quoted values and numbers blanked."""
    first = (message or "").splitlines()[0] if message else ""
    return f"{stage} {error_class}: {_SHAPE.sub('_', first)[:160]}"


# -- fix -----------------------------------------------------------------------
# What schemas.records.storable_raw leaves in a payload it had to change:
# undecodable bytes, lone surrogates and NUL become U+FFFD; a payload past
# the size limit is cut, with this note.
_CUT_NOTE = re.compile(r"\.\.\. \[cut: \d+ bytes in all, sha256 [0-9a-f]{64}\]$")


def lossy_payload(raw: str) -> typing.Optional[str]:
    """Why a stored payload is not the record as it arrived, or None. Such a
    payload would pass on replay only because storing it repaired it (an
    invalid byte rejected by design would come back as U+FFFD), so it is not
    replayed."""
    if "\ufffd" in raw:
        return "stored payload is not the original (U+FFFD stands for bytes it could not keep)"
    if _CUT_NOTE.search(raw):
        return "stored payload is not the original (cut at the size limit)"
    return None


def prepare(rows: typing.Iterable[dict], fix, run_id: str) -> typing.List[Prepared]:
    """Applies ``fix`` to each row's payload and builds the record the chain
    reads (origin ``replay:<run id>:<original id>``). A payload storing
    changed (``lossy_payload``) or that the fix raised on is left pending."""
    out = []
    for row in rows:
        raw = row.get("raw_payload") or ""
        after, changed, fix_error = raw, False, None
        error = lossy_payload(raw)
        if fix is not None and error is None:
            try:
                obj = json.loads(raw)
            except (ValueError, RecursionError):
                obj = None  # not JSON: nothing a fix of JSON objects can do
            if obj is not None:
                try:
                    # obj is this record's own decoded copy: the fix may change it.
                    fixed = fix(obj)
                except Exception as exc:  # noqa: BLE001 - reported, record left pending
                    error = fix_error = f"the fix raised {type(exc).__name__}: {str(exc)[:200]}"
                else:
                    if fixed is not None:
                        after = json.dumps(fixed, ensure_ascii=False, separators=(",", ":"))
                        changed = after != raw
        root = row.get("replay_of") or row["failure_id"]
        record = None if error else SourceRecord(
            value=after.encode("utf-8", errors="surrogatepass"),
            topic=replay_topic(run_id, root),
            partition=_int(row.get("source_partition")),
            offset=_int(row.get("source_offset")))
        out.append(Prepared(row["failure_id"], root,
                            reason_of(row["stage"], row["error_class"], row.get("error_message")),
                            raw, after, changed, record, error,
                            lossy=error is not None and fix_error is None))
    return out


def _int(value) -> int:
    return -1 if value is None else int(value)


# -- dry run -------------------------------------------------------------------
class _Chain:
    """The job's chain() DoFns, run in this process on one record at a time."""

    def __init__(self, pipeline: str, conns, opts):
        job = JOBS[pipeline]
        args = (conns, opts) if pipeline == "marketo" else (conns, opts, False)
        self._fns = [step.dofn() for step in job.module.chain(*args)]
        for fn in self._fns:
            fn.setup()
        self._marketo = pipeline == "marketo"

    def judge(self, record: SourceRecord):
        """None when the record passes every step, else its FailedRecord."""
        elements = [record]
        for i, fn in enumerate(self._fns):
            if self._marketo and i == 1:
                # The engagement lookup (a table read) changes scores only.
                elements = [dict(e, **{ENGAGEMENT_FIELD: None}) for e in elements]
            out = []
            for element in elements:
                for value in fn.process(element) or ():
                    if isinstance(value, TaggedOutput):
                        return value.value
                    out.append(value.value if isinstance(value, TimestampedValue) else value)
            elements = out
        return None

    def close(self):
        for fn in self._fns:
            fn.teardown()


def _expect(opts, prepared) -> typing.Tuple[str, read_progress.Tally]:
    """Registers this run's records (and their bytes) for the progress line."""
    key = getattr(opts, "progress_key", None) or progress.new_key()
    read_progress.expect(key, sum(len(p.before.encode("utf-8", "surrogatepass"))
                                  for p in prepared) or None)
    return key, read_progress.Tally(key)


def dry_run(prepared: typing.Sequence[Prepared], pipeline: str, conns, opts,
            examples: int = 3) -> dict:
    """Judges every prepared record in-process; writes nothing. Returns
    ``{reason: {"total", "pass", "fail": Counter(new reason), "unchanged",
    "skipped", "examples": [(before, after, outcome)]}}``. Shows progress
    (``beam_pipelines.progress``: ``--progress``) while it judges."""
    chain = _Chain(pipeline, conns, opts)
    report: typing.Dict[str, dict] = {}
    key, tally = _expect(opts, prepared)
    with progress.report(f"replay {pipeline} (dry run)", key,
                         getattr(opts, "progress", "auto"),
                         getattr(opts, "progress_interval_seconds", None)
                         or progress.DEFAULT_INTERVAL_SECONDS):
        try:
            _judge_all(chain, prepared, report, examples, tally)
        finally:
            tally.flush()
            chain.close()
    return report


def _judge_all(chain, prepared, report, examples, tally) -> None:
    """Fills ``report`` (see ``dry_run``), one record at a time."""
    for item in prepared:
        tally.add(1, len(item.before))
        entry = report.setdefault(item.reason, {
            "total": 0, "pass": 0, "fail": collections.Counter(), "unchanged": 0,
            "skipped": 0, "examples": []})
        entry["total"] += 1
        if not item.changed:
            entry["unchanged"] += 1
        if item.skipped:
            entry["skipped"] += 1
            outcome = f"not replayed: {item.skipped}"
            entry["fail"][f"not replayed: {item.skipped[:120]}"] += 1
        else:
            failed = chain.judge(item.record)
            if failed is None:
                entry["pass"] += 1
                outcome = "passes"
            else:
                new_reason = reason_of(failed.stage, failed.error_class, failed.error_message)
                entry["fail"][new_reason] += 1
                outcome = "fails: " + new_reason
        if len(entry["examples"]) < examples:
            entry["examples"].append((item.before, item.after, outcome))


def _clip(text: str, n: int = 160) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= n else text[:n] + f"... ({len(text)} chars)"


def format_dry_run(report: dict, pipeline: str, fix_name, selected: int, seconds: float) -> str:
    lines = [f"[replay] DRY RUN {pipeline}: {selected} dead letters selected, fix={fix_name}, "
             f"judged in {seconds:.2f} s; nothing written"]
    total_pass = sum(e["pass"] for e in report.values())
    lines.append(f"  would now pass: {total_pass}  would still fail: {selected - total_pass}")
    for reason, entry in sorted(report.items(), key=lambda kv: -kv[1]["total"]):
        lines.append(f"- reason: {reason}")
        lines.append(f"    dead letters: {entry['total']}  would now pass: {entry['pass']}  "
                     f"would still fail: {entry['total'] - entry['pass']}"
                     + (f"  (the fix left {entry['unchanged']} as they were)" if fix_name else ""))
        for new_reason, n in entry["fail"].most_common(5):
            lines.append(f"    still failing {n}: {new_reason}")
        for before, after, outcome in entry["examples"]:
            lines.append(f"    before: {_clip(before)}")
            if after != before:
                lines.append(f"    after:  {_clip(after)}")
            lines.append(f"      -> {outcome}")
    return "\n".join(lines)


# -- the run -------------------------------------------------------------------
def replay(prepared: typing.Sequence[Prepared], pipeline: str, options: PipelineOptions,
           conns, opts, run_id: str, db: SqlTables, runner=None,
           staging_dir: typing.Optional[str] = None) -> dict:
    """Runs the prepared records through the job's pipeline, recomputes the
    aggregates they touched, marks the originals. Returns counts."""
    job = JOBS[pipeline]
    runnable = [p for p in prepared if p.record is not None]
    lossy = [p for p in prepared if p.lossy]
    summary = {"selected": len(prepared), "not_replayable": len(lossy),
               "pending": len(prepared) - len(runnable) - len(lossy),
               "passed": 0, "failed_again": 0, "aggregates": {}}
    if not runnable:
        _mark(db, run_id, [(p, "not_replayable") for p in lossy])
        return summary
    phases = summary["seconds_by_phase"] = {}
    started = time.monotonic()
    beam_pipeline = beam.Pipeline(runner=runner, options=options)
    # The records are staged in a file, not in the graph: Beam pickles and
    # bz2-compresses a Create's values into the job, which cost more than
    # the whole chain (10 s per 10,000 dead letters).
    staged = FileSystems.join(staging_dir or tempfile.mkdtemp(prefix="iheard-replay-"),
                              f"replay-{run_id}.jsonl")
    with FileSystems.create(staged) as handle:
        for item in runnable:
            handle.write(staged_line(item.record) + b"\n")
    key = getattr(opts, "progress_key", None) or progress.new_key()
    read_progress.expect(key, FileSystems.match([staged])[0].metadata_list[0].size_in_bytes)
    records = (beam_pipeline
               | "ReadDeadLetters" >> ReadFromJsonLines(staged, progress_key=key)
               | "FromStagedLines" >> beam.Map(record_from_staged))
    job.module.build_pipeline(beam_pipeline, records, conns, opts, streaming=False,
                              aggregates=False, archive_prefix=f"replay-{run_id}")
    try:
        with progress.report(f"replay {pipeline}", key, opts.progress,
                             opts.progress_interval_seconds) as reporter:
            result = beam_pipeline.run()
            if reporter is not None:
                reporter.attach(result)
            result.wait_until_finish()
    finally:
        FileSystems.delete([staged])
    phases["pipeline"] = round(time.monotonic() - started, 3)

    refailed = {r["replay_of"] for r in db.select(
        "SELECT replay_of FROM failed_events WHERE replay_run_id = %s", [run_id])}
    passed = [p for p in runnable if p.root_id not in refailed]
    summary["passed"] = len(passed)
    summary["failed_again"] = len(runnable) - len(passed)

    started = time.monotonic()
    if job.event_table and passed:
        events = [_parse_quietly(p.record, job.model) for p in passed]
        sessions = sorted({str(e["session_id"]) for e in events if e and e.get("session_id")})
        rows = db.select_in(
            f'SELECT session_id, "timestamp", tenant_id, model FROM {job.event_table} '
            "WHERE session_id IN ({})" if pipeline == "text_agent" else
            f"SELECT session_id FROM {job.event_table} WHERE session_id IN ({{}})", sessions)
        keys = touched_keys(pipeline, rows)
        summary["aggregates"] = recompute_aggregates(
            pipeline, keys, conns, gap_seconds=opts.session_gap_seconds, tables=db)

    phases["recompute"] = round(time.monotonic() - started, 3)
    started = time.monotonic()
    _mark(db, run_id, [(p, "failed" if p.root_id in refailed else "passed") for p in runnable]
          + [(p, "not_replayable") for p in lossy])
    phases["marks"] = round(time.monotonic() - started, 3)
    return summary


def _mark(db: SqlTables, run_id: str, outcomes) -> None:
    """The originals' marks, in one transaction; a row already marked (by
    another run) keeps its mark."""
    now = _dt.datetime.now(_dt.timezone.utc)
    with db.transaction():
        db.update_by_key(
            "failed_events", "failure_id", ("replayed_by", "replayed_at", "replay_outcome"),
            [(p.failure_id, run_id, now, outcome) for p, outcome in outcomes],
            condition="t.replayed_by IS NULL")


def _parse_quietly(record: SourceRecord, model) -> typing.Optional[dict]:
    try:
        return parse_record(record.value, model, source=record)
    except Exception:  # noqa: BLE001 - it passed in the job; keys only
        return None


def new_run_id() -> str:
    return "r" + _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + \
        uuid.uuid4().hex[:6]


def run(argv: typing.Optional[typing.List[str]] = None, runner=None) -> dict:
    """The command line; returns the dry-run report or the run's counts."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = "python -m beam_pipelines.replay"
    is_dry_run, argv = DryRunFlag.split(argv)
    options = cli.parse_options(argv, prog, __doc__.splitlines()[0], ReplayOptions, DryRunFlag)
    ropts = options.view_as(ReplayOptions)
    if not ropts.pipeline:
        raise SystemExit(f"{prog}: error: --pipeline is required ({', '.join(sorted(JOBS))})")
    try:
        fix = load_fix(ropts.fix, ropts.fix_spec)
    except (ValueError, OSError) as exc:
        raise SystemExit(f"{prog}: error: {exc}") from None
    if options.view_as(StandardOptions).streaming:
        raise SystemExit(f"{prog}: error: a replay is a bounded run (drop --streaming)")
    cli.check_runner(options)
    opts = options.view_as(IheardOptions)
    conns = resolve_connections(options)
    run_id = ropts.run_id or new_run_id()
    if not is_dry_run:
        apply_s3_options(options, conns)
        common.prepare_sinks(conns)
    db = open_tables(conns)
    try:
        started = time.monotonic()
        rows = select_dead_letters(
            db, ropts.pipeline, _csv(ropts.stage), _csv(ropts.error_class),
            ropts.message_pattern, ropts.since, ropts.until,
            ropts.include_replayed_failures, ropts.limit)
        selected_s = time.monotonic() - started
        prepared = prepare(rows, fix, run_id)
        if is_dry_run:
            report = dry_run(prepared, ropts.pipeline, conns, opts, ropts.examples)
            print(format_dry_run(report, ropts.pipeline, fix_fingerprint(fix), len(prepared),
                                 time.monotonic() - started), flush=True)
            return report
        summary = replay(prepared, ropts.pipeline, options, conns, opts, run_id, db, runner,
                         ropts.staging_dir)
    finally:
        db.close()
    summary["run_id"] = run_id
    summary["seconds"] = round(time.monotonic() - started, 3)
    summary.setdefault("seconds_by_phase", {})["selection"] = round(selected_s, 3)
    print(f"[replay] {ropts.pipeline} run {run_id}: {summary['selected']} dead letters selected, "
          f"{summary['passed']} now stored, {summary['failed_again']} failed again "
          f"(failed_events.replay_run_id = '{run_id}'), {summary['not_replayable']} not "
          f"replayable (stored payload is not the original), {summary['pending']} left pending "
          f"(the fix raised); aggregates recomputed: {summary['aggregates'] or 'none'}; "
          f"{summary['seconds']} s ({summary['seconds_by_phase']})", flush=True)
    return summary


def _csv(value) -> typing.Optional[typing.List[str]]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


if __name__ == "__main__":
    cli.main(run)
