"""Dead-letter replay at size: 100,000 dead letters on the embedded default.

    python benchmarks/replay_bench.py                  # 100,000 dead letters
    python benchmarks/replay_bench.py --dead_letters=20000

Builds a DuckDB file under a temporary ``--output_dir`` holding N frontend
dead letters as the job stores them: N sample events sent by a buggy
producer (the time as ``ts`` in epoch seconds), each judged by the job's
own parse step (``frontend.chain``) and stored with ``failure_row``. Then,
each in a child process (``python -m beam_pipelines.replay``, as a user runs
it, on the DirectRunner):

1. ``--dry_run`` with the fix spec (rename ts -> timestamp, seconds -> ms):
   wall time, and the in-process judging time it prints;
2. the replay itself: wall time and events/s (events now stored / wall
   time), including the aggregate recompute and the marks;
3. the replay again: nothing to do (wall time).

Prints one line per step and the command lines. Exit code 1 when the replay
does not store every event or the second one finds something.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from beam_pipelines import frontend  # noqa: E402
from beam_pipelines.generate import frontend_events  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from beam_pipelines.options import IheardOptions, resolve_connections  # noqa: E402
from iheard_io.embedded import close_embedded  # noqa: E402
from iheard_io.sql_tables import SqlTables  # noqa: E402
from apache_beam.pvalue import TaggedOutput  # noqa: E402
from schemas.records import SourceRecord  # noqa: E402
from schemas.tables import failure_row  # noqa: E402

SECRET = "replay-bench-secret-0123456789"
SPEC = "version: 1\nrename:\n  ts: timestamp\ntimestamp_unit:\n  timestamp: s\n"


def build_dead_letters(db_path: str, count: int, seed: int) -> int:
    """Stores ``count`` dead letters of the buggy producer; returns how many."""
    # The job's own parse step, as it runs in the pipeline.
    options = PipelineOptions([f"--pii_secret={SECRET}"])
    fn = frontend.chain(resolve_connections(options), options.view_as(IheardOptions))[0].dofn()
    fn.setup()
    rows = []
    for offset, line in enumerate(frontend_events(count, seed=seed, malformed_ratio=0.0,
                                                  duplicate_ratio=0.0)):
        obj = json.loads(line)
        obj["ts"] = obj.pop("timestamp") // 1000
        record = SourceRecord(json.dumps(obj).encode(), "frontend_user_interaction", 0, offset)
        for out in fn.process(record):
            if isinstance(out, TaggedOutput):
                rows.append(failure_row(out.value))
    with SqlTables.open(embedded_db=db_path) as db:
        for i in range(0, len(rows), 10_000):
            db.upsert("failed_events", rows[i:i + 10_000])
    close_embedded(db_path)
    return len(rows)


def _replay(out: str, spec: str, *extra: str):
    cmd = [sys.executable, "-m", "beam_pipelines.replay", "--pipeline=frontend",
           f"--output_dir={out}", f"--fix_spec={spec}", f"--pii_secret={SECRET}",
           "--runner=DirectRunner", *extra]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall_s = time.perf_counter() - started
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-5000:], sep="\n")
        raise SystemExit(f"replay failed (exit {proc.returncode})")
    shown = " ".join(c if "=" not in c or not c.startswith("--output_dir") else
                     "--output_dir=<tmp>" for c in cmd[1:])
    return wall_s, proc.stdout, "python " + shown.replace(spec, "fix.yaml")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dead_letters", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=31)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="replay-bench-") as tmp:
        out = os.path.join(tmp, "output")
        spec = os.path.join(tmp, "fix.yaml")
        with open(spec, "w", encoding="utf-8") as f:
            f.write(SPEC)
        t0 = time.perf_counter()
        n = build_dead_letters(os.path.join(out, "iheardai.duckdb"), args.dead_letters, args.seed)
        print(f"dead letters stored: {n} ({time.perf_counter() - t0:.1f} s to build)")

        wall, stdout, cmd = _replay(out, spec, "--dry_run", "--examples=1")
        judged = re.search(r"judged in ([0-9.]+) s", stdout)
        passing = re.search(r"would now pass: (\d+)", stdout)
        print(f"dry run: {wall:.1f} s wall (process start, selection and judging; judging "
              f"alone {judged.group(1) if judged else '?'} s), would pass "
              f"{passing.group(1) if passing else '?'} of {n}\n  {cmd}")

        wall, stdout, cmd = _replay(out, spec, "--run_id=bench1")
        stored = int(re.search(r"(\d+) now stored", stdout).group(1))
        phases = re.search(r"^\[replay\] .* s \((\{[^}]*\})\)$", stdout, re.MULTILINE)
        print(f"replay: {wall:.1f} s wall, {stored} events stored, {stored / wall:,.0f} events/s "
              f"(selection, fix, the frontend chain on the DirectRunner, sinks, session "
              f"recompute, marks; seconds by phase {phases.group(1) if phases else '?'})"
              f"\n  {cmd}")

        wall, stdout, cmd = _replay(out, spec, "--run_id=bench2")
        again = int(re.search(r"(\d+) dead letters selected", stdout).group(1))
        print(f"replay again: {wall:.1f} s wall, {again} dead letters selected")
    ok = stored == n and again == 0
    if not ok:
        print("FAILED: the replay did not store every event, or the second one found work")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
