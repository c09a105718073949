"""Running a pipeline module and its command line, the same for every pipeline.

Each runnable module (``beam_pipelines.frontend``, ``beam_pipelines.text_agent``,
``beam_pipelines.restate_costs``) has the same short ``run``::

    options = cli.parse_options(argv, prog, description)   # --help, --profile
    return cli.run_job(options, PIPELINE, source, build_pipeline)

and ``run_job`` does the rest: runner check, connections (the only place the
environment is read, ``beam_pipelines.options.resolve_connections``), Spaces
credentials, table creation, ``source`` -> ``build`` (chain, shared sinks,
dead letters), run, wait, summary. ``beam_pipelines.common`` holds the
shared sources and sinks the pipelines wire.
"""
from __future__ import annotations

import argparse
import logging
import re
import typing

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, S3Options, StandardOptions

from beam_pipelines import common, progress, reprocess
from beam_pipelines.generate import write_lines
from beam_pipelines.options import (
    Connections,
    IheardOptions,
    apply_s3_options,
    batched_hot_path,
    resolve_connections,
)
from monitoring.logs import configure_logging
from runners.profiles import check_job_server_jar, expand_argv

__all__ = [
    "run_job",
    "build_job",
    "generate_if_asked",
    "input_or_sample",
    "parse_options",
    "check_runner",
    "exit_with_help_if_asked",
    "configure_cli_logging",
    "summary",
    "counter_values",
]

_LOG = logging.getLogger(__name__)


def counter_values(result, namespace: str) -> typing.Dict[str, int]:
    """Committed (else attempted) counter values of one namespace, by name."""
    values: typing.Dict[str, int] = {}
    try:
        counters = result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]
    except Exception as exc:  # some runners cannot report metrics
        _LOG.warning("metrics unavailable: %s", exc)
        return values
    for counter in counters:
        value = counter.committed if counter.committed is not None else counter.attempted
        values[counter.key.metric.name] = values.get(counter.key.metric.name, 0) + (value or 0)
    return values


def summary(result, conns: Connections, pipeline: str) -> str:
    """A short human summary of one run: counts and where the outputs are."""
    c = counter_values(result, pipeline)
    lines = [
        f"[{pipeline}] state={result.state}",
        f"  events in: {c.get('received', 0)}  valid: {c.get('valid', 0)}  "
        f"failed (dead letters): {c.get('dead_letters', 0)}  "
        f"duplicates dropped: {c.get('duplicates_dropped', 0)}  "
        f"session panes: {c.get('session_panes', 0)}",
    ]
    pii = {k: v for k, v in sorted(c.items()) if k.startswith("pii_")}
    if pii:
        lines.append("  PII redacted: " + ", ".join(f"{k[4:]}={v}" for k, v in pii.items()))
    if conns.postgres_dsn:
        lines.append("  tables: PostgreSQL (" + _redact_dsn(conns.postgres_dsn) + ")")
    else:
        lines.append(f"  tables: DuckDB file {conns.embedded_db}")
    if conns.archive_input is not None:
        lines.append(f"  read the archive: {conns.archive_input.root} (a re-run; no live state)")
    lines.append(f"  archive: {conns.archive_path or 'not written'}")
    if conns.snowflake is not None:
        sf = conns.snowflake
        lines.append(f"  warehouse: Snowflake ({sf.account}, {sf.database}.{sf.schema})")
    if conns.redis_url:
        lines.append("  live state: Redis")
    return "\n".join(lines)


def _redact_dsn(dsn: str) -> str:
    dsn = re.sub(r"password=\S+", "password=***", dsn)
    return re.sub(r"://([^:/@]*):[^@]*@", r"://\1:***@", dsn)


def check_runner(options) -> None:
    """Refuses a combination that would hang or fail obscurely.

    Beam's DirectRunner hands streaming pipelines to the Prism runner, which
    downloads a binary from the internet at run time: offline that fails, and
    on a network that drops packets it hangs. (Beam 2.70 tries Prism first for
    batch pipelines too and falls back to the FnApiRunner when the download
    fails; the ``direct`` profile names the FnApiRunner to avoid the attempt.) A streaming job
    belongs on Flink (``--profile=flink-local``); a bounded Kafka backfill
    runs fine on the DirectRunner without ``--streaming``.
    """
    std = options.view_as(StandardOptions)
    runner = std.runner
    name = runner if isinstance(runner, str) or runner is None else type(runner).__name__
    if std.streaming and name in (None, "DirectRunner", "SwitchingDirectRunner"):
        raise ValueError(
            "--streaming on the DirectRunner would start Beam's Prism runner, which "
            "downloads a binary at run time; run streaming jobs on Flink "
            "(--profile=flink-local) or drop --streaming for a bounded run "
            "(--kafka_mode=bounded)."
        )


