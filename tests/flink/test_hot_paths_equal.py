"""The batched hot path and the per-event one write the same rows, on the real Flink cluster.

The same generated frontend events (``beam_pipelines.generate``: visits with
malformed lines and producer-retry duplicates) go to two topics of one
partition each, as a backlog, under two run ids (only the session ids
differ). ``python -m beam_pipelines.frontend --profile=flink-local
--streaming`` drains one topic with ``--hot_path=per_event`` (one element per
event, Beam's merging session windows, per-event de-duplication state) and
the other with the default ``--hot_path=batched`` (transforms/batches.py,
transforms/session_batches.py). With the run id taken out, every table and
store must be equal: frontend_analytics and frontend_sessions (all columns
but the processing time ``updated_at`` and the ``event_id``, which hashes the
payload and so the session id), failed_events (stage, class, message, source
position), the Redis session hashes and the Avro archive. The events are
hours old and in order on one partition, so every session pane is on time and
the rows are deterministic.
"""
from __future__ import annotations

import io
import json
import time
import uuid

import pytest

from beam_pipelines.generate import frontend_events
from iheard_io import settings
from schemas.events import FrontendEvent
from schemas.tables import FRONTEND_ANALYTICS, FRONTEND_SESSIONS
from tests.flink.flink_rest import wait_for
from tests.flink.test_frontend_streaming import (  # noqa: F401  (services_env is a fixture)
    _create_topic,
    _frontend_args,
    _pg_connect,
    _s3,
    services_env,
)
from transforms.parse import parse_record

pytestmark = [pytest.mark.flink, pytest.mark.integration, pytest.mark.slow]

EVENTS = 600
SESSION_PREFIX = "iheard:frontend:session:"
WAIT_S = 300


def _lines(run_id: str, start_ms: int):
    """Generated lines with the run id in every session id (malformed ones as they are)."""
    out = []
    for line in frontend_events(EVENTS, seed=11, start_ms=start_ms):
        try:
            payload = json.loads(line)
        except ValueError:
            out.append(line)
            continue
        if isinstance(payload, dict) and isinstance(payload.get("session_id"), str):
            payload["session_id"] = f"{run_id}-{payload['session_id']}"
            out.append(json.dumps(payload, separators=(",", ":")))
        else:
            out.append(line)
    return out


def _produce(bootstrap, topic, lines):
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    for line in lines:
        producer.send(topic, line.encode())
    producer.flush()
    producer.close()


def _strip(value, run_id):
    return value.replace(f"{run_id}-", "") if isinstance(value, str) else value


def _table(env, spec, run_id, drop):
    cols = [c for c in spec.columns if c not in drop]
    with _pg_connect(env) as conn:
        rows = conn.execute(
            f"SELECT {', '.join(cols)} FROM {spec.name} WHERE session_id LIKE %s", (run_id + "-%",)
        ).fetchall()
    return sorted(tuple(json.dumps(v, sort_keys=True, default=str) if isinstance(v, (dict, list)) else
                        _strip(v, run_id) for v in row) for row in rows)


def _failures(env, topic, run_id):
    with _pg_connect(env) as conn:
        rows = conn.execute(
            "SELECT stage, error_class, error_message, source_partition, source_offset "
            "FROM failed_events WHERE source_topic = %s", (topic,)).fetchall()
    return sorted(tuple(_strip(v, run_id) for v in row) for row in rows)


def _redis_sessions(env, run_id):
    import redis

    r = redis.Redis.from_url(settings.redis_url(env), decode_responses=True)
    out = {}
    for key in r.scan_iter(f"{SESSION_PREFIX}{run_id}-*", count=1000):
        fields = r.hgetall(key)
        fields.pop("updated_at", None)
        out[_strip(key, run_id)] = {k: _strip(v, run_id) for k, v in fields.items()}
    return out


