"""``python -m runners.submit`` against the project's local Flink 1.19 cluster.

Each test runs the CLI as a subprocess, the way CI and the Kubernetes Job do,
with the Python workers in an EXTERNAL worker pool (as the TaskManager
sidecar on Kubernetes) started here on 127.0.0.1. The pipelines submitted are
the small ``run_*`` functions below (the CLI imports them as
``tests.flink.test_submit:run_...``; the workers import them the same way, so
they run with the repository root as working directory).

Run: ``python -m pytest tests/flink/test_submit.py`` (conftest starts the cluster).
"""
from __future__ import annotations

import base64
import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap
import time
import typing
import uuid

import pytest
import requests

from runners import state_ids

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
FAILURE_MARKER = "iheard-submit-test-deliberate-failure"
THIS_MODULE = "tests.flink.test_submit"

pytestmark = [pytest.mark.flink, pytest.mark.slow]


# ------------------------------------------------- pipelines the tests submit


def run_counting_pipeline(argv):
    """Bounded: Create -> GroupByKey -> count per key, with a counter per key seen."""
    import apache_beam as beam
    from apache_beam.metrics import Metrics
    from apache_beam.options.pipeline_options import PipelineOptions

    keys_seen = Metrics.counter("submit_test", "keys_seen")

    def count(key_values):
        keys_seen.inc()
        key, values = key_values
        return key, len(list(values))

    pipeline = beam.Pipeline(options=PipelineOptions(argv))
    _ = (
        pipeline
        | "CreateWords" >> beam.Create(["a", "b", "a", "c", "a", "b"])
        | "PairWithOne" >> beam.Map(lambda word: (word, 1))
        | "GroupByWord" >> beam.GroupByKey()
        | "CountPerWord" >> beam.Map(count)
    )
    result = pipeline.run()
    result.wait_until_finish()
    return result


def run_ticking_pipeline(argv):
    """Unbounded: PeriodicImpulse -> 2 s fixed windows -> GroupByKey (keyed state to savepoint)."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.transforms import periodicsequence, window

    pipeline = beam.Pipeline(options=PipelineOptions(argv))
    _ = (
        pipeline
        | "Tick" >> periodicsequence.PeriodicImpulse(fire_interval=0.5, apply_windowing=False)
        | "KeyByParity" >> beam.Map(lambda ts: (int(float(ts) * 2) % 2, 1))
        | "Window2s" >> beam.WindowInto(window.FixedWindows(2))
        | "GroupByParity" >> beam.GroupByKey()
        | "CountTicks" >> beam.MapTuple(lambda parity, ones: (parity, sum(ones)))
    )
    result = pipeline.run()
    result.wait_until_finish()
    return result


def run_ticking_pipeline_regrouped(argv):
    """The ticking pipeline with its GroupByKey relabelled: its window state gets another uid."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.transforms import periodicsequence, window

    pipeline = beam.Pipeline(options=PipelineOptions(argv))
    _ = (
        pipeline
        | "Tick" >> periodicsequence.PeriodicImpulse(fire_interval=0.5, apply_windowing=False)
        | "KeyByParity" >> beam.Map(lambda ts: (int(float(ts) * 2) % 2, 1))
        | "Window2s" >> beam.WindowInto(window.FixedWindows(2))
        | "GroupTicksByParity" >> beam.GroupByKey()
        | "CountTicks" >> beam.MapTuple(lambda parity, ones: (parity, sum(ones)))
    )
    result = pipeline.run()
    result.wait_until_finish()
    return result


def _fail(element):
    raise ValueError(f"{FAILURE_MARKER} on element {element!r}")


