"""The frontend job end to end on real services: Kafka -> PostgreSQL, Redis, S3.

Generated events (with malformed lines and producer retries) go to a fresh
8-partition topic; ``beam_pipelines.frontend`` reads it in bounded mode on the
DirectRunner and writes the tables, the Redis state and the Avro archive on the
S3 server. Then it runs again over the same offsets (a replay): the final state
must be identical. The expected numbers are computed from the generated lines
independently of the pipeline's code: a line is valid when it is a JSON object
with a string session_id and event_type and a positive integer timestamp.

The events are dated the last hour, so the design document's example query
(``timestamp >= NOW() - INTERVAL '24 hours'``) finds them.
"""
import json
import time
import uuid

import pytest
import redis

from beam_pipelines import frontend, generate
from schemas.tables import operational_query
from transforms.frontend_enrich import STAGES
from tests.integration.test_kafka_io import make_topic, produce

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

SECRET = "integration-test-secret-0123456789"
N_EVENTS = 600


def _is_valid(line):
    try:
        event = json.loads(line)
    except ValueError:
        return False
    return (isinstance(event, dict) and isinstance(event.get("session_id"), str)
            and isinstance(event.get("event_type"), str)
            and isinstance(event.get("timestamp"), int) and event["timestamp"] > 0)


@pytest.fixture(scope="module")
def scenario(services, kafka_bootstrap, s3_bucket):
    run_id = uuid.uuid4().hex[:8]
    start_ms = int(time.time() * 1000) - 3_600_000
    lines = list(generate.frontend_events(N_EVENTS, seed=int(run_id, 16) % 10_000,
                                          malformed_ratio=0.05, duplicate_ratio=0.05,
                                          start_ms=start_ms))
    # Session ids from the generator repeat across runs with the same seed;
    # make them unique to this run so the tables' rows are ours alone.
    lines = [line.replace('"sess_', f'"sess_{run_id}_') for line in lines]
    valid = [line for line in lines if _is_valid(line)]
    topic = make_topic(kafka_bootstrap, 8, prefix="it-frontend")
    produce(kafka_bootstrap, topic, [
        (None, (json.loads(l).get("session_id") or "").encode() if _is_valid(l) else None,
         l.encode(), None) for l in lines])
    archive_prefix = f"it-frontend-{run_id}"
    dead_letter_topic = make_topic(kafka_bootstrap, 1, prefix="it-frontend-dlq")
    args = [
        f"--dead_letter_topic={dead_letter_topic}",
        f"--kafka_bootstrap={services.kafka_bootstrap}", f"--kafka_topic={topic}",
        "--kafka_mode=bounded", "--kafka_start_from=earliest",
        f"--postgres_dsn={services.pg_dsn}", f"--redis_url={services.redis_url}",
        f"--archive_path=s3://{s3_bucket}/{archive_prefix}",
        f"--s3_endpoint_url={services.s3_endpoint}",
        f"--s3_access_key_id={services.s3_access_key}",
        f"--s3_secret_access_key={services.s3_secret_key}",
        f"--s3_region_name={services.s3_region}",
        f"--pii_secret={SECRET}", "--runner=DirectRunner",
    ]
    return {
        "run_id": run_id, "lines": lines, "valid": valid, "topic": topic, "args": args,
        "sessions": sorted({json.loads(l)["session_id"] for l in valid}),
        "archive_prefix": archive_prefix, "dead_letter_topic": dead_letter_topic,
    }


def _state(services, s3_bucket, sc):
    import boto3
    import fastavro
    import io
    import psycopg

    with psycopg.connect(services.pg_dsn) as conn, conn.cursor() as cur:
        cur.execute("select event_id, session_id, event_type, engagement_score, quality_score, "
                    "conversion_stage from frontend_analytics where session_id = any(%s) "
                    "order by event_id", (sc["sessions"],))
        analytics = cur.fetchall()
        cur.execute("select session_id, window_start, event_count, furthest_stage "
                    "from frontend_sessions where session_id = any(%s) "
                    "order by session_id, window_start", (sc["sessions"],))
        sessions = cur.fetchall()
        cur.execute("select stage, source_partition, source_offset, raw_payload from failed_events "
                    "where source_topic = %s order by source_partition, source_offset", (sc["topic"],))
        failed = cur.fetchall()
    s3 = boto3.client("s3", endpoint_url=services.s3_endpoint,
                      aws_access_key_id=services.s3_access_key,
                      aws_secret_access_key=services.s3_secret_key, region_name=services.s3_region)
    objects = {}
    archived = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket, Prefix=sc["archive_prefix"]):
        for obj in page.get("Contents", []):
            body = s3.get_object(Bucket=s3_bucket, Key=obj["Key"])["Body"].read()
            objects[obj["Key"]] = body
            archived.extend(fastavro.reader(io.BytesIO(body)))
    return {"analytics": analytics, "sessions": sessions, "failed": failed,
            "objects": objects, "archived": archived}


