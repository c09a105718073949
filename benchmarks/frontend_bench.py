"""Throughput and peak memory of a bounded frontend run from a file.

    python benchmarks/frontend_bench.py --events=1000000                        # DirectRunner
    python benchmarks/frontend_bench.py --events=1000000 --profile=flink-local  # local Flink, batch

With ``--profile=flink-local`` the same file runs as a bounded (batch) job on
the local Flink cluster (``flink/cluster.sh up``), whose shuffles spill to
disk instead of living in the runner's memory; the TaskManager's resident
memory is sampled during the run and printed beside the submitting process's.

Generates the events to a gzip JSONL file first (not timed), then runs
``python -m beam_pipelines.frontend`` on it in a child process with embedded
outputs, and prints wall time, events/s, CPU time (events per CPU-second is the
figure to compare on a shared machine) and the child's peak RSS (from
``getrusage(RUSAGE_CHILDREN)``, so it covers the whole runner process). Run
``benchmarks/chain_bench.py`` for the pure transform chain without Beam.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from beam_pipelines import generate  # noqa: E402
from tests.support import proc_status_kib, taskmanager_pids  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--workdir", default=None, help="keep inputs/outputs here")
    parser.add_argument("--runner", default="DirectRunner")
    parser.add_argument("--profile", default=None, help="e.g. flink-local (instead of --runner)")
    args = parser.parse_args(argv)

    workdir = args.workdir or tempfile.mkdtemp(prefix="frontend-bench-")
    os.makedirs(workdir, exist_ok=True)
    events_path = os.path.join(workdir, f"events-{args.events}.jsonl.gz")
    if not os.path.exists(events_path):
        t0 = time.perf_counter()
        generate.write_lines(generate.frontend_events(args.events, seed=42), events_path)
        print(f"generated {args.events} events in {time.perf_counter() - t0:.1f} s -> {events_path}")

    out = os.path.join(workdir, "out")
    subprocess.run(["rm", "-rf", out], check=True)
    cmd = [
        sys.executable, "-m", "beam_pipelines.frontend",
        f"--input={events_path}", f"--output_dir={out}",
        f"--profile={args.profile}" if args.profile else f"--runner={args.runner}",
        "--pii_secret=benchmark-secret-0123456789",
    ]
    tm_peak = {"kib": 0}
    stop = threading.Event()
    if args.profile == "flink-local":
        tm_pids = taskmanager_pids(REPO)

        def sample():
            while not stop.wait(0.5):
                tm_peak["kib"] = max(tm_peak["kib"], sum(proc_status_kib(pid, 'VmRSS') or 0 for pid in tm_pids))
        threading.Thread(target=sample, daemon=True).start()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    stop.set()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak_kib = usage.ru_maxrss
    cpu_s = usage.ru_utime + usage.ru_stime
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-5000:], sep="\n")
        print(f"pipeline failed with exit code {proc.returncode}")
        return proc.returncode
    summary = [line for line in proc.stdout.splitlines() if line.strip()]
    print("\n".join(summary[-8:]))
    where = args.profile or args.runner
    print(f"{where} frontend pipeline: {args.events} events in {wall:.1f} s "
          f"= {args.events / wall:,.0f} events/s wall; {cpu_s:.1f} CPU-s of the submitting "
          f"process tree (= {args.events / cpu_s:,.0f} events per CPU-second on the DirectRunner, "
          f"which runs everything there); peak RSS {peak_kib / 1024 / 1024:.2f} GiB (largest process of that tree)")
    if tm_peak["kib"]:
        print(f"TaskManager resident memory, peak while running: {tm_peak['kib'] / 1024 / 1024:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
