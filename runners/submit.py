"""Submit, stop, upgrade and inspect the project's pipelines on a remote Flink cluster.

This is the CI / Kubernetes entry point. It talks to Flink only through its
REST API and submits through an *uber jar*: the Beam job-server jar (built by
``flink/uberjar/build.sh``) with the pipeline proto, its options and staged
artifacts added, uploaded to ``/jars/upload`` and started with
``/jars/<id>/run``. No Java process runs on the submitting host.

Usage::

    python -m runners.submit submit --flink_master=http://flink-rest:8081 \\
        --pipeline=beam_pipelines.frontend --job_name=iheard-frontend \\
        [--environment_type=EXTERNAL --environment_config=localhost:50000] \\
        [--from_savepoint=s3://.../savepoint-x [--allow_non_restored_state]] \\
        [--wait_for=running|finished|none] [--timeout_s=600] \\
        -- <pipeline arguments, e.g. --streaming --kafka_bootstrap=...>

    python -m runners.submit stop    --flink_master=URL (--job_id=ID | --job_name=NAME) [--savepoint_dir=DIR] [--drain]
    python -m runners.submit upgrade --flink_master=URL --job_name=NAME --pipeline=... -- <args>
    python -m runners.submit cancel  --flink_master=URL --job_id=ID
    python -m runners.submit status  --flink_master=URL --job_id=ID
    python -m runners.submit list    --flink_master=URL
    python -m runners.submit rewind  --job=frontend|text_agent --kafka_group_id=G --topic=T \\
        (--to=ISO | --to_open_windows [--postgres_dsn=DSN] [--lookback_hours=48]) \\
        [--kafka_bootstrap=HOST:PORT] [--job_name=NAME [--flink_master=URL]] [--dry_run]

``submit`` prints one JSON line (``job_id``, ``state``) on stdout and exits 0
once the job is RUNNING (every task running and no failure recorded for
``--settle_s`` seconds) or FINISHED; with ``--wait_for=finished`` only a
FINISHED job counts. It exits 1 with the reason when the pipeline cannot be
built or uploaded, when Flink records a failure (the root exception from
``/jobs/<id>/exceptions`` is printed; a streaming job Flink keeps restarting
counts as failed), or when ``--timeout_s`` passes.

``stop`` is stop-with-savepoint (``POST /jobs/<id>/stop``); once the job has
ended it prints the savepoint path (``null`` when ``--job_name`` names no
running job, so a first deploy can run the same steps). ``upgrade`` finds the
running job called ``--job_name``, stops it with a savepoint and submits from
that savepoint; with no such job it is a plain ``submit`` (the Kubernetes Jobs
in ``flink/k8s/jobs`` run it). New code needs new worker images in between, so
the deploy workflow runs ``stop``, rolls the cluster, then ``submit
--from_savepoint`` (``flink/k8s/README.md``).

Where the Python code runs (``--environment_type``):

- ``EXTERNAL`` (default, ``localhost:50000``): a Beam worker pool
  (``python -m apache_beam.runners.worker.worker_pool_main``) next to each
  TaskManager, e.g. the sidecar in ``flink/k8s``. It does not install staged
  artifacts: the project must be installed in the worker image.
- ``LOOPBACK``: this process hosts the workers, so ``submit`` keeps running
  until the job ends (local use only: TaskManagers must reach this host).

``rewind`` moves a stopped job's consumer group back in event time
(``runners.rewind``: the README's procedure when the state cannot be carried
over); it prints one line per partition, ``partition: old -> new``, then a
JSON line.

Modules: ``runners.flink_rest`` (the REST client and the reading of Flink's
answers), ``runners.uberjar`` (the Beam runner that uploads and runs the jar,
with savepoint restore; the job-server jar it needs), and this one (the
actions above and their command line).
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import re
import secrets
import sys
import threading
import time
import typing

from iheard_io import settings
from runners import rewind
from runners.flink_rest import (
    REST_TIMEOUT_S,
    UPLOAD_TIMEOUT_S,
    FlinkRestClient,
    JobProgress,
    SubmitError,
    blocking_failure,
    check_job_id,
    failure_texts,
    root_exception,
    running_jobs_named,
    savepoint_outcome,
)
from runners.uberjar import (
    FLINK_MINOR_VERSION,
    JAR_ENV_VAR,
    NEXT_RUN,
    flink_version_ok,
    pipeline_argv,
    resolve_jar,
)

__all__ = [
    "SubmitError",
    "main",
    "split_argv",
    "parse_pipeline_ref",
    "parse_args",
    "submit",
    "stop_with_savepoint",
    "wait_for_job",
    "explain_restore_failure",
    "run_rewind",
]

_LOG = logging.getLogger("runners.submit")

DEFAULT_WORKER_POOL = "localhost:50000"
POLL_INTERVAL_S = 1.0
UPGRADE_PROCEDURE = (
    "The state cannot be carried over: stop the running job, move its consumer group back to the start "
    "of the oldest open window (runners.submit rewind --to_open_windows) and start this version without "
    "--from_savepoint on that group "
    '(README, "Upgrading a running job"). --allow_non_restored_state would start it with that '
    "state dropped (de-duplication ids, open sessions), which corrupts the rows that span the upgrade."
)
_UNMAPPED_STATE = re.compile(
    r"Cannot map checkpoint/savepoint state for operator ([0-9a-f]{32}) to the new program")
_UNKNOWN_TIMER = re.compile(r"No receiver found for timer (\S+) (\S+)")
_INCOMPATIBLE_STATE = (
    "InvalidClassException",
    "StateMigrationException",
    "incompatible",
    "Incompatible",
)


def _known_operator_labels() -> typing.Dict[str, str]:
    """operator id -> "label (job)" from flink/state_ids.json, to name a step in an error."""
    try:
        from runners import state_ids

        return {
            step["flink_operator_id"]: f"{step['label']} of the {job} job"
            for job, steps in state_ids.recorded()["jobs"].items()
            for step in steps
        }
    except (OSError, ValueError, KeyError):
        return {}


def explain_restore_failure(texts: typing.Sequence[str], savepoint: str) -> typing.Optional[str]:
    """One clear reason when Flink's failure (``texts``: its stack traces) is a
    savepoint that does not fit the new job; None for any other failure."""
    text = "\n".join(texts)
    unmapped = _UNMAPPED_STATE.search(text)
    if unmapped:
        operator = unmapped.group(1)
        label = _known_operator_labels().get(operator)
        line_start = text.rfind("\n", 0, unmapped.start()) + 1
        line_end = text.find("\n", unmapped.end())
        flink_line = text[line_start:line_end if line_end >= 0 else None].strip()
        return (
            f"savepoint {savepoint} holds state for operator {operator}"
            + (f" ({label})" if label else "")
            + ", which the new job does not have: a stateful step, or the step feeding a stateful DoFn, "
            "was renamed or removed, or the savepoint is another job's (see flink/state_ids.json). "
            + UPGRADE_PROCEDURE + f" (Flink: {flink_line[:400]})"
        )
    timer = _UNKNOWN_TIMER.search(text)
    if timer:
        return (
            f"savepoint {savepoint} holds timers ({timer.group(2)}) of transform {timer.group(1)}, which "
            "the new job does not have under that id: the Python SDK numbers transforms in the order they "
            "are applied, so a step added or removed before a stateful DoFn renames its timers (see "
            "flink/state_ids.json, beam_transform_id). " + UPGRADE_PROCEDURE
        )
    if any(marker in text for marker in _INCOMPATIBLE_STATE) and (
        "restore" in text.lower() or "savepoint" in text.lower() or "state" in text.lower()
    ):
        first = next((line.strip() for line in text.splitlines()
                      if any(marker in line for marker in _INCOMPATIBLE_STATE)), "")
        return (
            f"the state in savepoint {savepoint} cannot be read by the new job: it was written with "
            "another Beam version or another coder/state layout of a stateful step "
            f"({first[:300]}). " + UPGRADE_PROCEDURE
        )
    return None


def split_argv(argv: typing.Sequence[str]) -> typing.Tuple[typing.List[str], typing.List[str]]:
    """Splits ``argv`` at the first ``--``: (this tool's arguments, the pipeline's)."""
    argv = list(argv)
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1:]
    return argv, []


def new_job_id() -> str:
    """A Flink job id (32 hex digits), chosen before submission so it can be polled at once."""
    return secrets.token_hex(16)


def parse_pipeline_ref(ref: str) -> typing.Tuple[str, str]:
    """``pkg.module[:function]`` -> (module, function); the function defaults to ``run``."""
    module, _, function = ref.partition(":")
    if not module or not all(part.isidentifier() for part in module.split(".")):
        raise ValueError(f"--pipeline must be a module path like beam_pipelines.frontend, got {ref!r}")
    function = function or "run"
    if not function.isidentifier():
        raise ValueError(f"bad function name in --pipeline={ref!r}")
    return module, function


class _PipelineThread(threading.Thread):
    """Runs ``module.function(argv)``; the pipeline's own wait may outlive us (daemon)."""

    def __init__(self, function, argv):
        super().__init__(name="pipeline", daemon=True)
        self._function = function
        self._argv = argv
        self.error: typing.Optional[BaseException] = None

    def run(self):
        try:
            self._function(self._argv)
        except BaseException as exc:  # reported by the waiting loop
            self.error = exc


