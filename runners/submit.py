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

Savepoint restore: Beam's Python uber-jar submission posts ``/jars/<id>/run``
with only the entry class, and Beam's ``--savepoint_path`` option applies only
when the Java side builds a remote environment itself, which uber-jar
submission never does. So the runner here (``FlinkUberJarRunner``) lets Beam
build the jar and does the upload and run calls itself, adding Flink's
``savepointPath`` / ``allowNonRestoredState`` and a job id chosen up front.

The job-server jar is ``--job_server_jar``, else ``$IHEARD_FLINK_JOB_SERVER_JAR``,
else the one ``flink/uberjar/build.sh`` builds (needs mvn).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import pathlib
import secrets
import subprocess
import sys
import threading
import time
import typing

import requests

from runners.profiles import FINISH_BUNDLE_BEFORE_CHECKPOINTING

__all__ = [
    "FlinkRestClient",
    "FlinkUberJarRunner",
    "JobProgress",
    "SubmitError",
    "blocking_failure",
    "root_exception",
    "main",
]

_LOG = logging.getLogger("runners.submit")

FLINK_MINOR_VERSION = "1.19"
ENTRY_CLASS = "org.apache.beam.runners.flink.FlinkPipelineRunner"
DEFAULT_WORKER_POOL = "localhost:50000"
JAR_ENV_VAR = "IHEARD_FLINK_JOB_SERVER_JAR"
REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

# Requests to the REST API are small except the jar upload (about 100 MB).
REST_TIMEOUT_S = 30
UPLOAD_TIMEOUT_S = 600
POLL_INTERVAL_S = 1.0
GET_ATTEMPTS = 4
GET_RETRY_DELAY_S = 2.0

_TERMINAL_STATES = frozenset({"FINISHED", "FAILED", "CANCELED", "SUSPENDED"})
_FAILED_STATES = frozenset({"FAILED", "CANCELED", "SUSPENDED", "FAILING", "CANCELLING"})
_TASK_OK_STATES = frozenset({"RUNNING", "FINISHED"})


class SubmitError(RuntimeError):
    """A submission, stop or status request that did not succeed; ``str`` is the reason."""


# --------------------------------------------------------------- pure helpers


def split_argv(argv: typing.Sequence[str]) -> typing.Tuple[typing.List[str], typing.List[str]]:
    """Splits ``argv`` at the first ``--``: (this tool's arguments, the pipeline's)."""
    argv = list(argv)
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1:]
    return argv, []


def normalize_master(flink_master: str) -> str:
    """``host:port`` or ``http(s)://host:port[/]`` -> ``http(s)://host:port``."""
    master = flink_master.strip().rstrip("/")
    if not master:
        raise ValueError("--flink_master is empty")
    if "://" not in master:
        master = "http://" + master
    if not master.startswith(("http://", "https://")):
        raise ValueError(f"--flink_master must be an http(s) URL or host:port, got {flink_master!r}")
    return master


def new_job_id() -> str:
    """A Flink job id (32 hex digits), chosen before submission so it can be polled at once."""
    return secrets.token_hex(16)


def check_job_id(job_id: str) -> str:
    if len(job_id) != 32 or any(c not in "0123456789abcdef" for c in job_id):
        raise ValueError(f"a Flink job id is 32 lowercase hex digits, got {job_id!r}")
    return job_id


def parse_pipeline_ref(ref: str) -> typing.Tuple[str, str]:
    """``pkg.module[:function]`` -> (module, function); the function defaults to ``run``."""
    module, _, function = ref.partition(":")
    if not module or not all(part.isidentifier() for part in module.split(".")):
        raise ValueError(f"--pipeline must be a module path like beam_pipelines.frontend, got {ref!r}")
    function = function or "run"
    if not function.isidentifier():
        raise ValueError(f"bad function name in --pipeline={ref!r}")
    return module, function


def flink_version_ok(config: typing.Mapping[str, typing.Any]) -> bool:
    """True when ``GET /config`` reports the Flink minor version the jar is built for."""
    version = str(config.get("flink-version", ""))
    return version == FLINK_MINOR_VERSION or version.startswith(FLINK_MINOR_VERSION + ".")


def run_request_body(
    job_id: typing.Optional[str] = None,
    savepoint_path: typing.Optional[str] = None,
    allow_non_restored_state: bool = False,
    parallelism: typing.Optional[int] = None,
) -> typing.Dict[str, typing.Any]:
    """The JSON body of ``POST /jars/<id>/run`` for a Beam uber jar."""
    body: typing.Dict[str, typing.Any] = {"entryClass": ENTRY_CLASS}
    if job_id:
        body["jobId"] = check_job_id(job_id)
    if savepoint_path:
        body["savepointPath"] = savepoint_path
        body["allowNonRestoredState"] = bool(allow_non_restored_state)
    elif allow_non_restored_state:
        raise ValueError("--allow_non_restored_state needs --from_savepoint")
    if parallelism is not None and parallelism > 0:
        body["parallelism"] = parallelism
    return body


