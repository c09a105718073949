"""Hostile input at full size (issue 15): 100,000 hostile lines mixed into
100,000 good frontend events, on the DirectRunner with embedded outputs.

    python benchmarks/hostile_bench.py                     # 100,000 + 100,000
    python benchmarks/hostile_bench.py --good=20000 --hostile=20000 --huge_lines=2

Runs ``python -m beam_pipelines.frontend`` twice in child processes, on the
good events alone and on the mix (``beam_pipelines.hostile_input``; 10 MB
lines are limited to ``--huge_lines``), then prints the figures the issue's
README table needs: lines per kind, injected bad lines against dead letters
(matched by line number, missing, extra, duplicated), whether the good rows
equal the clean run's, injection rows stored verbatim, and the wall time of
each run. Exit code 1 when a check fails. ``tests/pipeline/test_hostile_input.py``
runs the same checks on a smaller mix in CI.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from beam_pipelines import generate  # noqa: E402
from beam_pipelines.hostile_input import hostile_lines, mix_lines  # noqa: E402


def _run(input_path: str, out: str, runner: str) -> float:
    subprocess.run(["rm", "-rf", out], check=True)
    cmd = [sys.executable, "-m", "beam_pipelines.frontend", f"--input={input_path}",
           f"--output_dir={out}", f"--runner={runner}",
           "--pii_secret=hostile-bench-secret-0123456789"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall_s = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-5000:], sep="\n")
        raise SystemExit(f"pipeline failed on {input_path} (exit {proc.returncode})")
    return wall_s


def _rows(con, table, exclude_sessions):
    columns = [c for (c,) in con.execute(
        "select column_name from information_schema.columns where table_name = ? "
        "order by ordinal_position", [table]).fetchall() if c != "updated_at"]
    index = columns.index("session_id")
    rows = con.execute(f"select {', '.join(columns)} from {table}").fetchall()
    return sorted((r for r in rows if r[index] not in exclude_sessions), key=repr)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--good", type=int, default=100_000)
    parser.add_argument("--hostile", type=int, default=100_000)
    parser.add_argument("--huge_lines", type=int, default=5)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--runner", default="DirectRunner")
    args = parser.parse_args(argv)
    import duckdb

    workdir = args.workdir or tempfile.mkdtemp(prefix="hostile-bench-")
    os.makedirs(workdir, exist_ok=True)
    good = [line.encode() for line in generate.frontend_events(
        args.good, seed=15, malformed_ratio=0.0, duplicate_ratio=0.01)]
    hostile = list(hostile_lines(args.hostile, huge_lines=args.huge_lines))
    kinds = {id(line): kind for kind, line in hostile}
    mixed = mix_lines(good, [line for _, line in hostile])
    kind_at = {n: kinds[id(line)] for n, line in enumerate(mixed, start=1) if id(line) in kinds}
    paths = {}
    for name, lines in (("good", good), ("mixed", mixed)):
        paths[name] = os.path.join(workdir, f"{name}.jsonl")
        with open(paths[name], "wb") as f:
            for line in lines:
                f.write(line + b"\n")
    size_mb = os.path.getsize(paths["mixed"]) / 1e6

    wall = {name: _run(paths[name], os.path.join(workdir, f"out-{name}"), args.runner)
            for name in ("good", "mixed")}
    clean = duckdb.connect(os.path.join(workdir, "out-good", "iheardai.duckdb"), read_only=True)
    dirty = duckdb.connect(os.path.join(workdir, "out-mixed", "iheardai.duckdb"), read_only=True)

    bad = {n for n, kind in kind_at.items() if kind != "injection"}
    letters = dirty.execute("select source_offset, stage, error_class, error_message "
                            "from failed_events").fetchall()
    offsets = collections.Counter(offset for offset, *_ in letters)
    without_reason = sum(1 for _, stage, cls, msg in letters if not (stage and cls and msg))
    injections = [json.loads(line) for kind, line in hostile if kind == "injection"]
    injected_sessions = {e["session_id"] for e in injections}
    stored = {r[0]: r for r in dirty.execute(
        "select event_id, session_id, event_type, user_id, page_url from frontend_analytics"
    ).fetchall()}
    verbatim = sum(1 for e in injections if stored.get(e["event_id"]) == (
        e["event_id"], e["session_id"], e["event_type"], e["user_id"], e["page_url"]))
    same = {table: _rows(clean, table, set()) == _rows(dirty, table, injected_sessions)
            for table in ("frontend_analytics", "frontend_sessions")}
    clean_letters = clean.execute("select count(*) from failed_events").fetchone()[0]

    print(f"input: {len(good)} good + {len(hostile)} hostile lines ({size_mb:.0f} MB), "
          f"runner {args.runner}")
    for kind, n in sorted(collections.Counter(kind_at.values()).items()):
        print(f"  {kind:18} {n:7}")
    checks = {
        "bad lines injected": len(bad),
        "dead letters": len(letters),
        "bad lines without a dead letter": len(bad - set(offsets)),
        "dead letters for good/injection lines": len(set(offsets) - bad),
        "lines with more than one dead letter": sum(1 for n in offsets.values() if n > 1),
        "dead letters without a reason": without_reason,
        "dead letters in the clean run": clean_letters,
        "injection events stored verbatim": f"{verbatim} / {len(injections)}",
        "good analytics rows identical": same["frontend_analytics"],
        "good session rows identical": same["frontend_sessions"],
        "wall time clean run (s)": f"{wall['good']:.1f}",
        "wall time mixed run (s)": f"{wall['mixed']:.1f}",
    }
    for name, value in checks.items():
        print(f"{name:40} {value}")
    ok = (len(bad) == len(letters) and bad == set(offsets) and not without_reason
          and not clean_letters and verbatim == len(injections) and all(same.values()))
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
