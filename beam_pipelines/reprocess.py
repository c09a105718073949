"""Re-running the archive through the current code (frontend, text agent).

When the logic changed (a new enrichment, a scoring fix), a range of the
archive is sent through the current chain into the tables::

    python -m beam_pipelines.frontend --input=output/archive/source=frontend \\
        --from=2026-01-01 --to=2026-01-01
    python -m beam_pipelines.text_agent \\
        --input=s3://iheardai-archive/archive/source=text_agent/date=2026-01-01 \\
        --postgres_dsn=... --s3_endpoint_url=...

``--input`` names an archive folder when it holds a ``source=<name>`` folder
(``iheard_io.archive_read.parse_archive_input``): the root plus
``source=``, optionally ``date=`` and ``hour=``; ``--from``/``--to``
narrow it further. Only the ``date=``/``hour=`` folders of the range are
listed, then the records whose time is in it are kept.

What a re-run does, in order::

    keys_before = touched_in_range(...)       the aggregates the range's stored
                                              events belong to now
    archive range --ReadFromArchive--> SourceRecords (transforms/archived.py)
      -> the job's chain (parse with ArchiveDecoder, redact counting the
         tokens already there, enrich, dedupe)
      -> per-event rows (frontend_analytics | agent_turns, + Snowflake),
         dead letters
    recompute_aggregates(keys_before | touched_in_range(...))
                                              sessions, conversations, billing
                                              hours rebuilt from ALL their
                                              stored events (beam_pipelines.aggregates)

What it does not write:

* the archive it reads: by default no archive at all; ``--archive_path``
  given explicitly writes a *separate* archive there (a root that is the
  input's own root is refused), so a re-run never overlaps or doubles the
  objects it reads;
* aggregates from its own events: a day's re-run would cut the sessions and
  conversations that cross midnight and replace whole hours with parts; they
  are recomputed from the tables instead (above), so sessions that cross the
  range's edges stay whole;
* Redis: the live state (today's KPIs and costs, open sessions) is not a
  re-run's business; ``--redis_url`` and ``REDIS_HOST`` are ignored.

The keys touched are read from the per-event table (events whose time is in
the range) before and after the run: after, for the events it wrote; before,
for a turn whose tenant or model the new code changed (its old billing hour
loses it). An open range (a whole ``source=`` folder) recomputes every
aggregate of the table.
"""
from __future__ import annotations

import datetime as dt
import logging
import typing

import apache_beam as beam

from beam_pipelines.aggregates import open_tables, recompute_aggregates
from beam_pipelines.options import Connections, IheardOptions
from iheard_io import read_progress
from iheard_io.archive_read import ReadFromArchive, list_archive, parse_bound
from schemas.tables import to_utc_datetime
from transforms.archived import archived_source_record, frontend_payload, turn_payload
from transforms.recompute import AGGREGATE_TABLES, TouchedKeys, touched_keys

__all__ = [
    "RERUN_PIPELINES",
    "rerun_range",
    "read_archive",
    "touched_in_range",
    "AggregateRecompute",
    "payload_function",
]

_LOG = logging.getLogger(__name__)

# The jobs that can re-run their archive, and how an archived record becomes
# their payload again.
RERUN_PIPELINES: typing.Dict[str, typing.Callable] = {
    "frontend": frontend_payload,
    "text_agent": turn_payload,
}
# The per-event table whose rows say which aggregates a range touches.
_EVENT_TABLES = {
    "frontend": ("frontend_analytics", "session_id"),
    "text_agent": ("agent_turns", 'session_id, tenant_id, model, "timestamp"'),
}


def payload_function(pipeline: str) -> typing.Callable:
    """``frontend_payload`` / ``turn_payload``; refuses the other jobs."""
    if pipeline not in RERUN_PIPELINES:
        raise ValueError(f"{pipeline} cannot re-run from the archive (only "
                         f"{', '.join(sorted(RERUN_PIPELINES))})")
    return RERUN_PIPELINES[pipeline]


