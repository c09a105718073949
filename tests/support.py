"""Helpers shared by the test layers and the benchmarks.

``services/services.sh env`` and ``flink/cluster.sh env`` print shell-quoted
``export NAME=value`` lines; ``parse_exports`` reads them the way the shell
would, ``script_env`` runs a script's ``env`` command and reads its output.
``end_process`` ends a child process (a LOOPBACK pipeline submitter, say):
terminate, then kill if it does not exit.
"""
from __future__ import annotations

import shlex
import os
import subprocess
import typing

__all__ = ["parse_exports", "script_env", "end_process", "instance_port", "instance_ports", "PrivateInstance"]


def parse_exports(text: str) -> typing.Dict[str, str]:
    """Parses ``export NAME=value`` lines (shell-quoted values) into a dict."""
    env = {}
    for line in text.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, value = words[1].split("=", 1)
            env[name] = value
    return env


def script_env(script: str) -> typing.Dict[str, str]:
    """The settings ``bash <script> env`` prints."""
    printed = subprocess.run(["bash", script, "env"], check=True, capture_output=True, text=True)
    return parse_exports(printed.stdout)


def end_process(proc: subprocess.Popen, timeout_s: float = 30) -> None:
    """Terminates ``proc`` if it still runs; kills it when it has not exited
    within ``timeout_s``. A process started with ``start_new_session=True``
    is ended with its whole process group: a pipeline process on Flink has
    started a job-server JVM that a SIGTERM to the Python process alone
    leaves running."""
    import signal

    def signal_all(sig):
        try:
            if os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, sig)
                return
        except ProcessLookupError:
            return
        proc.send_signal(sig)

    if proc.poll() is not None:
        try:  # the leader is gone; its group (a job server) may not be
            os.killpg(proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
        return
    signal_all(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        signal_all(signal.SIGKILL)
        proc.wait(timeout=timeout_s)
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass


def proc_status_kib(pid: int, field: str) -> typing.Optional[int]:
    """A ``kB`` field of /proc/<pid>/status (``VmRSS``, ``VmHWM`` ...); None if gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _daemon_pids(repo: str, daemon: str) -> typing.List[int]:
    out = subprocess.run(["bash", os.path.join(repo, "flink/cluster.sh"), "pids"],
                         capture_output=True, text=True, check=True).stdout
    return [int(line.split()[1]) for line in out.splitlines() if line.startswith(daemon + " ")]


def taskmanager_pids(repo: str) -> typing.List[int]:
    """Pids of the local Flink cluster's TaskManagers (``flink/cluster.sh pids``)."""
    return _daemon_pids(repo, "taskexecutor")


def jobmanager_pids(repo: str) -> typing.List[int]:
    """Pids of the local Flink cluster's JobManager (``flink/cluster.sh pids``)."""
    return _daemon_pids(repo, "standalonesession")


# ------------------------------------------------------- named instances ---
# services/instance.sh: a named instance's ports are
# INSTANCE_PORT_BASE + INSTANCE_PORT_BLOCK * slot + offset.
INSTANCE_PORT_BASE = 20000
INSTANCE_PORT_BLOCK = 100
INSTANCE_SLOTS = 50
INSTANCE_PORT_OFFSETS = {
    "kafka": 0, "kafka_controller": 1, "postgres": 2, "redis": 3, "s3": 4,
    "flink_rest": 10, "flink_jm_rpc": 11, "flink_blob": 12,
    "flink_tm_rpc": (13, 17), "flink_tm_data": (18, 22), "flink_query": (23, 32),
    "flink_tm_prometheus": (40, 48), "flink_jm_prometheus": 49,
    "prometheus": 60, "exporter": 61,
}
# The default set (docs/ARCHITECTURE.md, flink/conf) and the --secure set.
DEFAULT_PORTS = frozenset([19092, 19093, 15433, 16380, 19000, 18081, 19259, *range(16123, 16145), *range(19249, 19259)])
SECURE_PORTS = frozenset([29092, 29093, 25433, 26380, 29000])


def instance_port(slot: int, what: str) -> int:
    """First port of ``what`` (a key of INSTANCE_PORT_OFFSETS) for instance slot ``slot``."""
    offset = INSTANCE_PORT_OFFSETS[what]
    first = offset[0] if isinstance(offset, tuple) else offset
    return INSTANCE_PORT_BASE + INSTANCE_PORT_BLOCK * slot + first


def instance_ports(slot: int) -> typing.Set[int]:
    """Every port instance ``slot`` may listen on."""
    out = set()
    for offset in INSTANCE_PORT_OFFSETS.values():
        lo, hi = offset if isinstance(offset, tuple) else (offset, offset)
        out.update(INSTANCE_PORT_BASE + INSTANCE_PORT_BLOCK * slot + o for o in range(lo, hi + 1))
    return out


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVICES_SH = os.path.join(REPO_ROOT, "services", "services.sh")
CLUSTER_SH = os.path.join(REPO_ROOT, "flink", "cluster.sh")


def _head_and_tail(text: str, head: int = 3000, tail: int = 4000) -> str:
    """A script's own messages come first, the daemons' log tails it prints
    on failure last: keep both ends of a long stderr."""
    if len(text) <= head + tail:
        return text
    return f"{text[:head]}\n[... {len(text) - head - tail} characters ...]\n{text[-tail:]}"


class PrivateInstance:
    """A named instance of services.sh (and optionally flink/cluster.sh) for one test.

    Use as a context manager (or through a fixture that does): ``__exit__``
    always stops what it started and deletes the instance's folder, also when
    the test failed or ``up`` itself failed half way.
    """

    def __init__(self, name: str, services: typing.Sequence[str] = ("kafka", "postgres", "redis", "s3"),
                 flink: bool = False, up_timeout_s: float = 900):
        self.name = name
        self.services = list(services)
        self.flink = flink
        self.up_timeout_s = up_timeout_s
        self.env: typing.Dict[str, str] = {}
        self.flink_env: typing.Dict[str, str] = {}

    def _run(self, script: str, *args: str, timeout_s: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "IHEARD_INSTANCE"}
        done = subprocess.run(["bash", script, *args, f"--instance={self.name}"], capture_output=True, text=True,
                              timeout=timeout_s, env=env, stdin=subprocess.DEVNULL)
        if check and done.returncode != 0:
            raise RuntimeError(f"{os.path.basename(script)} {' '.join(args)} --instance={self.name} failed "
                               f"({done.returncode}):\n{done.stdout[-2000:]}\n{_head_and_tail(done.stderr)}")
        return done

    def services_sh(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self._run(SERVICES_SH, *args, **kw)

    def cluster_sh(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self._run(CLUSTER_SH, *args, **kw)

    def up(self) -> "PrivateInstance":
        self.services_sh("up", *self.services, timeout_s=self.up_timeout_s)
        self.env = parse_exports(self.services_sh("env").stdout)
        if self.flink:
            self.cluster_sh("up", timeout_s=self.up_timeout_s)
            self.flink_env = parse_exports(self.cluster_sh("env").stdout)
        return self

    def stop(self, service: str) -> None:
        """Stops one service of this instance (PostgreSQL: a fast shutdown)."""
        self.services_sh("down", service, timeout_s=120)

    def start(self, service: str) -> None:
        self.services_sh("up", service, timeout_s=self.up_timeout_s)

    def taskmanager_pids(self) -> typing.List[int]:
        out = self.cluster_sh("pids").stdout
        return [int(line.split()[1]) for line in out.splitlines() if line.startswith("taskexecutor ")]

    def process_env(self) -> typing.Dict[str, str]:
        """Environment for a pipeline process against this instance."""
        env = {k: v for k, v in os.environ.items() if k != "IHEARD_INSTANCE"}
        env.update(self.env)
        env.update(self.flink_env)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH")]))
        return env

    def down(self) -> None:
        """Stops everything of this instance and deletes its folder; never touches another instance."""
        import shutil

        errors = []
        if self.flink:
            done = self.cluster_sh("down", timeout_s=180, check=False)
            if done.returncode:
                errors.append(done.stderr[-2000:])
        done = self.services_sh("reset", timeout_s=180, check=False)
        if done.returncode:
            errors.append(done.stderr[-2000:])
        instance_dir = self.env.get("IHEARD_INSTANCE_DIR") or parse_exports(
            self.services_sh("env", check=False).stdout).get("IHEARD_INSTANCE_DIR")
        if instance_dir and not errors and not os.environ.get("IHEARD_KEEP_INSTANCES"):
            shutil.rmtree(instance_dir, ignore_errors=True)
        if errors:
            raise RuntimeError(f"tearing down instance {self.name} failed:\n" + "\n".join(errors))

    def __enter__(self) -> "PrivateInstance":
        try:
            return self.up()
        except BaseException:
            self.down()
            raise

    def __exit__(self, *exc) -> None:
        self.down()
