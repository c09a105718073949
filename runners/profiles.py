"""Runner option profiles, so a pipeline's command line stays short.

A profile is a named list of pipeline flags. ``--profile=NAME`` (or
``--profile NAME``) on a pipeline's command line is replaced by the profile's
flags; a flag the user gives explicitly wins and is not added again::

    python -m beam_pipelines.frontend --profile=flink-local --streaming \\
        --kafka_bootstrap=127.0.0.1:19092 --parallelism=1

runs on the local Flink cluster (``flink/cluster.sh up``) with parallelism 1
instead of the profile's 2. Print the profiles with their current values::

    python -m runners.profiles

Profiles
--------
``direct``
    In-process ``FnApiRunner``. Named explicitly because Beam's
    ``DirectRunner`` hands pipelines to the Prism runner, which downloads a
    binary from the internet at run time: offline that fails, and a network
    that drops packets makes it hang. Beam 2.62 did that for pipelines the
    FnApiRunner does not take (streaming ones); Beam 2.70 tries Prism first
    for every pipeline it supports, batch ones too, and falls back to the
    FnApiRunner when the download fails (checked on 2.70.0 here, offline).
``flink-local``
    The project's Flink 1.19 session cluster on 127.0.0.1:18081, submitted
    through the Beam job server that ``flink/cluster.sh install`` assembles
    (``FLINK_JOB_SERVER_JAR``). Python code runs in ``LOOPBACK`` workers inside
    the submitting process, so that process must stay alive while the job
    runs (for a streaming job: until it is cancelled).
``flink-k8s``
    A Flink cluster elsewhere (``FLINK_MASTER``, e.g. a port-forwarded REST
    endpoint) whose TaskManagers run a Beam Python worker pool sidecar on
    port 50000 (``EXTERNAL`` environment). The image must already contain the
    project: an external worker pool does not install staged artifacts.

Environment (through ``iheard_io.settings``, like every entry point):
``FLINK_MASTER``, ``FLINK_JOB_SERVER_JAR``, ``IHEARD_HOME``.
"""
from __future__ import annotations

import os
import sys
import typing

from iheard_io import settings

__all__ = ["PROFILES", "profile_flags", "expand_argv", "flag_name"]

FLINK_VERSION = "1.19"
BEAM_VERSION = "2.70.0"
LOCAL_FLINK_MASTER = "localhost:18081"
# Where flink/cluster.sh puts the job-server launcher (keep in sync).
_LAUNCHER_RELPATH = (
    "flink",
    "jobserver",
    BEAM_VERSION,
    f"beam-runners-flink-{FLINK_VERSION}-job-server-launcher-{BEAM_VERSION}.jar",
)

# Checkpoint every 10 s: a restart replays at most ~10 s of input, and the
# sinks (idempotent upserts) absorb the replay.
CHECKPOINTING_INTERVAL_MS = 10_000
# Flink's portable runner closes a bundle after this long even when it is not
# full; sinks flush per bundle, and an event passes two bundles (source stage,
# de-duplication stage) before Redis and PostgreSQL, so this bounds
# produce-to-sink latency. benchmarks/flink_bench.py at 30 events/s: 150 ms
# gave produce->Redis p50 0.40 s / p95 0.69 s, 1000 ms p50 1.65 s / p95 2.48 s,
# at no measurable cost in backlog throughput (both ~750-950 events/s).
MAX_BUNDLE_TIME_MS = 150
MAX_BUNDLE_SIZE = 1_000
# Finish open bundles before a checkpoint barrier instead of buffering their
# outputs into the checkpoint. Without it Beam's Flink runner (2.62; 2.70 see
# flink/README.md) can, at
# start-up, send Impulse's +inf watermark past the stage that discovers the
# Kafka partitions while that stage's outputs sit in the checkpoint buffer:
# the source never gets its partitions and every watermark downstream is +inf
# (flink/README.md, "Watermark of a Python SDF's output").
FINISH_BUNDLE_BEFORE_CHECKPOINTING = "--finish_bundle_before_checkpointing"
LOCAL_PARALLELISM = 2
# flink-local keeps keyed state on the TaskManager's heap (Beam's
# "filesystem" backend: heap state, checkpoints written to files), not in the
# cluster's default RocksDB. The jobs' state is bounded (de-duplication ids
# for the TTL, open sessions, archive windows), and RocksDB's serialisation
# and compaction doubled the TaskManager's CPU: benchmarks/flink_bench.py
# --events=100000 measured 1,656 events/s and 1,272 per CPU-second on RocksDB
# against 2,104 and 1,831 on the heap (flink/README.md, Performance). Give a
# job --state_backend=rocksdb when its state outgrows the TaskManager heap
# (a day of de-duplication ids at a high rate); flink-k8s keeps the cluster's
# RocksDB for that reason. (Beam 2.62 and 2.70 take "rocksdb" or "filesystem";
# Flink's newer name "hashmap" is refused at submission.)
LOCAL_STATE_BACKEND = "filesystem"
EXTERNAL_WORKER_POOL = "localhost:50000"

