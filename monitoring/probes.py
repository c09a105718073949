"""Measurements of the running system, shared by the collector's ``/status``
and the Prometheus exporter (``monitoring.exporter``).

Each probe is a plain function over explicit connection settings that
returns plain data and never raises for an unreachable server: it reports
it (``reachable: False`` and the error). Clients are opened and closed per
call; callers cache results (``StatusCache``) instead of probing per request.

* ``kafka_offsets``: per topic and partition the first and next offsets and
  the timestamp of the last record (the time of the last event per source).
* ``consumer_lag``: per consumer group, topic and partition, the group's
  committed offset and ``lag = end offset - committed`` (a partition the
  group never committed counts from the partition's first offset).
* ``flink_jobs``: every job of the Flink cluster, its state and checkpoint
  counts, through the Flink REST API.
* ``database_probe``: the time of one small query against PostgreSQL and one
  PING against Redis.
"""
from __future__ import annotations

import threading
import time
import typing

from iheard_io.security import resolve_secret_files

__all__ = [
    "kafka_offsets",
    "consumer_lag",
    "flink_jobs",
    "postgres_probe",
    "redis_probe",
    "StatusCache",
]

_KAFKA_TIMEOUT_MS = 3000


def _kafka_error(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


def kafka_offsets(client_config: typing.Mapping, topics: typing.Sequence[str],
                  with_last_timestamp: bool = True) -> dict:
    """``{"reachable", "error", "topics": {topic: {"partitions": {p: {"begin",
    "end", "last_timestamp_ms"}}, "last_timestamp_ms"}}}``; a topic that does
    not exist is reported with ``"exists": False``."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    try:
        consumer = KafkaConsumer(**resolve_secret_files(client_config), enable_auto_commit=False,
                                 request_timeout_ms=_KAFKA_TIMEOUT_MS + 2000,
                                 bootstrap_timeout_ms=_KAFKA_TIMEOUT_MS,
                                 consumer_timeout_ms=_KAFKA_TIMEOUT_MS)
    except KafkaError as exc:
        return {"reachable": False, "error": _kafka_error(exc), "topics": {}}
    try:
        out = {}
        existing = consumer.topics()
        for topic in topics:
            if topic not in existing:
                out[topic] = {"exists": False, "partitions": {}, "last_timestamp_ms": None}
                continue
            parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
            begin = consumer.beginning_offsets(parts)
            end = consumer.end_offsets(parts)
            partitions = {}
            for tp in parts:
                partitions[tp.partition] = {"begin": begin[tp], "end": end[tp], "last_timestamp_ms": None}
            if with_last_timestamp:
                _fill_last_timestamps(consumer, topic, partitions)
            stamps = [p["last_timestamp_ms"] for p in partitions.values() if p["last_timestamp_ms"] is not None]
            out[topic] = {"exists": True, "partitions": partitions,
                          "last_timestamp_ms": max(stamps) if stamps else None}
        return {"reachable": True, "error": None, "topics": out}
    except KafkaError as exc:
        return {"reachable": False, "error": _kafka_error(exc), "topics": {}}
    finally:
        consumer.close()


def _fill_last_timestamps(consumer, topic, partitions) -> None:
    """Reads the last record of every non-empty partition for its timestamp."""
    from kafka import TopicPartition

    wanted = {TopicPartition(topic, p): info for p, info in partitions.items() if info["end"] > info["begin"]}
    if not wanted:
        return
    consumer.assign(list(wanted))
    for tp, info in wanted.items():
        consumer.seek(tp, info["end"] - 1)
    deadline = time.monotonic() + _KAFKA_TIMEOUT_MS / 1000.0
    pending = set(wanted)
    while pending and time.monotonic() < deadline:
        for tp, records in consumer.poll(timeout_ms=200).items():
            for record in records:
                info = wanted[tp]
                if record.offset >= info["end"] - 1 or tp in pending:
                    info["last_timestamp_ms"] = max(info["last_timestamp_ms"] or 0, record.timestamp)
            pending.discard(tp)
    consumer.unsubscribe()


def consumer_lag(client_config: typing.Mapping, topics: typing.Sequence[str],
                 groups: typing.Optional[typing.Sequence[str]] = None) -> dict:
    """``{"reachable", "error", "groups": {group: {topic: {partition: {"committed",
    "end", "lag"}}}}}`` for the groups that committed offsets on ``topics``
    (all such groups when ``groups`` is None)."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    offsets = kafka_offsets(client_config, topics, with_last_timestamp=False)
    if not offsets["reachable"]:
        return {"reachable": False, "error": offsets["error"], "groups": {}}
    try:
        admin = KafkaAdminClient(**resolve_secret_files(client_config), request_timeout_ms=_KAFKA_TIMEOUT_MS + 2000,
                                 bootstrap_timeout_ms=_KAFKA_TIMEOUT_MS)
    except KafkaError as exc:
        return {"reachable": False, "error": _kafka_error(exc), "groups": {}}
    try:
        if groups is None:
            groups = sorted({g["group_id"] for g in admin.list_groups()})
        out = {}
        wanted = set(topics)
        all_committed = admin.list_group_offsets(list(groups)) if groups else {}
        for group in groups:
            committed = all_committed.get(group) or {}
            per_topic: dict = {}
            for tp, meta in committed.items():
                if tp.topic not in wanted or meta.offset is None or meta.offset < 0:
                    continue
                part = offsets["topics"].get(tp.topic, {}).get("partitions", {}).get(tp.partition)
                if part is None:
                    continue
                per_topic.setdefault(tp.topic, {})
            for topic in per_topic:
                for partition, part in offsets["topics"][topic]["partitions"].items():
                    meta = committed.get(_tp(topic, partition))
                    done = meta.offset if meta is not None and meta.offset >= 0 else part["begin"]
                    per_topic[topic][partition] = {
                        "committed": done, "end": part["end"], "lag": max(0, part["end"] - max(done, part["begin"]))}
            if per_topic:
                out[group] = per_topic
        return {"reachable": True, "error": None, "groups": out}
    except KafkaError as exc:
        return {"reachable": False, "error": _kafka_error(exc), "groups": {}}
    finally:
        admin.close()


def _tp(topic, partition):
    from kafka import TopicPartition

    return TopicPartition(topic, partition)


def flink_jobs(rest_url: typing.Optional[str], timeout_s: float = 3.0) -> dict:
    """``{"reachable", "error", "jobs": [{"id", "name", "state", "start_time_ms",
    "checkpoints": {"completed", "failed", "in_progress"}}]}``."""
    if not rest_url:
        return {"reachable": None, "error": "no Flink REST URL configured", "jobs": []}
    import requests

    base = rest_url.rstrip("/")
    try:
        overview = requests.get(f"{base}/jobs/overview", timeout=timeout_s)
        overview.raise_for_status()
        jobs = []
        for job in overview.json().get("jobs", []):
            entry = {"id": job["jid"], "name": job.get("name"), "state": job.get("state"),
                     "start_time_ms": job.get("start-time"), "checkpoints": None}
            if job.get("state") == "RUNNING":
                cp = requests.get(f"{base}/jobs/{job['jid']}/checkpoints", timeout=timeout_s)
                if cp.status_code == 200:
                    counts = cp.json().get("counts", {})
                    entry["checkpoints"] = {"completed": counts.get("completed", 0),
                                            "failed": counts.get("failed", 0),
                                            "in_progress": counts.get("in_progress", 0)}
            jobs.append(entry)
        return {"reachable": True, "error": None, "jobs": jobs}
    except (requests.RequestException, ValueError) as exc:
        return {"reachable": False, "error": f"{type(exc).__name__}: {exc}", "jobs": []}


def postgres_probe(dsn: typing.Optional[str], timeout_s: float = 3.0) -> dict:
    """``{"reachable", "error", "duration_s"}`` of connect + ``SELECT 1``."""
    if not dsn:
        return {"reachable": None, "error": "no PostgreSQL DSN configured", "duration_s": None}
    import psycopg

    start = time.perf_counter()
    try:
        with psycopg.connect(dsn, connect_timeout=max(1, int(timeout_s))) as conn:
            conn.execute("SELECT 1").fetchone()
    except psycopg.Error as exc:
        return {"reachable": False, "error": f"{type(exc).__name__}: {exc}".strip(), "duration_s": None}
    return {"reachable": True, "error": None, "duration_s": time.perf_counter() - start}


def redis_probe(url: typing.Optional[str], timeout_s: float = 3.0) -> dict:
    """``{"reachable", "error", "duration_s"}`` of connect + ``PING``."""
    if not url:
        return {"reachable": None, "error": "no Redis URL configured", "duration_s": None}
    import redis

    start = time.perf_counter()
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        try:
            client.ping()
        finally:
            client.close()
    except redis.RedisError as exc:
        return {"reachable": False, "error": f"{type(exc).__name__}: {exc}", "duration_s": None}
    return {"reachable": True, "error": None, "duration_s": time.perf_counter() - start}


class StatusCache:
    """Runs ``compute()`` at most once per ``ttl_s``; concurrent callers share
    one run (a status page polled by many must not multiply the probes)."""

    def __init__(self, compute: typing.Callable[[], dict], ttl_s: float = 5.0,
                 clock: typing.Callable[[], float] = time.monotonic):
        self._compute = compute
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._value: typing.Optional[dict] = None
        self._at = float("-inf")

    def get(self) -> dict:
        with self._lock:
            if self._value is None or self._clock() - self._at >= self._ttl_s:
                self._value = self._compute()
                self._at = self._clock()
            return self._value