def wait_for_job(
    client: FlinkRestClient,
    job_id: str,
    wait_for: str,
    timeout_s: float,
    settle_s: float,
    pipeline: typing.Optional[_PipelineThread] = None,
) -> JobProgress:
    """Polls ``job_id`` until it reaches ``wait_for`` ('running' or 'finished').

    'running' is reached when the job is FINISHED, or RUNNING with every task
    running for ``settle_s`` seconds. Raises SubmitError when the job fails or
    Flink records a failure other than missing slots (a job Flink restarts
    because of its code does not count as running), when the pipeline thread
    fails before Flink knows the job, or on timeout.
    """
    deadline = time.monotonic() + timeout_s
    running_since: typing.Optional[float] = None
    progress: typing.Optional[JobProgress] = None
    last_transient: typing.Optional[str] = None
    while True:
        job = client.job(job_id)
        if job is None:
            if pipeline is not None and not pipeline.is_alive():
                reason = pipeline.error or "the pipeline function returned without submitting a job"
                raise SubmitError(f"submission failed before Flink accepted job {job_id}: {reason}")
        else:
            progress = JobProgress.from_job(job)
            if progress.state == "FINISHED":
                return progress
            exceptions = client.exceptions(job_id)
            failure = blocking_failure(exceptions)
            if progress.failed or failure:
                failure = failure or root_exception(exceptions)
                raise SubmitError(
                    f"job {job_id} is {progress.state}"
                    + (f"; root exception:\n{failure}" if failure else "")
                )
            last_transient = root_exception(exceptions)
            if wait_for == "running" and progress.all_running:
                running_since = running_since or time.monotonic()
                if time.monotonic() - running_since >= settle_s:
                    return progress
            else:
                running_since = None
        if time.monotonic() > deadline:
            state = progress.state if progress else "not yet known to Flink"
            raise SubmitError(
                f"timed out after {timeout_s:.0f} s waiting for job {job_id} ({state})"
                + (f"; last exception:\n{last_transient}" if last_transient else "")
            )
        time.sleep(POLL_INTERVAL_S)