def run_failing_pipeline(argv):
    """Bounded, and every element raises: the job fails."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    pipeline = beam.Pipeline(options=PipelineOptions(argv))
    _ = pipeline | "CreateOne" >> beam.Create([1]) | "Explode" >> beam.Map(_fail)
    result = pipeline.run()
    result.wait_until_finish()
    return result


# ------------------------------------------------------------------- fixtures


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Beam's worker_pool_main binds every interface; this starts the same
# servicer (one SDK worker process per request, as in the Kubernetes sidecar)
# on loopback only.
_WORKER_POOL = textwrap.dedent(
    """
    import sys, time, grpc
    from apache_beam.portability.api import beam_fn_api_pb2_grpc
    from apache_beam.runners.worker.worker_pool_main import BeamFnExternalWorkerPoolServicer
    server = grpc.server(__import__("concurrent.futures").futures.ThreadPoolExecutor(16))
    server.add_insecure_port("127.0.0.1:" + sys.argv[1])
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(
        BeamFnExternalWorkerPoolServicer(use_process=True), server)
    server.start()
    print("worker pool up", flush=True)
    while True:
        time.sleep(3600)
    """
)


@pytest.fixture(scope="module")
def flink_rest(flink_cluster):
    """The REST address of the local cluster (started by conftest's flink_cluster)."""
    return flink_cluster.rest.base_url


@pytest.fixture(scope="module")
def job_server_jar():
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "flink" / "uberjar" / "build.sh")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def worker_pool(tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("worker_pool") / "pool.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_POOL, str(port)],
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while b"worker pool up" not in log.read_bytes():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "worker pool did not start"
        time.sleep(0.2)
    yield f"127.0.0.1:{port}"
    # Ends the pool and the SDK worker processes it started (same session).
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


@pytest.fixture
def cleanup_jobs(flink_rest):
    """Job ids and job names whose jobs are cancelled at teardown if still running.

    Names cover jobs whose id a failed CLI call never reported.
    """
    ids_or_names: typing.List[str] = []
    yield ids_or_names
    try:
        jobs = requests.get(f"{flink_rest}/jobs/overview", timeout=10).json()["jobs"]
    except requests.RequestException:
        return  # no cluster, no jobs left behind
    for job in jobs:
        mine = job["jid"] in ids_or_names or job["name"] in ids_or_names
        if mine and job["state"] not in ("FINISHED", "FAILED", "CANCELED"):
            requests.patch(f"{flink_rest}/jobs/{job['jid']}", params={"mode": "cancel"}, timeout=10)


def _cli(*args: str, timeout_s: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runners.submit", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def _submit_args(flink_rest, jar, pool, function, *extra):
    return [
        "submit",
        f"--flink_master={flink_rest}",
        f"--pipeline={THIS_MODULE}:{function}",
        f"--job_server_jar={jar}",
        "--environment_type=EXTERNAL",
        f"--environment_config={pool}",
        *extra,
    ]


def _unique(prefix: str) -> str:
    """Job names are unique per run: `upgrade` stops whatever runs under its name on the shared cluster."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _user_counter(flink_rest: str, job_id: str, name: str) -> int:
    """A Beam user counter of a finished job, from Flink's ``__metricscontainers`` accumulator."""
    accumulators = requests.get(f"{flink_rest}/jobs/{job_id}/accumulators", timeout=10).json()
    (container,) = [
        a["value"] for a in accumulators["user-task-accumulators"] if a["name"] == "__metricscontainers"
    ]
    total = 0
    for metric in json.loads(container)["metrics"]["attempted"]:
        if metric["urn"] == "beam:metric:user:sum_int64:v1" and metric["labels"].get("NAME") == name:
            payload, value, shift = base64.b64decode(metric["payload"]), 0, 0
            for byte in payload:  # protobuf varint
                value |= (byte & 0x7F) << shift
                shift += 7
            total += value
    return total


def _last_json(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    assert lines, stdout
    return json.loads(lines[-1])


# ---------------------------------------------------------------------- tests


def test_batch_pipeline_runs_to_finished(flink_rest, job_server_jar, worker_pool, cleanup_jobs):
    job_name = _unique("iheard-submit-test-batch")
    cleanup_jobs.append(job_name)
    jars_before = {jar["id"] for jar in requests.get(f"{flink_rest}/jars", timeout=10).json()["files"]}
    done = _cli(
        *_submit_args(
            flink_rest,
            job_server_jar,
            worker_pool,
            "run_counting_pipeline",
            f"--job_name={job_name}",
            "--wait_for=finished",
            "--timeout_s=240",
            "--",
            "--parallelism=1",
        )
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = _last_json(done.stdout)
    cleanup_jobs.append(report["job_id"])
    assert report["state"] == "FINISHED"
    job = requests.get(f"{flink_rest}/jobs/{report['job_id']}", timeout=10).json()
    assert job["name"] == job_name
    assert job["state"] == "FINISHED"
    # The Python code really ran in the worker pool: one counter increment
    # per distinct word (a, b, c), read from Beam's metrics accumulator.
    assert _user_counter(flink_rest, report["job_id"], "keys_seen") == 3
    # The uploaded jar is removed once Flink has the job.
    jars = requests.get(f"{flink_rest}/jars", timeout=10).json()["files"]
    assert not [jar for jar in jars if jar["id"] not in jars_before and jar["name"] == "beam-pipeline.jar"]


def test_failing_pipeline_exits_nonzero_with_root_exception(
    flink_rest, job_server_jar, worker_pool, cleanup_jobs
):
    job_id = "0123456789abcdef" + os.urandom(8).hex()
    cleanup_jobs.append(job_id)
    done = _cli(
        *_submit_args(
            flink_rest,
            job_server_jar,
            worker_pool,
            "run_failing_pipeline",
            f"--job_id={job_id}",
            f"--job_name={_unique('iheard-submit-test-failing')}",
            "--wait_for=finished",
            "--cancel_on_failure",
            "--timeout_s=240",
            "--",
            "--parallelism=1",
        )
    )
    assert done.returncode == 1, done.stdout + done.stderr[-4000:]
    assert job_id in done.stderr
    assert FAILURE_MARKER in done.stderr, done.stderr[-4000:]


def test_restore_from_a_missing_savepoint_fails_with_the_reason(
    flink_rest, job_server_jar, worker_pool, cleanup_jobs, tmp_path
):
    missing = f"file:{tmp_path}/no-such-savepoint"
    job_name = _unique("iheard-submit-test-bad-restore")
    cleanup_jobs.append(job_name)
    jars_before = {jar["id"] for jar in requests.get(f"{flink_rest}/jars", timeout=10).json()["files"]}
    done = _cli(
        *_submit_args(
            flink_rest,
            job_server_jar,
            worker_pool,
            "run_ticking_pipeline",
            f"--job_name={job_name}",
            f"--from_savepoint={missing}",
            "--cancel_on_failure",
            "--timeout_s=240",
            "--",
            "--streaming",
            "--parallelism=1",
        )
    )
    assert done.returncode == 1, done.stdout + done.stderr[-4000:]
    # The job fails while Flink's run call may still be answering; the
    # upload must be deleted all the same.
    jars = requests.get(f"{flink_rest}/jars", timeout=10).json()["files"]
    assert not [jar for jar in jars if jar["id"] not in jars_before and jar["name"] == "beam-pipeline.jar"]
    reason = done.stderr[done.stderr.index("runners.submit: job "):]
    assert "Cannot find checkpoint or savepoint" in reason and missing in reason, reason[:4000]


def test_streaming_stop_with_savepoint_and_resubmit_from_it(
    flink_rest, job_server_jar, worker_pool, cleanup_jobs, tmp_path
):
    streaming_args = ["--", "--streaming", "--parallelism=1", "--checkpointing_interval=2000"]
    job_name = _unique("iheard-submit-test-stream")
    cleanup_jobs.append(job_name)
    first = _cli(
        *_submit_args(
            flink_rest,
            job_server_jar,
            worker_pool,
            "run_ticking_pipeline",
            f"--job_name={job_name}",
            "--settle_s=5",
            "--timeout_s=240",
            *streaming_args,
        )
    )
    assert first.returncode == 0, first.stderr[-4000:]
    first_job = _last_json(first.stdout)["job_id"]
    cleanup_jobs.append(first_job)
    assert requests.get(f"{flink_rest}/jobs/{first_job}", timeout=10).json()["state"] == "RUNNING"

    savepoint_dir = tmp_path / "savepoints"
    stopped = _cli(
        "stop", f"--flink_master={flink_rest}", f"--job_id={first_job}", f"--savepoint_dir=file://{savepoint_dir}"
    )
    assert stopped.returncode == 0, stopped.stderr[-4000:]
    savepoint = _last_json(stopped.stdout)["savepoint_path"]
    assert str(savepoint_dir) in savepoint
    assert (pathlib.Path(savepoint.removeprefix("file:")) / "_metadata").is_file()
    assert requests.get(f"{flink_rest}/jobs/{first_job}", timeout=10).json()["state"] == "FINISHED"

    second = _cli(
        *_submit_args(
            flink_rest,
            job_server_jar,
            worker_pool,
            "run_ticking_pipeline",
            f"--job_name={job_name}",
            f"--from_savepoint={savepoint}",
            "--settle_s=5",
            "--timeout_s=240",
            *streaming_args,
        )
    )
    assert second.returncode == 0, second.stderr[-4000:]
    report = _last_json(second.stdout)
    cleanup_jobs.append(report["job_id"])
    assert report["restored_from"] == savepoint
    checkpoints = requests.get(f"{flink_rest}/jobs/{report['job_id']}/checkpoints", timeout=10).json()
    restored = checkpoints["latest"]["restored"]
    assert restored is not None and restored["is_savepoint"]
    assert restored["external_path"].rstrip("/").endswith(savepoint.rstrip("/").split("/")[-1])

    status = _cli("status", f"--flink_master={flink_rest}", f"--job_id={report['job_id']}")
    assert status.returncode == 0, status.stderr
    assert _last_json(status.stdout)["state"] == "RUNNING"

    # What the deploy workflow runs: find the job by name, stop it with a
    # savepoint, start the new code from that savepoint.
    upgraded = _cli(
        "upgrade",
        *_submit_args(
            flink_rest,
            job_server_jar,
            worker_pool,
            "run_ticking_pipeline",
            f"--job_name={job_name}",
            f"--savepoint_dir=file://{savepoint_dir}",
            "--settle_s=5",
            "--timeout_s=240",
            *streaming_args,
        )[1:],
    )
    assert upgraded.returncode == 0, upgraded.stderr[-4000:]
    upgrade = _last_json(upgraded.stdout)
    cleanup_jobs.append(upgrade["job_id"])
    assert upgrade["replaced_job_id"] == report["job_id"]
    assert upgrade["restored_from"] and upgrade["restored_from"] != savepoint
    assert requests.get(f"{flink_rest}/jobs/{report['job_id']}", timeout=10).json()["state"] == "FINISHED"
    restored = requests.get(f"{flink_rest}/jobs/{upgrade['job_id']}/checkpoints", timeout=10).json()["latest"]["restored"]
    assert restored["external_path"] == upgrade["restored_from"]

    # A build whose stateful step was relabelled: refused before submission
    # (the savepoint holds nothing for the new label), and, when that check
    # is waived, by Flink (the old label's state maps to no operator), with
    # one reason and the procedure; never started with the state dropped.
    stopped = _cli(
        "stop", f"--flink_master={flink_rest}", f"--job_id={upgrade['job_id']}",
        f"--savepoint_dir=file://{savepoint_dir}",
    )
    assert stopped.returncode == 0, stopped.stderr[-4000:]
    last_savepoint = _last_json(stopped.stdout)["savepoint_path"]
    regrouped = _submit_args(
        flink_rest, job_server_jar, worker_pool, "run_ticking_pipeline_regrouped",
        f"--job_name={job_name}", f"--from_savepoint={last_savepoint}", "--cancel_on_failure",
        "--settle_s=5", "--timeout_s=240",
    )
    refused = _cli(*regrouped, *streaming_args)
    assert refused.returncode == 1, refused.stdout + refused.stderr[-4000:]
    reason = refused.stderr[refused.stderr.rindex("runners.submit: "):]
    assert "holds no state for the stateful step(s) GroupTicksByParity" in reason, reason[:3000]
    assert "Upgrading a running job" in reason and "--allow_non_restored_state" in reason
    jobs = requests.get(f"{flink_rest}/jobs/overview", timeout=10).json()["jobs"]
    assert not [j for j in jobs if j["name"] == job_name and j["state"] not in ("FINISHED", "CANCELED")]

    unmapped = _cli(*regrouped[:-2], "--allow_missing_state", *regrouped[-2:], *streaming_args)
    assert unmapped.returncode == 1, unmapped.stdout + unmapped.stderr[-4000:]
    reason = unmapped.stderr[unmapped.stderr.rindex("runners.submit: "):]
    # The relabelled GroupByKey's state, or that of the stage after it (named
    # after the GroupByKey's output), whichever Flink meets first.
    assert "holds state for operator " in reason and "which the new job does not have" in reason, reason[:3000]
    assert "Upgrading a running job" in reason, reason[:3000]
    assert "Cannot map checkpoint/savepoint state" in reason, reason[:3000]
