"""The uber-jar runner: Beam's Flink uber-jar submission with the REST calls done here.

Beam's Python uber-jar submission posts ``/jars/<id>/run`` with only the
entry class, and Beam's ``--savepoint_path`` option applies only when the
Java side builds a remote environment itself, which uber-jar submission never
does. So ``FlinkUberJarRunner`` (``--runner=runners.uberjar.FlinkUberJarRunner``)
lets Beam build the jar (the job-server jar with the pipeline proto, its
options and staged artifacts added) and does the upload and run calls itself
through ``runners.flink_rest.FlinkRestClient``, adding Flink's
``savepointPath`` / ``allowNonRestoredState`` and a job id chosen up front.
No Java process runs on the submitting host.

Beam instantiates a runner named by ``--runner`` with no arguments, so the
per-submission settings (job id, savepoint) travel through ``NEXT_RUN`` in
this module; ``runners.submit`` sets them before it starts the pipeline, and
``pipeline_argv`` gives the flags that select this runner.

The job-server jar is ``--job_server_jar``, else ``$FLINK_JOB_SERVER_JAR`` when
that is a fat jar (the image's), else the one ``flink/uberjar/build.sh`` builds
(needs mvn): ``resolve_jar``. ``FLINK_JOB_SERVER_JAR`` is one setting for both
uses: the runner profiles start it as the job server, and an upload needs the
classes inside it, so a manifest-only launcher (``flink/cluster.sh``'s) is
passed over for the build here.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import subprocess
import threading
import typing
import zipfile

from iheard_io import settings
from runners.flink_rest import FlinkRestClient, SubmitError, check_job_id, normalize_master
from runners.profiles import FINISH_BUNDLE_BEFORE_CHECKPOINTING

__all__ = [
    "FlinkUberJarRunner",
    "NEXT_RUN",
    "RUNNER",
    "flink_version_ok",
    "pipeline_argv",
    "resolve_jar",
    "run_request_body",
]

_LOG = logging.getLogger("runners.uberjar")

FLINK_MINOR_VERSION = "1.19"
ENTRY_CLASS = "org.apache.beam.runners.flink.FlinkPipelineRunner"
JAR_ENV_VAR = "FLINK_JOB_SERVER_JAR"
REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
RUNNER = "runners.uberjar.FlinkUberJarRunner"


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
        f"--runner={RUNNER}",
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


@dataclasses.dataclass
class _RunSettings:
    """What ``submit`` hands the runner for the next submission in this process."""

    job_id: typing.Optional[str] = None
    savepoint_path: typing.Optional[str] = None
    allow_non_restored_state: bool = False
    allow_missing_state: bool = False
    submitted_job_ids: typing.List[str] = dataclasses.field(default_factory=list)
    # Set when the upload/run calls are over and the uploaded jar is deleted.
    # Flink may report a job (even a failed one) before /jars/<id>/run
    # answers; exiting then would leave the 100 MB upload on the cluster.
    run_call_started: threading.Event = dataclasses.field(default_factory=threading.Event)
    run_call_done: threading.Event = dataclasses.field(default_factory=threading.Event)


# Beam instantiates a runner named by --runner with no arguments, so the
# per-submission settings travel through this module rather than the runner's
# constructor. ``submit`` sets them before it starts the pipeline.
NEXT_RUN = _RunSettings()


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

        Relies on FlinkBeamJob's attributes in apache-beam 2.62 and 2.70
        (``_jar``, ``_flink_jar_id``, ``_jar_uploaded``, ``_flink_job_id``),
        which its state polling and cancel use; apache-beam is pinned, and
        tests/flink/test_submit.py exercises them.
        """

        def run(self):
            NEXT_RUN.run_call_started.set()
            try:
                self._upload_and_run()
            finally:
                NEXT_RUN.run_call_done.set()

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
                job_id=NEXT_RUN.job_id,
                savepoint_path=NEXT_RUN.savepoint_path,
                allow_non_restored_state=NEXT_RUN.allow_non_restored_state,
            )
            try:
                self._flink_job_id = client.run_jar(self._flink_jar_id, body)
            finally:
                # Flink has copied the jar into its blob store with the job; the
                # upload itself is only clutter (about 100 MB per submission).
                self.delete_jar()
            NEXT_RUN.submitted_job_ids.append(self._flink_job_id)
            # The chosen id and the savepoint belong to this one job; a second
            # pipeline run by the same function gets fresh settings.
            NEXT_RUN.job_id = None
            NEXT_RUN.savepoint_path = None
            NEXT_RUN.allow_non_restored_state = False
            NEXT_RUN.allow_missing_state = False
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
            if NEXT_RUN.savepoint_path and not NEXT_RUN.allow_missing_state:
                check_savepoint_covers(pipeline.to_runner_api(), NEXT_RUN.savepoint_path,
                                       _environment_urn(options))
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
    # ``--runner=runners.uberjar.FlinkUberJarRunner`` resolves here.
    if name == "FlinkUberJarRunner":
        cls = _make_runner_classes()
        globals()[name] = cls
        return cls
    raise AttributeError(name)