def run_job(options: PipelineOptions, pipeline_name: str, source, build, runner=None,
            batches: bool = False, sample: typing.Optional[str] = None,
            sample_lines: typing.Optional[typing.Callable[[], typing.Sequence[str]]] = None):
    """Runs one pipeline module's job, the same way for every pipeline.

    Refuses a runner combination that cannot work (``check_runner``),
    resolves connections (flags, then the environment) and sets the Spaces
    credentials on Beam's S3 options, creates the tables, then builds::

        records = source(pipeline, conns, opts, streaming)
        build(pipeline, records, conns, opts, streaming)   # chain, sinks, dead letters

    ``batches``: the pipeline has a batched hot path; when this run takes it
    (``batched_hot_path``: streaming Kafka, ``--hot_path=batched``), both are
    called with ``batched=True`` (transforms/batches.py).

    It runs, waits (showing the progress of a bounded file or archive
    source, ``beam_pipelines.progress``), and prints ``summary``. ``options`` are expanded already
    (``parse_options``); ``runner`` (a runner instance) overrides ``--runner``
    (tests name theirs). ``sample`` (and ``sample_lines``): the file read
    when neither ``--input`` nor ``--kafka_bootstrap`` is given
    (``input_or_sample``). Returns the PipelineResult."""
    if sample is not None:
        input_or_sample(options, sample, sample_lines)
    check_runner(options)
    pipeline, conns = build_job(options, source, build, runner=runner, batches=batches)
    opts = options.view_as(IheardOptions)
    # An archive re-run: its aggregates are recomputed from the tables after
    # it (beam_pipelines/reprocess.py); the keys its range holds now first.
    recompute = reprocess.AggregateRecompute.for_run(pipeline_name, conns, opts)
    if recompute is not None:
        recompute.before()
    # The source registered what it will read (files, the archive): show how
    # far it is while the job runs, and a summary (beam_pipelines.progress).
    with progress.report(pipeline_name, opts.progress_key, opts.progress,
                         opts.progress_interval_seconds) as reporter:
        result = pipeline.run()
        if reporter is not None:
            reporter.attach(result)
        result.wait_until_finish()
    print(summary(result, conns, pipeline_name), flush=True)
    if recompute is not None:
        print(recompute.after(), flush=True)
    return result


def build_job(options: PipelineOptions, source, build, runner=None, batches: bool = False,
              prepare: bool = True):
    """The graph ``run_job`` runs, without running it: (pipeline, connections).

    ``prepare=False`` skips creating the tables (nothing is contacted), for
    ``runners.state_ids``, which reads the stateful steps off the graph."""
    streaming = bool(options.view_as(StandardOptions).streaming)
    opts = options.view_as(IheardOptions)
    conns = resolve_connections(options)
    apply_s3_options(options, conns)
    if prepare:
        common.prepare_sinks(conns)
    if not opts.progress_key:
        opts.progress_key = progress.new_key()
    pipeline = beam.Pipeline(runner=runner, options=options)
    extra = {"batched": True} if batches and batched_hot_path(opts, streaming) else {}
    records = source(pipeline, conns, opts, streaming, **extra)
    build(pipeline, records, conns, opts, streaming, **extra)
    return pipeline, conns


def main(run: typing.Callable[[], typing.Any]) -> None:
    """A pipeline module run as a script: command-line logging, then ``run()``."""
    configure_cli_logging()
    run()


def generate_if_asked(argv: typing.Sequence[str], what: str,
                      sample_lines: typing.Callable[[int, int], typing.Sequence[str]],
                      default_output: str, default_seed: int) -> typing.Optional[typing.List[str]]:
    """``--generate N [--output FILE] [--seed S]``: writes ``sample_lines(N, S)``
    to FILE, prints one line and returns None (the caller exits). Without
    ``--generate``: the other arguments, for ``parse_options``."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--generate", type=int, help=f"Write this many sample {what} and exit.")
    pre.add_argument("--output", default=default_output)
    pre.add_argument("--seed", type=int, default=default_seed)
    known, rest = pre.parse_known_args(list(argv))
    if not known.generate:
        return rest
    n = write_lines(sample_lines(known.generate, known.seed), known.output)
    print(f"wrote {n} lines to {known.output}", flush=True)
    return None


def input_or_sample(options: PipelineOptions, sample_path: str,
                    sample_lines: typing.Optional[typing.Callable[[], typing.Sequence[str]]] = None
                    ) -> None:
    """No ``--input`` and no ``--kafka_bootstrap``: the job reads ``sample_path``
    (first written from ``sample_lines()`` when given), so a bare
    ``python -m beam_pipelines.<job>`` runs on sample data."""
    opts = options.view_as(IheardOptions)
    if opts.input or opts.kafka_bootstrap:
        return
    if sample_lines is not None:
        write_lines(sample_lines(), sample_path)
    _LOG.info("no --input or --kafka_bootstrap: using the sample %s", sample_path)
    opts.input = sample_path


def parse_options(argv: typing.Sequence[str], prog: str, description: str,
                  *option_classes) -> PipelineOptions:
    """``--help`` (prints and exits), then ``--profile`` (or profile-less
    ``--runner=FlinkRunner``) expansion, then Beam's parsing: the command line
    of every pipeline module. A command line that cannot run (unknown profile,
    missing job-server jar) exits with one error line, as argparse does."""
    argv = list(argv)
    exit_with_help_if_asked(argv, prog, description, *option_classes)
    try:
        expanded = expand_argv(argv)
        check_job_server_jar(expanded)
    except ValueError as exc:  # a bad --profile, a missing Flink job-server jar
        raise SystemExit(f"{prog}: error: {exc}") from None
    return PipelineOptions(expanded)


def exit_with_help_if_asked(argv, prog: str, description: str, *option_classes) -> None:
    """``--help``/``-h``: prints the project's options (and the Beam ones most
    used with them), then exits. Beam's own parser would list only ``-h``."""
    if "--help" not in argv and "-h" not in argv:
        return
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for options_class in (IheardOptions, *option_classes, StandardOptions, S3Options):
        options_class._add_argparse_args(parser)
    parser.print_help()
    raise SystemExit(0)


def configure_cli_logging() -> None:
    """INFO for the project's own messages; Beam's per-step INFO chatter (type
    hint conversions, state cache sizes ...) only from WARNING up. One JSON
    object per line, or plain text on a terminal or with
    ``IHEARD_LOG_FORMAT=text`` (monitoring/logs.py)."""
    configure_logging()