def _cancel_unless_ended(client: FlinkRestClient, job_id: str) -> None:
    """Best effort: the failure being reported matters more than a failed cancel."""
    try:
        if client.cancel_if_running(job_id):
            _LOG.warning("cancelled job %s after the failure", job_id)
    except SubmitError as exc:
        _LOG.warning("could not cancel job %s: %s", job_id, exc)


def submit(args: argparse.Namespace, pipeline_args: typing.Sequence[str]) -> dict:
    """Submits the pipeline and waits as ``args.wait_for`` says; returns the report dict."""
    client = FlinkRestClient(args.flink_master)
    config = client.config()
    if not flink_version_ok(config):
        raise SubmitError(
            f"cluster runs Flink {config.get('flink-version')}, the job-server jar is for {FLINK_MINOR_VERSION}"
        )
    jar = resolve_jar(args.job_server_jar)
    job_id = check_job_id(args.job_id) if args.job_id else new_job_id()
    module_name, function_name = parse_pipeline_ref(args.pipeline)
    function = getattr(importlib.import_module(module_name), function_name)

    environment_config = args.environment_config
    if args.environment_type == "EXTERNAL" and not environment_config:
        environment_config = DEFAULT_WORKER_POOL
    argv = pipeline_argv(
        pipeline_args,
        client.base_url,
        jar,
        args.environment_type,
        environment_config,
        args.job_name,
    )
    NEXT_RUN.job_id = job_id
    NEXT_RUN.savepoint_path = args.from_savepoint
    NEXT_RUN.allow_non_restored_state = args.allow_non_restored_state
    NEXT_RUN.allow_missing_state = args.allow_missing_state
    NEXT_RUN.run_call_started.clear()
    NEXT_RUN.run_call_done.clear()
    _LOG.info("submitting %s as Flink job %s to %s", args.pipeline, job_id, client.base_url)
    thread = _PipelineThread(function, argv)
    thread.start()
    try:
        return _wait_after_submission(args, client, job_id, thread)
    except SubmitError as exc:
        if not args.from_savepoint:
            raise
        try:
            texts = [str(exc)] + failure_texts(client.exceptions(job_id))
        except SubmitError:
            texts = [str(exc)]
        reason = explain_restore_failure(texts, args.from_savepoint)
        if reason is None:
            raise
        raise SubmitError(f"{reason}\nFlink: {str(exc).splitlines()[0]}") from exc
    finally:
        _await_run_call(thread, timeout_s=REST_TIMEOUT_S + UPLOAD_TIMEOUT_S)