def jar_id_from_upload(response: typing.Mapping[str, typing.Any]) -> str:
    """``POST /jars/upload`` answers ``{"filename": "/tmp/.../<id>_beam.jar", "status": "success"}``."""
    if response.get("status") != "success" or not response.get("filename"):
        raise SubmitError(f"jar upload was not accepted: {response}")
    return str(response["filename"]).rstrip("/").split("/")[-1]


def _shorten(text: str, max_lines: int) -> str:
    # A Beam Python error sits deep in the Java stack trace, so the lines that
    # name exceptions (``...Error:``, ``Caused by``) are kept after the head.
    lines = [line.rstrip() for line in str(text).splitlines() if line.strip()]
    head = lines[:max_lines]
    named = [
        line
        for line in lines[max_lines:]
        if ("Error" in line or "Exception" in line) and not line.lstrip().startswith("at ")
    ]
    return "\n".join(head + named[-max_lines:])


def _failure_texts(exceptions: typing.Mapping[str, typing.Any]) -> typing.List[str]:
    """Stack traces in a ``GET /jobs/<id>/exceptions`` answer, newest first.

    Flink 1.19 answers with ``exceptionHistory.entries`` (newest first) and
    the older ``root-exception`` field.
    """
    entries = (exceptions.get("exceptionHistory") or {}).get("entries") or []
    texts = [str(text) for text in (e.get("stacktrace") or e.get("exceptionName") for e in entries) if text]
    if not texts and exceptions.get("root-exception"):
        texts = [str(exceptions["root-exception"])]
    return texts


# Flink restarts a job whose slots are not there yet (e.g. while a stopped
# job's slots are being released); the job runs once they are. Not a failure
# of the submitted code, so waiting goes on until the timeout.
_TRANSIENT_FAILURES = ("NoResourceAvailableException",)


def root_exception(exceptions: typing.Mapping[str, typing.Any], max_lines: int = 12) -> typing.Optional[str]:
    """The first lines of the newest failure recorded for a job, if any."""
    texts = _failure_texts(exceptions)
    return _shorten(texts[0], max_lines) if texts else None


def blocking_failure(exceptions: typing.Mapping[str, typing.Any], max_lines: int = 12) -> typing.Optional[str]:
    """The newest recorded failure that is not a transient shortage of slots, if any."""
    for text in _failure_texts(exceptions):
        if not any(marker in text for marker in _TRANSIENT_FAILURES):
            return _shorten(text, max_lines)
    return None


def savepoint_outcome(status: typing.Mapping[str, typing.Any]) -> typing.Optional[str]:
    """Reads ``GET /jobs/<id>/savepoints/<trigger>``: None while in progress, the path when done.

    Raises SubmitError with Flink's failure cause when the savepoint failed.
    """
    state = (status.get("status") or {}).get("id")
    if state == "IN_PROGRESS":
        return None
    if state != "COMPLETED":
        raise SubmitError(f"unexpected savepoint status: {status}")
    operation = status.get("operation") or {}
    if operation.get("location"):
        return str(operation["location"])
    cause = operation.get("failure-cause") or {}
    reason = cause.get("stack-trace") or cause.get("class") or json.dumps(operation)
    raise SubmitError("savepoint failed: " + "\n".join(str(reason).splitlines()[:12]))


@dataclasses.dataclass(frozen=True)
class JobProgress:
    """What ``GET /jobs/<id>`` says about a job, reduced to what a deploy waits for."""

    state: str
    tasks_total: int
    tasks_ok: int

    @classmethod
    def from_job(cls, job: typing.Mapping[str, typing.Any]) -> "JobProgress":
        vertices = job.get("vertices") or []
        ok = sum(1 for v in vertices if v.get("status") in _TASK_OK_STATES)
        return cls(state=str(job.get("state", "UNKNOWN")), tasks_total=len(vertices), tasks_ok=ok)

    @property
    def all_running(self) -> bool:
        """Job RUNNING and every vertex deployed (RUNNING, or FINISHED for bounded parts)."""
        return self.state == "RUNNING" and self.tasks_total > 0 and self.tasks_ok == self.tasks_total

    @property
    def failed(self) -> bool:
        return self.state in _FAILED_STATES

    @property
    def terminal(self) -> bool:
        return self.state in _TERMINAL_STATES


