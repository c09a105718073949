"""Re-price archived agent turns under another price-book version (batch).

When a provider changes a price retroactively, or the price book had an
error, this job reads the Avro archive the text-agent pipeline wrote
(``<archive_path>/source=text_agent/date=YYYY-MM-DD/hour=HH/*.avro``), prices
every turn of a time range under ``--price_book_version`` and writes one row
per turn with the original and the restated cost to the
``agent_cost_restatements`` table (PostgreSQL, or the embedded DuckDB file)
and, with ``--output_file``, to a JSON-lines file. ``agent_turns`` and
``agent_billing_hourly`` are never touched: the restatement sits beside them.

    python -m beam_pipelines.restate_costs --archive_path=output/archive \\
        --from=2025-03-01 --to=2025-03-31 --price_book_version=2025.06
    python -m beam_pipelines.restate_costs --archive_path=s3://iheardai-archive/archive \\
        --s3_endpoint_url=http://127.0.0.1:19000 --postgres_dsn="host=..." \\
        --from=2025-03-01T00:00:00Z --to=2025-03-02T00:00:00Z \\
        --price_book_version=2025.06 --price_book=new_prices.yaml --output_file=restated.jsonl

Range: ``--from`` is inclusive, ``--to`` exclusive; a date without a time
means midnight UTC, and a date-only ``--to`` includes that whole day. Only
the ``date=`` folders of the range are listed (partition pruning).

Idempotent: the table's key is (session_id, turn_id, price_book_version), so
re-running the same restatement upserts the same rows; a turn archived more
than once (a late pane, a re-run) is restated once.

    archive files of the range (one listing per day)          read_archived_turns
      -> ReadArchivedTurns (iheard_io.archive_read.ReadFromArchive,  (the source)
                            KeepRange: timestamp_ms in [from, to))
      -> OneRecordPerTurn   GroupByKey (session_id, turn_id),    RestateTurns
                            smallest event_id                    (transforms.text_agent_restate)
      -> Reprice        pure ``restate_turn`` under the named version
      -> agent_cost_restatements  (+ --output_file JSON lines)   build_pipeline
    dead letters (rows the table refused) -> failed_events

It runs like the other pipelines (``beam_pipelines.cli.run_job``): the runner
check, ``--profile``, connections from flags or the environment, and the
Spaces credentials for an ``s3://`` archive.
"""
from __future__ import annotations

import datetime as dt
import logging
import sys
import typing

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipelines import cli, common
from beam_pipelines.options import Connections, IheardOptions
from iheard_io import read_progress
from iheard_io.archive_read import ReadFromArchive, list_archive, parse_bound
from transforms.text_agent import PIPELINE as TEXT_AGENT_PIPELINE
from transforms.text_agent_pricing import load_price_book
from transforms.text_agent_restate import RestateTurns, json_line, sum_costs

__all__ = ["read_archived_turns", "build_pipeline", "run",
           "RestateOptions"]

_LOG = logging.getLogger(__name__)

PIPELINE = "restate_costs"
ARCHIVE_SOURCE = TEXT_AGENT_PIPELINE  # the archive's source= folder


class RestateOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        # Not argparse-required: Beam parses every registered options class
        # for every pipeline in the process, so a required flag here would
        # break the other pipelines' option parsing once this module is
        # imported. run() checks them instead.
        # --from / --to are IheardOptions' (shared with the archive re-runs).
        parser.add_argument("--price_book_version",
                            help="Price-book version to restate under (e.g. 2025.06).")
        parser.add_argument("--price_book",
                            help="Price-book YAML (default: the bundled transforms/data/price_book.yaml).")
        # Not "--output": argparse would read it as an abbreviation of
        # IheardOptions' --output_dir.
        parser.add_argument("--output_file",
                            help="Also write the restatement rows as JSON lines here.")
        parser.add_argument("--only_changed", action="store_true",
                            help="Write only turns whose cost changes.")