def _await_run_call(thread: _PipelineThread, timeout_s: float) -> None:
    """Lets the pipeline thread finish its REST calls (and delete the upload) before we exit.

    Nothing to wait for when the upload never started (e.g. the pipeline
    failed to build).
    """
    if not NEXT_RUN.run_call_started.is_set():
        return
    deadline = time.monotonic() + timeout_s
    while thread.is_alive() and not NEXT_RUN.run_call_done.wait(0.2):
        if time.monotonic() > deadline:
            _LOG.warning("gave up waiting for the jar run call to return")
            return


def _wait_after_submission(
    args: argparse.Namespace, client: FlinkRestClient, job_id: str, thread: _PipelineThread
) -> dict:
    """The waiting half of ``submit``: see the module docstring for what counts as success."""
    report = {"job_id": job_id, "flink_master": client.base_url, "restored_from": args.from_savepoint}
    if args.wait_for == "none":
        deadline = time.monotonic() + args.timeout_s
        while client.job(job_id) is None:
            if not thread.is_alive():
                raise SubmitError(f"submission failed: {thread.error}")
            if time.monotonic() > deadline:
                raise SubmitError(f"timed out waiting for Flink to accept job {job_id}")
            time.sleep(POLL_INTERVAL_S)
        report["state"] = JobProgress.from_job(client.job(job_id) or {}).state
        return report
    try:
        progress = wait_for_job(client, job_id, args.wait_for, args.timeout_s, args.settle_s, thread)
    except SubmitError:
        if args.cancel_on_failure:
            _cancel_unless_ended(client, job_id)
        raise
    report["state"] = progress.state
    if args.environment_type == "LOOPBACK" and not progress.terminal:
        # The SDK workers live in this process: leaving would fail the job.
        _LOG.info("LOOPBACK: staying up until job %s ends", job_id)
        thread.join()
        final = JobProgress.from_job(client.job(job_id) or {})
        report["state"] = final.state
        if final.state != "FINISHED":
            raise SubmitError(f"job {job_id} ended {final.state}: {root_exception(client.exceptions(job_id))}")
    return report