def running_jobs_named(overview: typing.Mapping[str, typing.Any], name: str) -> typing.List[str]:
    """Ids of the jobs called ``name`` in ``GET /jobs/overview`` that are not in a terminal state."""
    return [
        job["jid"]
        for job in overview.get("jobs", [])
        if job.get("name") == name and job.get("state") not in _TERMINAL_STATES
    ]


def pipeline_argv(
    pipeline_args: typing.Sequence[str],
    flink_master: str,
    jar: str,
    environment_type: str,
    environment_config: typing.Optional[str],
    job_name: typing.Optional[str],
) -> typing.List[str]:
    """The pipeline's own arguments followed by the ones this tool imposes.

    Beam's argparse keeps the last occurrence of a flag, so appending makes
    ours win over a profile's ``--runner`` or ``--flink_master``.
    """
    imposed = [
        "--runner=runners.submit.FlinkUberJarRunner",
        f"--flink_master={flink_master}",
        f"--flink_version={FLINK_MINOR_VERSION}",
        "--flink_submit_uber_jar",
        f"--flink_job_server_jar={jar}",
        f"--environment_type={environment_type}",
        # Correctness, not tuning: see runners/profiles.py.
        FINISH_BUNDLE_BEFORE_CHECKPOINTING,
    ]
    if environment_config:
        imposed.append(f"--environment_config={environment_config}")
    if job_name:
        imposed.append(f"--job_name={job_name}")
    return list(pipeline_args) + imposed


# ----------------------------------------------------------------- REST client


class FlinkRestClient:
    """The few Flink REST calls a deploy needs (Flink 1.19 API, ``/v1`` paths)."""

    def __init__(self, flink_master: str, timeout_s: float = REST_TIMEOUT_S):
        self.base_url = normalize_master(flink_master)
        self.timeout_s = timeout_s
        self._session = requests.Session()

    def _call(self, method: str, path: str, expected: typing.Collection[int] = (200,), **kwargs):
        url = f"{self.base_url}/v1/{path.lstrip('/')}"
        kwargs.setdefault("timeout", self.timeout_s)
        # Reads are retried through a short outage (a JobManager failing over,
        # a port-forward reconnecting); writes are not, they may have happened.
        attempts = GET_ATTEMPTS if method == "GET" else 1
        for attempt in range(1, attempts + 1):
            try:
                response = self._session.request(method, url, **kwargs)
                break
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt == attempts:
                    raise SubmitError(f"{method} {url}: {exc}") from exc
                _LOG.warning("%s %s failed (%s); retrying", method, url, exc)
                time.sleep(GET_RETRY_DELAY_S)
            except requests.RequestException as exc:
                raise SubmitError(f"{method} {url}: {exc}") from exc
        if response.status_code not in expected:
            raise SubmitError(f"{method} {url} answered {response.status_code}: {response.text[:2000]}")
        return response.json() if response.content else {}

    def config(self) -> dict:
        return self._call("GET", "config")

    def jobs_overview(self) -> dict:
        return self._call("GET", "jobs/overview")

    def job(self, job_id: str) -> typing.Optional[dict]:
        """``GET /jobs/<id>``, or None while Flink does not know the job yet."""
        url_path = f"jobs/{job_id}"
        try:
            return self._call("GET", url_path)
        except SubmitError as exc:
            if " answered 404" in str(exc):
                return None
            raise

    def exceptions(self, job_id: str) -> dict:
        return self._call("GET", f"jobs/{job_id}/exceptions")

    def checkpoints(self, job_id: str) -> dict:
        return self._call("GET", f"jobs/{job_id}/checkpoints")

    def upload_jar(self, jar_path: str) -> str:
        with open(jar_path, "rb") as jar:
            answer = self._call(
                "POST",
                "jars/upload",
                files={"jarfile": ("beam-pipeline.jar", jar, "application/x-java-archive")},
                timeout=UPLOAD_TIMEOUT_S,
            )
        return jar_id_from_upload(answer)

    def run_jar(self, jar_id: str, body: typing.Mapping[str, typing.Any]) -> str:
        # Flink runs the jar's main() inside this request; Beam translates the
        # pipeline there, so allow more than a plain call.
        answer = self._call("POST", f"jars/{jar_id}/run", json=dict(body), timeout=UPLOAD_TIMEOUT_S)
        return str(answer["jobid"])

    def delete_jar(self, jar_id: str) -> None:
        self._call("DELETE", f"jars/{jar_id}")

    def trigger_stop(self, job_id: str, savepoint_dir: typing.Optional[str], drain: bool) -> str:
        body: typing.Dict[str, typing.Any] = {"drain": drain}
        if savepoint_dir:
            body["targetDirectory"] = savepoint_dir
        return str(self._call("POST", f"jobs/{job_id}/stop", expected=(200, 202), json=body)["request-id"])

    def savepoint_status(self, job_id: str, trigger_id: str) -> dict:
        return self._call("GET", f"jobs/{job_id}/savepoints/{trigger_id}")

    def cancel(self, job_id: str) -> None:
        self._call("PATCH", f"jobs/{job_id}", expected=(200, 202), params={"mode": "cancel"})


