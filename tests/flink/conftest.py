"""Fixtures for tests against the project's local Flink 1.19 cluster.

``flink_cluster`` runs ``flink/cluster.sh up`` once per session (idempotent:
it starts only what is not running, installing the distribution and the job
server classpath on first use) and hands out the REST client and the
settings of ``cluster.sh env``. ``background_pipelines`` starts pipeline
processes that must stay alive while their job runs (LOOPBACK workers live in
the submitting process) and, at teardown, cancels their Flink jobs and ends
the processes.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess
import sys
import typing
import uuid

import pytest

from tests.flink.flink_rest import FlinkRest, wait_for
from tests.support import end_process, script_env

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
CLUSTER_SH = REPO_ROOT / "flink" / "cluster.sh"
# A cold `up` downloads ~230 MB of wheels and ~150 MB of jars.
CLUSTER_UP_TIMEOUT_S = 900


@dataclasses.dataclass
class FlinkCluster:
    rest: FlinkRest
    env: typing.Dict[str, str]
    # A named instance (services/instance.sh), or "" for the default cluster.
    instance: str = ""

    @property
    def prometheus_url(self) -> str:
        return self.env["FLINK_PROMETHEUS_URL"]

    def cluster_sh(self, *args: str, timeout_s: float = CLUSTER_UP_TIMEOUT_S) -> str:
        if self.instance:
            args = (*args, f"--instance={self.instance}")
        done = subprocess.run(
            ["bash", str(CLUSTER_SH), *args], check=True, capture_output=True, text=True, timeout=timeout_s
        )
        return done.stdout

    def taskmanager_pids(self) -> typing.List[int]:
        return [int(line.split()[1]) for line in self.cluster_sh("pids").splitlines() if line.startswith("taskexecutor ")]

    def process_env(self) -> typing.Dict[str, str]:
        """Environment for a pipeline subprocess: ours plus `cluster.sh env`."""
        env = dict(os.environ)
        env.update(self.env)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        return env


@pytest.fixture(scope="session")
def flink_cluster() -> FlinkCluster:
    up = subprocess.run(
        ["bash", str(CLUSTER_SH), "up"], capture_output=True, text=True, timeout=CLUSTER_UP_TIMEOUT_S
    )
    if up.returncode != 0:
        pytest.fail(f"flink/cluster.sh up failed ({up.returncode}):\n{up.stdout}\n{up.stderr[-4000:]}")
    env = script_env(str(CLUSTER_SH))
    rest = FlinkRest("http://127.0.0.1:" + env["FLINK_MASTER"].rsplit(":", 1)[1])
    wait_for(lambda: rest.get("/overview")["taskmanagers"] >= 1, 60, "a TaskManager")
    return FlinkCluster(rest=rest, env=env)


def unique_job_name(prefix: str) -> str:
    """Flink job names are how tests find their job among others on the shared cluster."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class BackgroundPipelines:
    def __init__(self, cluster: FlinkCluster, log_dir: pathlib.Path):
        self.cluster = cluster
        self.log_dir = log_dir
        self._started: typing.List[typing.Tuple[subprocess.Popen, str, pathlib.Path]] = []

    def start(self, module: str, args: typing.Sequence[str], job_name: str,
              env: typing.Optional[typing.Mapping[str, str]] = None) -> subprocess.Popen:
        """``env``: the process's whole environment (default: ``process_env()``)."""
        log = self.log_dir / f"{job_name}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args, f"--job_name={job_name}"],
            cwd=REPO_ROOT,
            env=dict(env) if env is not None else self.cluster.process_env(),
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # end_process also ends its job-server JVM
        )
        self._started.append((proc, job_name, log))
        return proc

    def log_tail(self, job_name: str, lines: int = 60) -> str:
        for _, name, log in self._started:
            if name == job_name:
                return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def wait_job_id(self, proc: subprocess.Popen, job_name: str, timeout_s: float = 180) -> str:
        def job_id():
            if proc.poll() is not None:
                raise AssertionError(f"pipeline process exited ({proc.returncode}):\n{self.log_tail(job_name)}")
            return self.cluster.rest.job_id_by_name(job_name)

        return wait_for(job_id, timeout_s, f"Flink job {job_name}")

    def start_streaming(
        self,
        module: str,
        args: typing.Callable[[str], typing.Sequence[str]],
        job_prefix: str,
        settle_timeout_s: float = 90,
    ) -> typing.Tuple[subprocess.Popen, str, str]:
        """Starts a streaming job and checks its start-up watermark.

        Fails when, once every task reports a watermark, all of them are +inf:
        the Beam 2.62 start-up race that ``--finish_bundle_before_checkpointing``
        (every Flink profile) closes; see flink/README.md. ``args(job_name)``
        gives the module's arguments. Returns (process, job id, job name).
        """
        rest = self.cluster.rest
        job_name = unique_job_name(job_prefix)
        proc = self.start(module, args(job_name), job_name)
        jid = self.wait_job_id(proc, job_name)
        rest.wait_state(jid, {"RUNNING"}, 120)
        # The job server stages ~150 MB of jars before the tasks run.
        wait_for(lambda: all(v["status"] == "RUNNING" for v in rest.job(jid)["vertices"]), 180, f"tasks of {job_name} RUNNING")
        wait_for(lambda: rest.watermarks_settled_at_max(jid) is not None, settle_timeout_s, f"watermarks of {job_name}")
        assert not rest.watermarks_settled_at_max(jid), (
            f"{job_name}: every watermark is +inf right after start-up (the Beam 2.62 race "
            f"--finish_bundle_before_checkpointing should prevent)\n{rest.describe(jid)}"
        )
        return proc, jid, job_name

    def stop(self, proc: subprocess.Popen, name: str) -> None:
        rest = self.cluster.rest
        try:
            jid = rest.job_id_by_name(name)
            if jid:
                rest.cancel_and_wait(jid)
        except Exception:  # the cluster may be gone; the process is ended below anyway
            pass
        end_process(proc)

    def stop_all(self) -> None:
        for proc, name, _ in self._started:
            self.stop(proc, name)


@pytest.fixture
def background_pipelines(flink_cluster, tmp_path) -> typing.Iterator[BackgroundPipelines]:
    pipelines = BackgroundPipelines(flink_cluster, tmp_path)
    try:
        yield pipelines
    finally:
        pipelines.stop_all()