def stop_with_savepoint(
    client: FlinkRestClient,
    job_id: str,
    savepoint_dir: typing.Optional[str],
    drain: bool,
    timeout_s: float,
) -> str:
    """Stops ``job_id`` with a savepoint; returns the savepoint's path once the job has ended.

    The savepoint completes a moment before the job reaches FINISHED; waiting
    for the end as well means a resubmission never overlaps the old job.
    """
    trigger = client.trigger_stop(job_id, savepoint_dir, drain)
    deadline = time.monotonic() + timeout_s
    location = None
    while True:
        if location is None:
            location = savepoint_outcome(client.savepoint_status(job_id, trigger))
        if location is not None:
            progress = JobProgress.from_job(client.job(job_id) or {})
            if progress.terminal:
                return location
        if time.monotonic() > deadline:
            what = "the end" if location else "the savepoint"
            raise SubmitError(f"timed out after {timeout_s:.0f} s waiting for {what} of job {job_id}")
        time.sleep(POLL_INTERVAL_S / 4 if location else POLL_INTERVAL_S)


def run_rewind(args: argparse.Namespace, client: typing.Optional[FlinkRestClient]) -> dict:
    """``rewind``: checks the job is stopped, finds the time, moves the group; prints the moves."""
    logging.getLogger("kafka").setLevel(logging.WARNING)
    if not args.kafka_bootstrap:
        raise SubmitError("--kafka_bootstrap (or $KAFKA_BOOTSTRAP) is required")
    if args.job_name:
        if client is None:
            raise SubmitError("--job_name needs --flink_master (or $FLINK_MASTER) to check the job is stopped")
        running = running_jobs_named(client.jobs_overview(), args.job_name)
        if running:
            raise SubmitError(f"job {args.job_name} is running ({running}): stop it first "
                              "(runners.submit stop), its reader commits offsets")
    if args.to:
        to_ms, detail = rewind.parse_time(args.to), {"job": args.job, "rewind_to": None}
    else:
        if not args.postgres_dsn:
            raise SubmitError("--to_open_windows reads the job's tables: --postgres_dsn (or POSTGRES_*)")
        to_ms, detail = rewind.open_windows_start(args.job, args.postgres_dsn,
                                                  round(args.lookback_hours * 3600 * 1000),
                                                  round(args.slack_minutes * 60 * 1000))
        if to_ms is None:
            raise SubmitError(f"no rewind time: {detail.get('reason')}")
    moves = rewind.rewind_group(args.kafka_bootstrap, args.kafka_group_id, args.topic, to_ms, args.dry_run)
    for move in moves:
        print(move.line(), flush=True)
    return dict(detail, rewind_to=rewind.iso(to_ms), group=args.kafka_group_id, topic=args.topic,
                dry_run=args.dry_run,
                moved={str(m.partition): [m.old, m.new] for m in moves})


def _print_json(payload: typing.Mapping[str, typing.Any]) -> None:
    print(json.dumps(payload, sort_keys=True), flush=True)


def _add_master(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--flink_master",
        default=settings.flink_master(),
        help="Flink REST address, http://host:port (default: $FLINK_MASTER).",
    )