def _environment_urn(options) -> str:
    """The environment urn the job server sees (LOOPBACK is submitted as EXTERNAL)."""
    from apache_beam.options.pipeline_options import PortableOptions

    kind = (options.view_as(PortableOptions).environment_type or "DOCKER").upper()
    return {"LOOPBACK": "beam:env:external:v1", "EXTERNAL": "beam:env:external:v1",
            "PROCESS": "beam:env:process:v1"}.get(kind, "beam:env:docker:v1")


def check_savepoint_covers(proto, savepoint_path: str, environment_urn: str = "beam:env:external:v1") -> None:
    """Refuses a savepoint that holds nothing for a stateful step of the job about to start.

    Flink itself fails a restore only when savepoint state has no operator
    in the new job; a stateful operator of the new job with no state in the
    savepoint just starts empty, silently (a renamed step's de-duplication
    ids and open sessions would be gone). The savepoint's ``_metadata`` is
    read when it is on a local file system; elsewhere (s3://) this check is
    skipped with a log line and Flink's own check remains.
    """
    from runners import state_ids
    from runners.submit import UPGRADE_PROCEDURE

    metadata = state_ids.savepoint_metadata(savepoint_path)
    if metadata is None:
        _LOG.info("savepoint %s is not on a local file system: not compared with the job's state ids",
                  savepoint_path)
        return
    missing = state_ids.missing_in_savepoint(metadata, state_ids.expected_operator_ids(
        "", proto=proto, environment_urn=environment_urn))
    if missing:
        raise SubmitError(
            f"savepoint {savepoint_path} holds no state for the stateful step(s) {', '.join(missing)} of "
            "this job: their uid (their label, or for a stateful DoFn the label of the step feeding it) "
            "differs from the job that wrote the savepoint, or the savepoint is another job's, so they "
            "would start empty. --allow_missing_state starts them empty on purpose (a step new in this "
            "version). " + UPGRADE_PROCEDURE
        )


def holds_runner_classes(jar: str) -> bool:
    """Whether ``jar`` contains the Flink runner itself (a fat jar), not only a
    manifest whose Class-Path names other files (cluster.sh's launcher)."""
    try:
        with zipfile.ZipFile(jar) as archive:
            return ENTRY_CLASS.replace(".", "/") + ".class" in archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def resolve_jar(explicit: typing.Optional[str], environ=None) -> str:
    """The job-server jar: the flag, then $FLINK_JOB_SERVER_JAR if it is a fat
    jar, then a local build."""
    if explicit:
        if not os.path.isfile(explicit):
            raise SubmitError(f"job-server jar {explicit} does not exist")
        return explicit
    from_env = settings.value(environ, JAR_ENV_VAR)
    if from_env:
        if not os.path.isfile(from_env):
            raise SubmitError(f"job-server jar {from_env} (${JAR_ENV_VAR}) does not exist")
        if holds_runner_classes(from_env):
            return from_env
        _LOG.info("$%s %s is a launcher without the runner's classes: building a fat jar",
                  JAR_ENV_VAR, from_env)
    build = REPO_ROOT / "flink" / "uberjar" / "build.sh"
    if not build.is_file():
        raise SubmitError(f"no --job_server_jar, no ${JAR_ENV_VAR} and no {build}")
    _LOG.info("building or reusing the job-server jar with %s", build)
    done = subprocess.run(["bash", str(build)], check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise SubmitError(f"{build} failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]