PROFILES = ("direct", "flink-local", "flink-k8s")
# --runner takes a fully qualified class name; "FnApiRunner" alone is not a
# registered runner name in Beam 2.62 or 2.70.
FN_API_RUNNER = "apache_beam.runners.portability.fn_api_runner.fn_runner.FnApiRunner"


def _default_job_server_jar(environ: typing.Mapping[str, str]) -> str:
    return (settings.value(environ, "FLINK_JOB_SERVER_JAR")
            or os.path.join(settings.iheard_home(environ), *_LAUNCHER_RELPATH))


def _local_checkpoint_dir(environ: typing.Mapping[str, str]) -> str:
    """Where flink/cluster.sh keeps the local cluster's checkpoints."""
    return "file://" + os.path.join(settings.iheard_home(environ), "flink", "checkpoints")


def profile_flags(name: str, environ: typing.Optional[typing.Mapping[str, str]] = None) -> typing.List[str]:
    """The flags of profile ``name``, resolved against ``environ`` (default: os.environ)."""
    env = settings.environment(environ)
    if name == "direct":
        return [f"--runner={FN_API_RUNNER}"]
    flink_common = [
        "--runner=FlinkRunner",
        f"--flink_version={FLINK_VERSION}",
        f"--flink_job_server_jar={_default_job_server_jar(env)}",
        f"--checkpointing_interval={CHECKPOINTING_INTERVAL_MS}",
        f"--max_bundle_time_mills={MAX_BUNDLE_TIME_MS}",
        f"--max_bundle_size={MAX_BUNDLE_SIZE}",
        FINISH_BUNDLE_BEFORE_CHECKPOINTING,
    ]
    if name == "flink-local":
        return flink_common + [
            f"--flink_master={settings.flink_master(env, LOCAL_FLINK_MASTER)}",
            "--environment_type=LOOPBACK",
            f"--parallelism={LOCAL_PARALLELISM}",
            f"--state_backend={LOCAL_STATE_BACKEND}",
            f"--state_backend_storage_path={_local_checkpoint_dir(env)}",
        ]
    if name == "flink-k8s":
        return flink_common + [
            f"--flink_master={settings.flink_master(env, LOCAL_FLINK_MASTER)}",
            "--environment_type=EXTERNAL",
            f"--environment_config={EXTERNAL_WORKER_POOL}",
        ]
    raise ValueError(f"unknown runner profile {name!r}; known: {', '.join(PROFILES)}")


def flag_name(arg: str) -> typing.Optional[str]:
    """``--foo=1`` and ``--foo`` -> ``foo``; anything not a long flag -> None."""
    if not arg.startswith("--") or arg == "--":
        return None
    return arg[2:].split("=", 1)[0]


def _pop_profile(argv: typing.Sequence[str]) -> typing.Tuple[typing.Optional[str], typing.List[str]]:
    rest: typing.List[str] = []
    name: typing.Optional[str] = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--profile" or arg.startswith("--profile="):
            if name is not None:
                raise ValueError("--profile given more than once")
            if arg == "--profile":
                if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                    raise ValueError("--profile needs a value, e.g. --profile=flink-local")
                name = argv[i + 1]
                i += 2
                continue
            name = arg.split("=", 1)[1]
            if not name:
                raise ValueError("--profile needs a value, e.g. --profile=flink-local")
        else:
            rest.append(arg)
        i += 1
    return name, rest


def expand_argv(
    argv: typing.Sequence[str], environ: typing.Optional[typing.Mapping[str, str]] = None
) -> typing.List[str]:
    """Replaces ``--profile NAME`` in ``argv`` by the profile's flags.

    The profile's flags go first and any flag the user gave (in either
    ``--flag=value`` or ``--flag value`` form) is left out of them, so the
    user's value is the only one. Without ``--profile`` ``argv`` is returned
    unchanged (as a new list).
    """
    name, rest = _pop_profile(list(argv))
    if name is None:
        return rest
    given = {flag_name(a) for a in rest} - {None}
    defaults = [f for f in profile_flags(name, environ) if flag_name(f) not in given]
    return defaults + rest


def main(argv: typing.Optional[typing.Sequence[str]] = None) -> int:
    names = list(argv if argv is not None else sys.argv[1:]) or list(PROFILES)
    for name in names:
        print(f"{name}:")
        for flag in profile_flags(name):
            print(f"  {flag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