def _archive(env, prefix, run_id):
    import fastavro

    s3 = _s3(env)
    out = []
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=env["ARCHIVE_BUCKET"], Prefix=prefix + "/")
    for page in pages:
        for obj in page.get("Contents", []):
            body = s3.get_object(Bucket=env["ARCHIVE_BUCKET"], Key=obj["Key"])["Body"].read()
            for rec in fastavro.reader(io.BytesIO(body)):
                rec.pop("event_id", None)
                if isinstance(rec.get("_source"), dict):  # each run reads its own topic
                    rec["_source"] = dict(rec["_source"], topic=None)
                out.append(json.dumps({k: _strip(v, run_id) for k, v in rec.items()},
                                      sort_keys=True, default=str))
    return sorted(out)


def _run(flink_cluster, background_pipelines, env, hot_path, start_ms):
    run_id = f"hp{uuid.uuid4().hex[:8]}"
    lines = _lines(run_id, start_ms)
    expected_rows = len({parse_record(line, FrontendEvent)["event_id"] for line in lines
                         if _parses(line)})
    topic = _create_topic(env["KAFKA_BOOTSTRAP"])
    _produce(env["KAFKA_BOOTSTRAP"], topic, lines)
    prefix = f"flink-test/hot-path/{run_id}"
    proc, jid, job_name = background_pipelines.start_streaming(
        "beam_pipelines.frontend",
        lambda name: _frontend_args(env, topic, prefix, name) + [f"--hot_path={hot_path}"],
        f"iheard-test-{hot_path.replace('_', '-')}",
    )
    rest = flink_cluster.rest
    try:
        count = lambda: len(_table(env, FRONTEND_ANALYTICS, run_id, ()))  # noqa: E731
        wait_for(lambda: count() == expected_rows, WAIT_S, f"{expected_rows} frontend_analytics rows ({hot_path})")
        # Every session pane fires once the idle watermark (wall clock) passes
        # the hours-old windows; wait until the session rows stop changing.
        stable = {"rows": None, "since": time.monotonic()}

        def sessions_settled():
            rows = _table(env, FRONTEND_SESSIONS, run_id, ("updated_at",))
            if rows != stable["rows"]:
                stable.update(rows=rows, since=time.monotonic())
            return rows and time.monotonic() - stable["since"] > 15
        wait_for(sessions_settled, WAIT_S, f"frontend_sessions to settle ({hot_path})")
        archived = lambda: _archive(env, prefix, run_id)  # noqa: E731
        wait_for(lambda: len(archived()) == expected_rows, WAIT_S, f"archive of {expected_rows} events ({hot_path})")
        result = {
            "analytics": _table(env, FRONTEND_ANALYTICS, run_id, ("event_id",)),
            "sessions": _table(env, FRONTEND_SESSIONS, run_id, ("updated_at",)),
            "failures": _failures(env, topic, run_id),
            "redis": _redis_sessions(env, run_id),
            "archive": archived(),
            "counters": {name: rest.user_metric(jid, "frontend", name)
                         for name in ("received", "valid", "dead_letters", "duplicates_dropped")},
        }
    except TimeoutError as e:
        raise AssertionError(f"{e}\n{rest.describe(jid)}\n{background_pipelines.log_tail(job_name, 40)}") from e
    finally:
        background_pipelines.stop(proc, job_name)
    return result, expected_rows


def _parses(line):
    try:
        parse_record(line, FrontendEvent)
        return True
    except ValueError:
        return False


def test_batched_and_per_event_hot_paths_write_the_same_rows(flink_cluster, background_pipelines, services_env):
    start_ms = (int(time.time()) // 60 - 300) * 60_000  # five hours ago
    old, n = _run(flink_cluster, background_pipelines, services_env, "per_event", start_ms)
    new, n_new = _run(flink_cluster, background_pipelines, services_env, "batched", start_ms)
    assert n == n_new and len(old["analytics"]) == n
    assert old["sessions"] and len(old["failures"]) > 0 and old["redis"]
    for name in ("analytics", "sessions", "failures", "redis", "archive"):
        assert new[name] == old[name], f"{name} differs between the hot paths"
    # Failure positions are per topic; their count and content match above.
    assert new["counters"]["duplicates_dropped"] == old["counters"]["duplicates_dropped"] > 0