def restatement_range(options) -> typing.Tuple[dt.datetime, dt.datetime]:
    """[start, end) from ``--from`` / ``--to``; refuses missing or empty ranges."""
    opts, ropts = options.view_as(IheardOptions), options.view_as(RestateOptions)
    missing = [flag for flag, value in (("--from", opts.from_), ("--to", opts.to),
                                        ("--price_book_version", ropts.price_book_version))
               if not value]
    if missing:
        raise SystemExit(f"restate_costs: missing required option(s): {', '.join(missing)}")
    start, end = parse_bound(opts.from_, False), parse_bound(opts.to, True)
    if end <= start:
        raise ValueError(f"--to ({end.isoformat()}) must be after --from ({start.isoformat()})")
    return start, end


def read_archived_turns(pipeline, conns: Connections, opts: IheardOptions,
                        streaming: bool = False) -> beam.PCollection:
    """The source: archived turn records of ``--from``/``--to`` (only the
    ``date=``/``hour=`` folders of the range are listed:
    ``iheard_io.archive_read``)."""
    start, end = restatement_range(opts)
    files = list_archive(conns.archive_path, ARCHIVE_SOURCE, start, end)
    if opts.progress_key:
        read_progress.expect(opts.progress_key, sum(f.size_in_bytes for f in files))
    records = pipeline | "ReadArchivedTurns" >> ReadFromArchive(
        files, start, end, progress_key=opts.progress_key)
    return common.count(records, PIPELINE, "received", "CountArchivedTurns")


def build_pipeline(pipeline, records: beam.PCollection, conns: Connections,
                   opts: IheardOptions, streaming: bool = False) -> beam.PCollection:
    """Reprices ``records`` (archived turns) and writes the rows to
    ``agent_cost_restatements`` (and ``--output_file``); returns the rows."""
    ropts = opts.view_as(RestateOptions)
    restated_at = dt.datetime.now(dt.timezone.utc).isoformat()
    rows = common.count(
        records | "RestateTurns" >> RestateTurns(
            ropts.price_book_version, ropts.price_book, restated_at, ropts.only_changed),
        PIPELINE, "valid", "CountRestatedTurns")
    failed = common.write_rows(rows, "agent_cost_restatements", conns, PIPELINE)
    common.write_dead_letters([failed], conns, PIPELINE)
    if ropts.output_file:
        _ = (rows
             | "ToJsonLines" >> beam.Map(json_line)
             | "WriteJsonLines" >> beam.io.WriteToText(
                 ropts.output_file, shard_name_template="", num_shards=1))
    version = ropts.price_book_version
    _ = (
        rows
        | "Amounts" >> beam.Map(lambda r: (1, r["original_cost_usd"] or 0.0,
                                           r["restated_cost_usd"] or 0.0))
        | "Totals" >> beam.CombineGlobally(sum_costs)
        | "PrintTotals" >> beam.Map(lambda t: print(
            f"[restate_costs] turns={t[0]} original_usd={t[1]:.6f} "
            f"restated_usd={t[2]:.6f} difference_usd={t[2] - t[1]:+.6f} "
            f"version={version}", flush=True))
    )
    return rows


def run(argv: typing.Optional[typing.List[str]] = None, runner=None):
    """Parses ``argv``, runs the restatement, prints a summary; returns the
    result. ``runner`` (a runner instance) overrides ``--runner`` (tests)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    options = cli.parse_options(argv, "python -m beam_pipelines.restate_costs",
                                __doc__.splitlines()[0], RestateOptions)
    ropts = options.view_as(RestateOptions)
    restatement_range(options)  # fail fast, before any connection
    load_price_book(ropts.price_book).version(ropts.price_book_version)  # ... or price book
    return cli.run_job(options, PIPELINE, read_archived_turns, build_pipeline, runner=runner)


if __name__ == "__main__":
    cli.main(run)