def rerun_range(conns: Connections, opts: IheardOptions
                ) -> typing.Tuple[typing.Optional[dt.datetime], typing.Optional[dt.datetime]]:
    """[start, end) of a re-run (None: open): the partitions ``--input``
    names, narrowed by ``--from``/``--to``. Refuses an empty range."""
    start, end = conns.archive_input.range()
    if opts.from_:
        bound = parse_bound(opts.from_, False)
        start = bound if start is None else max(start, bound)
    if opts.to:
        bound = parse_bound(opts.to, True)
        end = bound if end is None else min(end, bound)
    if start is not None and end is not None and end <= start:
        raise ValueError(f"empty re-run range: {start.isoformat()} .. {end.isoformat()} "
                         "(--input's date=/hour= folders and --from/--to do not overlap)")
    return start, end


def read_archive(pipeline: beam.Pipeline, conns: Connections, opts: IheardOptions,
                 job: str) -> beam.PCollection:
    """The source of a re-run: ``SourceRecord``s of the archived records of
    the range (``archived_source_record``), counted for the progress line."""
    payload_function(job)
    archive = conns.archive_input
    source = archive.source or job
    if source != job:
        raise ValueError(f"--input names the archive of {source!r}; the {job} job re-runs "
                         f"source={job}")
    start, end = rerun_range(conns, opts)
    files = list_archive(archive.root, source, start, end)
    total = sum(f.size_in_bytes for f in files)
    _LOG.info("re-running %d archive objects (%d bytes) of source=%s from %s", len(files), total,
              source, archive.root)
    if not files:
        _LOG.warning("no archive objects of source=%s under %s in the range", source, archive.root)
    if opts.progress_key:
        read_progress.expect(opts.progress_key, total)
    return (
        pipeline
        | "ReadArchive" >> ReadFromArchive(files, start, end, progress_key=opts.progress_key)
        | "ToSourceRecords" >> beam.Map(archived_source_record)
    )


def touched_in_range(pipeline: str, conns: Connections,
                     start: typing.Optional[dt.datetime], end: typing.Optional[dt.datetime],
                     tables=None) -> TouchedKeys:
    """The aggregate keys of the stored events whose time is in [start, end)."""
    table, columns = _EVENT_TABLES[pipeline]
    where, params = [], []
    if start is not None:
        where.append('"timestamp" >= %s')
        params.append(to_utc_datetime(start))
    if end is not None:
        where.append('"timestamp" < %s')
        params.append(to_utc_datetime(end))
    sql = f"SELECT DISTINCT {columns} FROM {table}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    own = tables is None
    db = open_tables(conns) if own else tables
    try:
        rows = db.select(sql, params)
    finally:
        if own:
            db.close()
    return touched_keys(pipeline, rows)


class AggregateRecompute:
    """The aggregates of a re-run: the keys its range touches before the run
    (``before``), then, after it, those keys plus the ones it wrote,
    recomputed from all their stored events (``after``)."""

    def __init__(self, pipeline: str, conns: Connections, opts: IheardOptions):
        self._pipeline = pipeline
        self._conns = conns
        self._gap_seconds = opts.session_gap_seconds
        self._start, self._end = rerun_range(conns, opts)
        self._before = TouchedKeys()

    @classmethod
    def for_run(cls, pipeline: str, conns: Connections, opts: IheardOptions
                ) -> typing.Optional["AggregateRecompute"]:
        """One for an archive re-run of a job with aggregates, else None."""
        if conns.archive_input is None or not AGGREGATE_TABLES.get(pipeline):
            return None
        return cls(pipeline, conns, opts)

    def before(self) -> None:
        self._before = touched_in_range(self._pipeline, self._conns, self._start, self._end)

    def after(self) -> str:
        """Recomputes; returns a summary line."""
        touched = self._before | touched_in_range(
            self._pipeline, self._conns, self._start, self._end)
        written = recompute_aggregates(self._pipeline, touched, self._conns,
                                       gap_seconds=self._gap_seconds)
        parts = ", ".join(f"{table}={n}" for table, n in sorted(written.items()))
        keys = f"{len(touched.sessions)} sessions"
        if "agent_billing_hourly" in written:
            keys += f", {len(touched.billing_hours)} billing hours"
        return (f"[{self._pipeline}] aggregates recomputed from all their events: {keys} "
                f"-> rows {parts}")
