"""Load test: drive the collector (HTTP) or Kafka (kafka-python) at a fixed
rate with seed-shaped widget events; print achieved rate, errors and latency
percentiles, with a progress line while it runs.

    eval "$(bash services/services.sh env)"
    python -m collector --port 8000 --kafka_bootstrap=$KAFKA_BOOTSTRAP \\
        --frontend_topic=loadtest --rate_limit_per_s=0 &
    python -m collector.loadtest --duration=300 --rate=1000 --target=collector --url=http://127.0.0.1:8000
    python -m collector.loadtest --duration=300 --rate=1000 --target=kafka \\
        --kafka_bootstrap=$KAFKA_BOOTSTRAP --topic=loadtest

``--rate`` is events per second; ``--batch`` events go in one request
(collector) so requests/s = rate / batch. Sends are scheduled open-loop
(event i at ``start + i / rate``); when the target cannot keep up, at most
``--concurrency`` requests are in flight and the achieved rate drops below
the asked one. Latency is from a request's start to its answer (collector:
the 202, i.e. Kafka's acknowledgement through the collector; kafka: the
producer's delivery callback with ``acks=all``).

Events come from ``beam_pipelines.generate`` (the widget's ``trackEvent``
shape, valid, dated now). Targets must be on this machine (loopback) unless
``--allow_remote`` is given.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import ipaddress
import itertools
import json
import sys
import threading
import time
import typing
import urllib.parse

__all__ = ["LoadStats", "percentile", "main"]


def percentile(sorted_values: typing.Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending sequence."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


class LoadStats:
    """Thread-safe tallies: events ok, errors by kind, latencies (s) per request."""

    def __init__(self):
        self._lock = threading.Lock()
        self.ok_events = 0
        self.sent_events = 0
        self.errors: typing.Counter[str] = collections.Counter()
        self.latencies: typing.List[float] = []

    def sent(self, events: int) -> None:
        with self._lock:
            self.sent_events += events

    def ok(self, events: int, latency_s: float) -> None:
        with self._lock:
            self.ok_events += events
            self.latencies.append(latency_s)

    def error(self, kind: str, events: int) -> None:
        with self._lock:
            self.errors[kind] += events

    def snapshot(self) -> dict:
        with self._lock:
            lat = sorted(self.latencies[-5000:])
            return {"sent": self.sent_events, "ok": self.ok_events, "errors": sum(self.errors.values()),
                    "p50_ms": percentile(lat, 50) * 1000, "p99_ms": percentile(lat, 99) * 1000}

    def summary(self, elapsed_s: float) -> dict:
        with self._lock:
            lat = sorted(self.latencies)
        return {
            "elapsed_s": round(elapsed_s, 2),
            "events_sent": self.sent_events,
            "events_ok": self.ok_events,
            "achieved_events_per_s": round(self.ok_events / elapsed_s, 1) if elapsed_s > 0 else 0.0,
            "errors": dict(self.errors),
            "error_events": sum(self.errors.values()),
            "latency_ms": {f"p{q}": round(percentile(lat, q) * 1000, 2) for q in (50, 90, 99)}
            | {"max": round(lat[-1] * 1000, 2) if lat else float("nan")},
        }


def _events(rate: float, duration_s: float) -> typing.Iterator[bytes]:
    from beam_pipelines.generate import frontend_events

    total = int(rate * duration_s) + 1
    start_ms = int(time.time() * 1000)
    run = f"{start_ms:x}"
    for line in frontend_events(total, seed=start_ms % 100_000, malformed_ratio=0.0,
                                duplicate_ratio=0.0, start_ms=start_ms):
        # Unique sessions per run, so repeated runs never collide downstream.
        yield line.replace('"sess_', f'"sess_lt{run}_').encode("utf-8")


def _progress(stats: LoadStats, start: float, duration_s: float, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        s = stats.snapshot()
        elapsed = time.monotonic() - start
        sys.stderr.write(
            f"\r[{elapsed:5.1f}/{duration_s:.0f} s] sent {s['sent']} ok {s['ok']} errors {s['errors']} "
            f"rate {s['ok'] / max(elapsed, 1e-9):8.1f} ev/s p50 {s['p50_ms']:6.2f} ms p99 {s['p99_ms']:7.2f} ms ")
        sys.stderr.flush()
    sys.stderr.write("\n")


async def _drive_collector(args, stats: LoadStats) -> float:
    # aiohttp's client: about 4x the requests per CPU second of httpx's here,
    # and the load tool shares the machine's two cores with what it measures.
    import aiohttp

    url = args.url.rstrip("/") + "/api/analytics"
    events = _events(args.rate, args.duration)
    req_rate = args.rate / args.batch
    in_flight = asyncio.Semaphore(args.concurrency)
    tasks = set()
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as client:

        async def one(body: bytes, n: int):
            t0 = time.perf_counter()
            try:
                async with client.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status == 202:
                        stats.ok(n, time.perf_counter() - t0)
                    else:
                        stats.error(f"http_{resp.status}", n)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                stats.error(type(exc).__name__, n)
            finally:
                in_flight.release()

        start = time.monotonic()
        for i in itertools.count():
            due = start + i / req_rate
            if due - start >= args.duration:
                break
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await in_flight.acquire()
            if time.monotonic() - start >= args.duration:
                in_flight.release()
                break
            batch = list(itertools.islice(events, args.batch))
            body = batch[0] if args.batch == 1 else b"[" + b",".join(batch) + b"]"
            stats.sent(len(batch))
            task = asyncio.create_task(one(body, len(batch)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=30.0)
        return time.monotonic() - start


def _drive_kafka(args, stats: LoadStats) -> float:
    from kafka import KafkaProducer

    from collector.publisher import DEFAULT_PRODUCER_CONFIG

    producer = KafkaProducer(bootstrap_servers=args.kafka_bootstrap,
                             **{k: v for k, v in DEFAULT_PRODUCER_CONFIG.items()})
    events = _events(args.rate, args.duration)
    start = time.monotonic()
    try:
        for i, value in enumerate(events):
            due = start + i / args.rate
            if due - start >= args.duration:
                break
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            session = json.loads(value)["session_id"].encode()
            t0 = time.perf_counter()
            stats.sent(1)
            future = producer.send(args.topic, key=session, value=value)
            future.add_callback(lambda _md, t0=t0: stats.ok(1, time.perf_counter() - t0))
            future.add_errback(lambda exc: stats.error(type(exc).__name__, 1))
        producer.flush(timeout=30)
        return time.monotonic() - start
    finally:
        producer.close(timeout=10)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m collector.loadtest", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=60.0, help="seconds")
    p.add_argument("--rate", type=float, default=1000.0, help="events per second")
    p.add_argument("--target", choices=("collector", "kafka"), default="collector")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="collector base URL")
    p.add_argument("--batch", type=int, default=1, help="events per HTTP request (collector)")
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight at most (collector)")
    p.add_argument("--kafka_bootstrap", default="127.0.0.1:19092")
    p.add_argument("--topic", default=None, help="topic for --target=kafka (required there)")
    p.add_argument("--allow_remote", action="store_true", help="allow a target that is not loopback")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.duration <= 0 or args.rate <= 0 or args.batch < 1 or args.concurrency < 1:
        raise SystemExit("--duration and --rate must be > 0, --batch and --concurrency >= 1")
    if args.target == "kafka" and not args.topic:
        raise SystemExit("--target=kafka needs --topic (use a topic of your own, not a pipeline's)")
    host = (urllib.parse.urlsplit(args.url).hostname if args.target == "collector"
            else args.kafka_bootstrap.split(",")[0].rsplit(":", 1)[0])
    if not args.allow_remote and not _is_loopback(host or ""):
        raise SystemExit(f"target host {host!r} is not loopback; pass --allow_remote to load it")
    stats = LoadStats()
    stop = threading.Event()
    progress = threading.Thread(target=_progress, args=(stats, time.monotonic(), args.duration, stop), daemon=True)
    progress.start()
    try:
        if args.target == "collector":
            elapsed = asyncio.run(_drive_collector(args, stats))
        else:
            elapsed = _drive_kafka(args, stats)
    finally:
        stop.set()
        progress.join()
    summary = {"target": args.target, "asked_events_per_s": args.rate, "batch": args.batch, **stats.summary(elapsed)}
    if args.json:
        print(json.dumps(summary))
    else:
        lat = summary["latency_ms"]
        print(f"target {args.target}: asked {args.rate:.0f} events/s for {args.duration:.0f} s"
              f"{f' in batches of {args.batch}' if args.batch > 1 else ''}")
        print(f"achieved {summary['achieved_events_per_s']:.1f} events/s "
              f"({summary['events_ok']} ok of {summary['events_sent']} sent in {summary['elapsed_s']} s)")
        print(f"errors {summary['error_events']} {summary['errors'] or ''}".rstrip())
        print(f"latency ms p50 {lat['p50']} p90 {lat['p90']} p99 {lat['p99']} max {lat['max']}")
    return 0 if summary["error_events"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