# ------------------------------------------------------ Beam runner extension


@dataclasses.dataclass
class _RunSettings:
    """What ``submit`` hands the runner for the next submission in this process."""

    job_id: typing.Optional[str] = None
    savepoint_path: typing.Optional[str] = None
    allow_non_restored_state: bool = False
    submitted_job_ids: typing.List[str] = dataclasses.field(default_factory=list)
    # Set when the upload/run calls are over and the uploaded jar is deleted.
    # Flink may report a job (even a failed one) before /jars/<id>/run
    # answers; exiting then would leave the 100 MB upload on the cluster.
    run_call_started: threading.Event = dataclasses.field(default_factory=threading.Event)
    run_call_done: threading.Event = dataclasses.field(default_factory=threading.Event)


# Beam instantiates a runner named by --runner with no arguments, so the
# per-submission settings travel through this module rather than the runner's
# constructor. ``submit`` sets them before it starts the pipeline.
_NEXT_RUN = _RunSettings()


class _LoopbackOnlyServer:
    """A grpc.Server whose ``add_insecure_port("[::]:N")`` binds 127.0.0.1:N instead."""

    def __init__(self, server):
        self._server = server

    def add_insecure_port(self, address: str) -> int:
        return self._server.add_insecure_port(address.replace("[::]:", "127.0.0.1:", 1))

    def __getattr__(self, name):
        return getattr(self._server, name)


def _make_runner_classes():
    """Defines the Beam subclasses lazily, so importing this module stays cheap."""
    import grpc
    from apache_beam.options import pipeline_options
    from apache_beam.runners.portability import flink_runner
    from apache_beam.runners.portability import flink_uber_jar_job_server as uber
    from apache_beam.runners.portability import portable_runner

    class _RestSubmittedFlinkJob(uber.FlinkBeamJob):
        """Beam's uber-jar job with the upload/run done here, adding savepoint restore.

        Relies on FlinkBeamJob's attributes in apache-beam 2.62 (``_jar``,
        ``_flink_jar_id``, ``_jar_uploaded``, ``_flink_job_id``), which its
        state polling and cancel use; apache-beam is pinned to that version.
        """

        def run(self):
            _NEXT_RUN.run_call_started.set()
            try:
                self._upload_and_run()
            finally:
                _NEXT_RUN.run_call_done.set()

        def _upload_and_run(self):
            # Writes the pipeline proto and options into the copied jar.
            self._stop_artifact_service()
            client = FlinkRestClient(self._master_url)
            try:
                self._flink_jar_id = client.upload_jar(self._jar)
            finally:
                os.unlink(self._jar)
            self._jar_uploaded = True
            body = run_request_body(
                job_id=_NEXT_RUN.job_id,
                savepoint_path=_NEXT_RUN.savepoint_path,
                allow_non_restored_state=_NEXT_RUN.allow_non_restored_state,
            )
            try:
                self._flink_job_id = client.run_jar(self._flink_jar_id, body)
            finally:
                # Flink has copied the jar into its blob store with the job; the
                # upload itself is only clutter (about 100 MB per submission).
                self.delete_jar()
            _NEXT_RUN.submitted_job_ids.append(self._flink_job_id)
            # The chosen id and the savepoint belong to this one job; a second
            # pipeline run by the same function gets fresh settings.
            _NEXT_RUN.job_id = None
            _NEXT_RUN.savepoint_path = None
            _NEXT_RUN.allow_non_restored_state = False
            _LOG.info("started Flink job %s", self._flink_job_id)

    class _RestUberJarJobServer(uber.FlinkUberJarJobServer):
        def create_beam_job(self, job_id, job_name, pipeline, options):
            return _RestSubmittedFlinkJob(
                self._master_url,
                self.executable_jar(),
                job_id,
                job_name,
                pipeline,
                options,
                artifact_port=self._artifact_port,
            )

    class FlinkUberJarRunner(flink_runner.FlinkRunner):
        """FlinkRunner that always submits an uber jar through ``_RestSubmittedFlinkJob``."""

        def default_job_server(self, options):
            flink_options = options.view_as(pipeline_options.FlinkRunnerOptions)
            master = normalize_master(flink_options.flink_master)
            # The Java side must use the context environment Flink provides
            # when it runs the jar, hence [auto] (as Beam's own uber-jar path).
            flink_options.flink_master = "[auto]"
            return _RestUberJarJobServer(master, options)

        def create_job_service_handle(self, job_service, options):
            return portable_runner.JobServiceHandle(job_service, options, retain_unknown_options=True)

        def run_pipeline(self, pipeline, options):
            # Beam binds the servers it starts here (the artifact staging
            # server that writes staged files into the jar, and the LOOPBACK
            # worker pool) on every interface. Both only serve this host, so
            # keep them on loopback while the pipeline is submitted.
            real_server = grpc.server

            def loopback_server(*args, **kwargs):
                return _LoopbackOnlyServer(real_server(*args, **kwargs))

            grpc.server = loopback_server
            try:
                return super().run_pipeline(pipeline, options)
            finally:
                grpc.server = real_server

    return FlinkUberJarRunner