def _add_submit_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pipeline", required=True, help="module[:function] whose function(argv) builds and runs the pipeline."
    )
    parser.add_argument("--job_name", help="Flink job name (what `upgrade` looks for).")
    parser.add_argument("--job_id", help="Flink job id to use (32 hex digits; default: random).")
    parser.add_argument(
        "--environment_type",
        default="EXTERNAL",
        choices=["EXTERNAL", "LOOPBACK"],
        help="Where the Python workers run (see the module docstring).",
    )
    parser.add_argument(
        "--environment_config", help=f"Worker pool address for EXTERNAL (default {DEFAULT_WORKER_POOL})."
    )
    parser.add_argument("--from_savepoint", help="Savepoint (or retained checkpoint) path to restore from.")
    parser.add_argument(
        "--allow_non_restored_state",
        action="store_true",
        help="Start even if some savepoint state maps to no operator of the new job (that state is "
        "dropped; never implied by anything else).",
    )
    parser.add_argument(
        "--allow_missing_state",
        action="store_true",
        help="Start even if a stateful step of the new job has no state in the savepoint (a step new "
        "in this version starts empty). Without it, such a savepoint is refused before submission.",
    )
    parser.add_argument(
        "--wait_for",
        default="running",
        choices=["running", "finished", "none"],
        help="running: RUNNING (or FINISHED); finished: only FINISHED; none: once Flink accepted the job.",
    )
    parser.add_argument("--timeout_s", type=float, default=600.0, help="Give up after this many seconds.")
    parser.add_argument(
        "--settle_s",
        type=float,
        default=10.0,
        help="How long every task must run without a recorded failure before RUNNING counts.",
    )
    parser.add_argument("--cancel_on_failure", action="store_true", help="Cancel the job when submit fails.")
    parser.add_argument("--job_server_jar", help=f"Beam Flink job-server uber jar (default ${JAR_ENV_VAR}).")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m runners.submit", description=__doc__.split("\n\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)

    p_submit = commands.add_parser("submit", help="Submit a pipeline (pipeline arguments after --).")
    _add_master(p_submit)
    _add_submit_args(p_submit)

    p_upgrade = commands.add_parser(
        "upgrade", help="Stop the running job called --job_name with a savepoint and resubmit from it."
    )
    _add_master(p_upgrade)
    _add_submit_args(p_upgrade)
    p_upgrade.add_argument("--savepoint_dir", help="Savepoint directory (default: the cluster's).")

    p_stop = commands.add_parser("stop", help="Stop a job with a savepoint and print its path.")
    _add_master(p_stop)
    which = p_stop.add_mutually_exclusive_group(required=True)
    which.add_argument("--job_id")
    which.add_argument(
        "--job_name", help="Stop the running job with this name; no such job prints a null savepoint_path."
    )
    p_stop.add_argument("--savepoint_dir", help="Savepoint directory (default: state.savepoints.dir).")
    p_stop.add_argument("--drain", action="store_true", help="Emit the final watermark (ends event-time windows).")
    p_stop.add_argument("--timeout_s", type=float, default=300.0)

    for name, text in (("cancel", "Cancel a job (no savepoint)."), ("status", "Print a job's state.")):
        p = commands.add_parser(name, help=text)
        _add_master(p)
        p.add_argument("--job_id", required=True)

    p_list = commands.add_parser("list", help="List the cluster's jobs.")
    _add_master(p_list)

    p_rewind = commands.add_parser(
        "rewind", help="Move a stopped job's consumer group back to a time (runners.rewind).")
    p_rewind.add_argument("--job", required=True, choices=sorted(rewind.JOBS),
                          help="Whose tables tell the open windows (with --to_open_windows).")
    p_rewind.add_argument("--kafka_group_id", required=True, help="The job's --kafka_group_id.")
    p_rewind.add_argument("--topic", required=True, help="The topic the job reads.")
    p_rewind.add_argument("--kafka_bootstrap", default=settings.value(None, "KAFKA_BOOTSTRAP"),
                          help="Kafka servers (default $KAFKA_BOOTSTRAP; security from KAFKA_*).")
    to = p_rewind.add_mutually_exclusive_group(required=True)
    to.add_argument("--to", help="Event time to go back to, ISO 8601 (no zone: UTC).")
    to.add_argument("--to_open_windows", action="store_true",
                    help="The start of the oldest window still open, read from the job's tables.")
    p_rewind.add_argument("--postgres_dsn", default=settings.postgres_dsn(),
                          help="The job's PostgreSQL (default from POSTGRES_*).")
    p_rewind.add_argument("--lookback_hours", type=float, default=48.0,
                          help="How far before the newest event open windows are looked for.")
    p_rewind.add_argument("--slack_minutes", type=float, default=0.0,
                          help="With --to_open_windows: go this much further back (then to whole windows), "
                          "for records whose Kafka timestamp is earlier than their event time.")
    p_rewind.add_argument("--job_name", help="Refuse while Flink (--flink_master) runs a job of this name.")
    p_rewind.add_argument("--flink_master", default=settings.flink_master(),
                          help="Flink REST address for --job_name (default: $FLINK_MASTER).")
    p_rewind.add_argument("--dry_run", action="store_true", help="Print the moves, commit nothing.")
    return parser


