"""Throughput and peak memory of the frontend pipeline on the DirectRunner.

    python benchmarks/frontend_bench.py --events=1000000

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
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from beam_pipelines import generate  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--workdir", default=None, help="keep inputs/outputs here")
    parser.add_argument("--runner", default="DirectRunner")
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
        f"--input={events_path}", f"--output_dir={out}", f"--runner={args.runner}",
        "--pii_secret=benchmark-secret-0123456789",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak_kib = usage.ru_maxrss
    cpu_s = usage.ru_utime + usage.ru_stime
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-5000:], sep="\n")
        print(f"pipeline failed with exit code {proc.returncode}")
        return proc.returncode
    summary = [line for line in proc.stdout.splitlines() if line.strip()]
    print("\n".join(summary[-8:]))
    print(f"DirectRunner frontend pipeline: {args.events} events in {wall:.1f} s "
          f"= {args.events / wall:,.0f} events/s wall; {cpu_s:.1f} CPU-s "
          f"= {args.events / cpu_s:,.0f} events per CPU-second; "
          f"peak RSS {peak_kib / 1024 / 1024:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