@pytest.fixture(scope="module")
def first_run(scenario, services, s3_bucket):
    frontend.run(list(scenario["args"]))
    return _state(services, s3_bucket, scenario)


def test_every_distinct_valid_event_lands_once_in_postgres(scenario, first_run):
    assert len(first_run["analytics"]) == len(set(scenario["valid"]))
    assert {r[1] for r in first_run["analytics"]} == set(scenario["sessions"])
    for _, _, _, engagement, quality, stage in first_run["analytics"]:
        assert 0 <= engagement <= 100 and 0 <= quality <= 100
        assert stage in {"page_view", "widget_open", "user_message", "product_interest", "conversion"}


def test_every_malformed_line_is_a_dead_letter(scenario, first_run):
    malformed = [l for l in scenario["lines"] if not _is_valid(l)]
    assert malformed, "the generator should have produced malformed lines"
    assert len(first_run["failed"]) == len(malformed)
    assert {r[0] for r in first_run["failed"]} <= {"decode", "validate"}
    offsets = {(r[1], r[2]) for r in first_run["failed"]}
    assert len(offsets) == len(malformed)  # each with its own Kafka position


def test_dead_letters_are_published_to_the_dead_letter_topic(scenario, first_run, kafka_bootstrap):
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(scenario["dead_letter_topic"], bootstrap_servers=kafka_bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=5000)
    try:
        letters = [json.loads(m.value) for m in consumer]
    finally:
        consumer.close()
    # the first run published each dead letter once (the replay test runs later)
    assert sorted((d["source_partition"], d["source_offset"]) for d in letters) == sorted(
        (r[1], r[2]) for r in first_run["failed"])
    assert all(d["source_topic"] == scenario["topic"] and d["error_message"] for d in letters)


def test_sessions_cover_every_event(scenario, first_run):
    per_session = {}
    for line in set(scenario["valid"]):
        sid = json.loads(line)["session_id"]
        per_session[sid] = per_session.get(sid, 0) + 1
    totals = {}
    for session_id, _, event_count, _ in first_run["sessions"]:
        totals[session_id] = totals.get(session_id, 0) + event_count
    assert totals == per_session


def test_archive_holds_each_event_once_without_raw_pii(scenario, first_run):
    assert len(first_run["archived"]) == len(set(scenario["valid"]))
    assert len({r["event_id"] for r in first_run["archived"]}) == len(first_run["archived"])
    dump = json.dumps(first_run["archived"], default=str)
    assert "jane.doe@acme-corp.com" not in dump and "415 555 0132" not in dump


def test_redis_holds_session_state(scenario, services):
    client = redis.Redis.from_url(services.redis_url, decode_responses=True)
    try:
        for sid in scenario["sessions"][:10]:
            state = client.hgetall(f"iheard:frontend:session:{sid}")
            assert state, f"no Redis session state for {sid}"
            assert int(state["event_count"]) >= 1
    finally:
        client.close()


def test_seed_queries_run_unmodified_on_postgres(services, first_run):
    import psycopg

    with psycopg.connect(services.pg_dsn) as conn, conn.cursor() as cur:
        cur.execute(operational_query("segment_engagement_24h"))
        rows = cur.fetchall()
    assert sum(r[3] for r in rows) >= len(first_run["analytics"])
    # the generator sends every event type of the funnel: all stages appear
    assert set(STAGES) <= {r[2] for r in rows}


def test_replay_over_the_same_offsets_changes_nothing(scenario, first_run, services, s3_bucket):
    frontend.run(list(scenario["args"]))
    second = _state(services, s3_bucket, scenario)
    assert second["analytics"] == first_run["analytics"]
    assert second["sessions"] == first_run["sessions"]
    assert [r[:3] for r in second["failed"]] == [r[:3] for r in first_run["failed"]]
    assert second["objects"] == first_run["objects"]  # same names, same bytes