def parse_args(argv: typing.Sequence[str]) -> typing.Tuple[argparse.Namespace, typing.List[str]]:
    own, pipeline_args = split_argv(argv)
    args = build_parser().parse_args(own)
    if not args.flink_master and args.command != "rewind":
        raise SubmitError("--flink_master (or $FLINK_MASTER) is required")
    if pipeline_args and args.command not in ("submit", "upgrade"):
        raise SubmitError(f"`{args.command}` takes no pipeline arguments")
    if args.command in ("submit", "upgrade"):
        if args.allow_non_restored_state and not args.from_savepoint and args.command == "submit":
            raise SubmitError("--allow_non_restored_state needs --from_savepoint")
        if args.command == "upgrade" and not args.job_name:
            raise SubmitError("`upgrade` needs --job_name to find the running job")
        parse_pipeline_ref(args.pipeline)
        if args.job_id:
            check_job_id(args.job_id)
    return args, pipeline_args


def main(argv: typing.Optional[typing.Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args, pipeline_args = parse_args(sys.argv[1:] if argv is None else argv)
        client = FlinkRestClient(args.flink_master) if args.flink_master else None
        if args.command == "submit":
            _print_json(submit(args, pipeline_args))
        elif args.command == "upgrade":
            running = running_jobs_named(client.jobs_overview(), args.job_name)
            if len(running) > 1:
                raise SubmitError(f"{len(running)} jobs called {args.job_name} are running: {running}")
            if running:
                args.from_savepoint = stop_with_savepoint(
                    client, running[0], args.savepoint_dir, drain=False, timeout_s=args.timeout_s
                )
                _LOG.info("stopped %s with savepoint %s", running[0], args.from_savepoint)
            report = submit(args, pipeline_args)
            report["replaced_job_id"] = running[0] if running else None
            _print_json(report)
        elif args.command == "stop":
            job_id = args.job_id
            if args.job_name:
                running = running_jobs_named(client.jobs_overview(), args.job_name)
                if len(running) > 1:
                    raise SubmitError(f"{len(running)} jobs called {args.job_name} are running: {running}")
                job_id = running[0] if running else None
            location = None
            if job_id:
                location = stop_with_savepoint(client, job_id, args.savepoint_dir, args.drain, args.timeout_s)
            _print_json({"job_id": job_id, "savepoint_path": location})
        elif args.command == "cancel":
            client.cancel(args.job_id)
            _print_json({"job_id": args.job_id, "state": "CANCELLING"})
        elif args.command == "status":
            job = client.job(args.job_id)
            if job is None:
                raise SubmitError(f"Flink does not know job {args.job_id}")
            progress = JobProgress.from_job(job)
            _print_json(
                {
                    "job_id": args.job_id,
                    "name": job.get("name"),
                    "state": progress.state,
                    "tasks_running": progress.tasks_ok,
                    "tasks_total": progress.tasks_total,
                    "root_exception": root_exception(client.exceptions(args.job_id)),
                }
            )
        elif args.command == "rewind":
            _print_json(run_rewind(args, client if args.flink_master else None))
        elif args.command == "list":
            for job in client.jobs_overview().get("jobs", []):
                _print_json({"job_id": job["jid"], "name": job.get("name"), "state": job.get("state")})
    except (SubmitError, ValueError, rewind.RewindError) as exc:
        print(f"runners.submit: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0

if __name__ == "__main__":
    sys.exit(main())