def __getattr__(name):
    # ``--runner=runners.submit.FlinkUberJarRunner`` resolves here.
    if name == "FlinkUberJarRunner":
        cls = _make_runner_classes()
        globals()[name] = cls
        return cls
    raise AttributeError(name)


# -------------------------------------------------------------------- actions


def resolve_jar(explicit: typing.Optional[str]) -> str:
    """The job-server jar: the flag, then $IHEARD_FLINK_JOB_SERVER_JAR, then a local build."""
    for candidate in (explicit, os.environ.get(JAR_ENV_VAR)):
        if candidate:
            if not os.path.isfile(candidate):
                raise SubmitError(f"job-server jar {candidate} does not exist")
            return candidate
    build = REPO_ROOT / "flink" / "uberjar" / "build.sh"
    if not build.is_file():
        raise SubmitError(f"no --job_server_jar, no ${JAR_ENV_VAR} and no {build}")
    _LOG.info("building or reusing the job-server jar with %s", build)
    done = subprocess.run(["bash", str(build)], check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise SubmitError(f"{build} failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


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
        job = client.job(job_id)
        if job is not None and not JobProgress.from_job(job).terminal:
            _LOG.warning("cancelling job %s after the failure", job_id)
            client.cancel(job_id)
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
    _NEXT_RUN.job_id = job_id
    _NEXT_RUN.savepoint_path = args.from_savepoint
    _NEXT_RUN.allow_non_restored_state = args.allow_non_restored_state
    _NEXT_RUN.run_call_started.clear()
    _NEXT_RUN.run_call_done.clear()
    _LOG.info("submitting %s as Flink job %s to %s", args.pipeline, job_id, client.base_url)
    thread = _PipelineThread(function, argv)
    thread.start()
    try:
        return _wait_after_submission(args, client, job_id, thread)
    finally:
        _await_run_call(thread, timeout_s=REST_TIMEOUT_S + UPLOAD_TIMEOUT_S)


def _await_run_call(thread: _PipelineThread, timeout_s: float) -> None:
    """Lets the pipeline thread finish its REST calls (and delete the upload) before we exit.

    Nothing to wait for when the upload never started (e.g. the pipeline
    failed to build).
    """
    if not _NEXT_RUN.run_call_started.is_set():
        return
    deadline = time.monotonic() + timeout_s
    while thread.is_alive() and not _NEXT_RUN.run_call_done.wait(0.2):
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


def _print_json(payload: typing.Mapping[str, typing.Any]) -> None:
    print(json.dumps(payload, sort_keys=True), flush=True)


def _add_master(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--flink_master",
        default=os.environ.get("FLINK_MASTER"),
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
        help="Start even if some savepoint state maps to no operator of the new job.",
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
    return parser


def parse_args(argv: typing.Sequence[str]) -> typing.Tuple[argparse.Namespace, typing.List[str]]:
    own, pipeline_args = split_argv(argv)
    args = build_parser().parse_args(own)
    if not args.flink_master:
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
        client = FlinkRestClient(args.flink_master)
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
        elif args.command == "list":
            for job in client.jobs_overview().get("jobs", []):
                _print_json({"job_id": job["jid"], "name": job.get("name"), "state": job.get("state")})
    except (SubmitError, ValueError) as exc:
        print(f"runners.submit: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    # Run the copy imported as runners.submit, so the runner class Beam loads
    # by name and the settings ``submit`` leaves for it are the same objects.
    from runners import submit as _submit

    sys.exit(_submit.main())
