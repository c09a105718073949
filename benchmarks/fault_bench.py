"""Faults on a private instance: events, lost, doubled and recovery time per fault.

    python benchmarks/fault_bench.py                       # every fault, 30 s outages
    python benchmarks/fault_bench.py --faults=kafka,taskmanager --outage-s=60 --rate=25
    python benchmarks/fault_bench.py --faults=taskmanager --kill-events=200000

Starts a named instance of the services and of Flink (``--instance=bench-...``:
its own ports and folders, torn down at the end, so the default set keeps
serving), one streaming frontend job on it and the steady producer of
tests/flink/fault_workload.py (``--rate`` visits/s, 4 events each), then
injects the faults one after another, as tests/flink/test_faults.py does:

    kafka        the broker stopped for --outage-s, then started
    postgres     PostgreSQL stopped (fast shutdown) for --outage-s
    s3           the S3 server stopped for --outage-s (its objects put back)
    redis        Redis stopped (SHUTDOWN SAVE) for --outage-s
    taskmanager  the TaskManager SIGKILLed --kills times, a new one started;
                 with --kill-events=N the producer first publishes N events at
                 full speed and kill k comes once k/(kills+1) of them are
                 stored (``FaultRun.kill_taskmanagers``)

and prints one line per fault: events acknowledged so far, lost (acknowledged
but not in frontend_analytics once caught up), doubled (an event id stored
twice), the recovery time: from the service back (the new TaskManager
started) until every event acknowledged by then is in frontend_analytics,
and the fault's wall time (from its start until that check passed).
The last lines check sessions, Redis and the archive over the whole run,
``--sessions-wait-s`` after the last event at most (the session close-out).
Figures vary with machine load (2 cores shared with the instance's Kafka,
PostgreSQL, Redis, S3 and Flink).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.flink import fault_workload as fw  # noqa: E402
from tests.flink import test_faults as tf  # noqa: E402
from tests.support import PrivateInstance  # noqa: E402

FAULTS = ("kafka", "postgres", "s3", "redis", "taskmanager")


def run_fault(run: "tf.FaultRun", fault: str, outage_s: float, kills: int, kill_events: int = 0) -> str:
    started_at = time.monotonic()
    label = {"kafka": "broker outage", "postgres": "PostgreSQL outage", "s3": "S3 outage", "redis": "Redis outage",
             "taskmanager": f"{kills} TaskManager kills"}[fault]
    if fault == "s3":
        held = fw.snapshot_archive(run.env)
        back_at = run.outage("s3", outage_s)
        fw.restore_archive(run.env, held)
    elif fault == "redis":
        back_at = run.outage("redis", outage_s, stop=lambda: tf.redis_shutdown_save(run.env))
    elif fault == "taskmanager":
        back_at = run.kill_taskmanagers(kills, kill_events)
    else:
        back_at = run.outage(fault, outage_s)
    run.wait_running()
    try:
        run.check_caught_up(label, back_at)
        note = ""
    except AssertionError as e:
        note = "  FAILED: " + str(e).splitlines()[0][:100]
    run.results.setdefault(label, {})["wall_s"] = round(time.monotonic() - started_at)
    return label + note


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--faults", default=",".join(FAULTS))
    p.add_argument("--outage-s", type=float, default=30)
    p.add_argument("--kills", type=int, default=3)
    p.add_argument("--kill-events", "--kill_events", type=int, default=tf.KILL_BACKLOG_EVENTS,
                   help="events published at full speed when the kill phase starts; the kills come while the job "
                        "drains them (kill k once k/(kills+1) of them are stored)")
    p.add_argument("--rate", type=float, default=tf.VISITS_PER_S, help="visits per second (4 events each)")
    p.add_argument("--sessions-wait-s", "--sessions_wait_s", type=float, default=30,
                   help="after the last event, wait up to this long for every session's row (polled every 10 s) "
                        "and print how long the session close-out took")
    args = p.parse_args(argv)
    faults = [f for f in args.faults.split(",") if f]
    unknown = set(faults) - set(FAULTS)
    if unknown:
        p.error(f"unknown faults {sorted(unknown)}; known: {FAULTS}")
    tf.VISITS_PER_S = args.rate
    t0 = time.monotonic()
    with PrivateInstance(f"bench-{uuid.uuid4().hex[:6]}", flink=True) as instance:
        print(f"instance {instance.name} up in {time.monotonic() - t0:.0f} s", flush=True)
        run = tf.FaultRun(instance, pathlib.Path(tempfile.mkdtemp(prefix="fault-bench-")))
        run.producer.interval_s = 1.0 / args.rate
        try:
            run.start()
            labels = [run_fault(run, fault, args.outage_s, args.kills, args.kill_events) for fault in faults]
            run.producer.finish()
            finished_at = time.monotonic()
            time.sleep(min(30.0, args.sessions_wait_s))
            sessions = fw.check_sessions(run.env, run.producer)
            while sessions["missing_rows"] and time.monotonic() - finished_at < args.sessions_wait_s:
                time.sleep(10)
                sessions = fw.check_sessions(run.env, run.producer)
            closed_s = time.monotonic() - finished_at
            archive = fw.check_archive(run.env, run.producer, run.prefix)
        finally:
            run.producer.stop()
            run.pipelines.stop_all()
    print(f"\n{'fault':28} {'events':>8} {'lost':>6} {'doubled':>8} {'recovery s':>11} {'wall s':>7}")
    for label in labels:
        name = label.split("  FAILED")[0]
        r = run.results.get(name, {})
        print(f"{name:28} {r.get('events', '-'):>8} {r.get('lost', '-'):>6} {r.get('doubled', '-'):>8} "
              f"{r.get('recovery_s', '-'):>11} {r.get('wall_s', '-'):>7}{label[len(name):]}")
    print(f"\nsessions {sessions['sessions']}: missing rows {len(sessions['missing_rows'])}, doubled "
          f"{len(sessions['doubled'])}, short {len(sessions['short'])}, Redis mismatches "
          f"{len(sessions['redis_mismatch'])}; archive: {archive['archived']} of {archive['stored']} events, "
          f"lost {len(archive['lost'])}, doubled {len(archive['doubled'])} ({closed_s:.0f} s after the last event)")
    if not sessions["missing_rows"]:
        print(f"session close-out: every one of {sessions['sessions']} sessions had its row "
              f"{closed_s:.0f} s after the last event (polled every 10 s)")
    print(f"producer: {len(run.producer.acked)} events acknowledged, {run.producer.send_errors} sends refused; "
          f"total {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
