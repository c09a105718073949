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

__all__ = ["parse_exports", "script_env", "end_process"]


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
