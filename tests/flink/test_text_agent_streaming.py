"""The streaming text-agent job on the real local Flink cluster, against the real services.

``python -m beam_pipelines.text_agent --profile=flink-local --streaming`` (the
batched hot path: lists of turns through parse and de-duplication) reads a
topic made for the test. Turns, times in seconds after T0 (three hours ago)::

    n  session  turn  t     notes
    1  A        a1    0     e-mail address in the user message
    2  A        a2    60
    3  A        a2    60    exact copy of 2 (a producer retry)
    4  A        a3    120
    5  B        b1    30
    6  -        -     -     broken JSON -> dead letter
    --- produced while the job runs (three hours behind its watermark: late) ---
    7  A        a4    150   joins A's fired conversation window: restates it

Expected: agent_turns 5 rows (a1-a4, b1); agent_conversations A with 4 turns
once the late turn restated it (3 before), B with 1; agent_billing_hourly
turns summing to 5; failed_events 1 row for the topic; the Redis conversation
hash of A at 4 turns; the archive holding the 5 turns; counters received 7,
valid 6, duplicates_dropped 1, dead_letters 1.
"""
from __future__ import annotations

import io
import json
import time
import uuid

import pytest

from iheard_io import settings
from tests.flink.flink_rest import wait_for
from tests.flink.test_frontend_streaming import (  # noqa: F401  (services_env is a fixture)
    _create_topic,
    _pg_connect,
    _s3,
    services_env,
)

pytestmark = [pytest.mark.flink, pytest.mark.integration, pytest.mark.slow]

NS = "text_agent"
WAIT_S = 240
CONVERSATION_PREFIX = "iheard:text_agent:session:"


def _turn(run_id, t0_ms, session, turn, seconds, message="What does the Pro plan cost?"):
    return {
        "event_type": "text_agent.turn_completed",
        "session_id": f"ta-{run_id}-{session}", "turn_id": turn, "user_id": f"user-{run_id}",
        "tenant_id": f"tenant-{run_id}", "channel": "web_chat", "model_name": "gpt-4o-mini",
        "tokens_in": 120, "tokens_out": 80, "latency_ms": 850.0,
        "response_text": "The Pro plan is $49 per seat per month.", "user_message": message,
        "tools_used": ["pricing"], "tool_results": {"pricing": {"success": True}},
        "conversation_context": {"previous_turns": 0, "topic_history": [], "user_intent": "pricing_inquiry"},
        "timestamp": t0_ms + seconds * 1000,
    }


def _produce(bootstrap, topic, records):
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for text, ts_ms in records:
        producer.send(topic, value=text.encode(), timestamp_ms=ts_ms)
    producer.flush()
    producer.close()


def test_streaming_text_agent_job_fills_every_sink_and_restates_late_turns(
        flink_cluster, background_pipelines, services_env):
    env = services_env
    rest = flink_cluster.rest
    run_id = uuid.uuid4().hex[:10]
    t0_ms = (int(time.time()) // 60 - 180) * 60_000
    turn = lambda *a, **k: _turn(run_id, t0_ms, *a, **k)  # noqa: E731
    a2 = json.dumps(turn("A", "a2", 60))
    backlog = [
        (json.dumps(turn("A", "a1", 0, "mail me at jane.doe@acme-corp.com")), t0_ms),
        (a2, t0_ms + 60_000), (a2, t0_ms + 60_000),
        (json.dumps(turn("A", "a3", 120)), t0_ms + 120_000),
        (json.dumps(turn("B", "b1", 30)), t0_ms + 30_000),
        ("{not json", t0_ms + 40_000),
    ]
    late = [(json.dumps(turn("A", "a4", 150)), t0_ms + 150_000)]
    sessions = [f"ta-{run_id}-A", f"ta-{run_id}-B"]
    topic = _create_topic(env["KAFKA_BOOTSTRAP"])
    prefix = f"flink-test/text-agent/{run_id}"
    _produce(env["KAFKA_BOOTSTRAP"], topic, backlog)
    proc, jid, job_name = background_pipelines.start_streaming(
        "beam_pipelines.text_agent",
        lambda name: [
            "--profile=flink-local", "--streaming", "--checkpointing_interval=3000",
            f"--kafka_bootstrap={env['KAFKA_BOOTSTRAP']}", f"--kafka_topic={topic}",
            f"--kafka_group_id={name}", f"--postgres_dsn={settings.postgres_dsn(env)}",
            f"--redis_url={settings.redis_url(env)}", f"--archive_path=s3://{env['ARCHIVE_BUCKET']}/{prefix}",
            f"--s3_endpoint_url={env['SPACES_ENDPOINT']}", f"--s3_access_key_id={env['SPACES_ACCESS_KEY']}",
            f"--s3_secret_access_key={env['SPACES_SECRET_KEY']}",
            f"--s3_region_name={env.get('SPACES_REGION', 'us-east-1')}",
        ],
        "iheard-test-text-agent-stream",
    )

    def turns():
        with _pg_connect(env) as conn:
            return sorted(conn.execute("SELECT session_id, turn_id FROM agent_turns WHERE session_id = ANY(%s)",
                                       (sessions,)).fetchall())

    def conversations():
        with _pg_connect(env) as conn:
            return dict(conn.execute(
                "SELECT session_id, max(turn_count) FROM agent_conversations WHERE session_id = ANY(%s) "
                "GROUP BY session_id", (sessions,)).fetchall())

    def billed_turns():
        with _pg_connect(env) as conn:
            return conn.execute("SELECT coalesce(sum(turns), 0) FROM agent_billing_hourly WHERE tenant_id = %s",
                                (f"tenant-{run_id}",)).fetchone()[0]

    def failed():
        with _pg_connect(env) as conn:
            return conn.execute("SELECT count(*) FROM failed_events WHERE source_topic = %s",
                                (topic,)).fetchone()[0]

    try:
        wait_for(lambda: turns() == sorted([(sessions[0], "a1"), (sessions[0], "a2"), (sessions[0], "a3"),
                                            (sessions[1], "b1")]), WAIT_S, "4 agent_turns rows from the backlog")
        wait_for(lambda: conversations() == {sessions[0]: 3, sessions[1]: 1}, WAIT_S,
                 "conversation rows A=3, B=1 (on time)")
        _produce(env["KAFKA_BOOTSTRAP"], topic, late)
        wait_for(lambda: len(turns()) == 5, WAIT_S, "the late turn in agent_turns")
        wait_for(lambda: conversations() == {sessions[0]: 4, sessions[1]: 1}, WAIT_S,
                 "conversation A restated with the late turn (4 turns)")
        wait_for(lambda: billed_turns() == 5, WAIT_S, "billing rows summing to 5 turns")
        wait_for(lambda: failed() == 1, WAIT_S, "1 failed_events row")

        import redis

        r = redis.Redis.from_url(settings.redis_url(env), decode_responses=True)
        wait_for(lambda: r.hget(CONVERSATION_PREFIX + sessions[0], "turn_count") == "4", WAIT_S,
                 "Redis conversation hash of A at 4 turns")

        import fastavro

        def archived():
            s3 = _s3(env)
            out = []
            for obj in s3.list_objects_v2(Bucket=env["ARCHIVE_BUCKET"], Prefix=prefix + "/").get("Contents", []):
                body = s3.get_object(Bucket=env["ARCHIVE_BUCKET"], Key=obj["Key"])["Body"].read()
                out.extend((rec["session_id"], rec["turn_id"]) for rec in fastavro.reader(io.BytesIO(body)))
            return sorted(out)
        wait_for(lambda: archived() == turns(), WAIT_S, "the archive holding the 5 turns")

        with _pg_connect(env) as conn:
            dumps = [row[0] for row in conn.execute(
                "SELECT row_to_json(t)::text FROM agent_turns t WHERE session_id = ANY(%s)", (sessions,))]
        assert not any("jane.doe@acme-corp.com" in d for d in dumps), "raw e-mail address stored"

        expected = {"received": 7, "valid": 6, "duplicates_dropped": 1, "dead_letters": 1}
        for name, value in expected.items():
            wait_for(lambda: rest.user_metric(jid, NS, name) == value, 60, f"counter {NS}.{name} == {value}")
        assert rest.state(jid) == "RUNNING"
    except TimeoutError as e:
        raise AssertionError(f"{e}\n{rest.describe(jid)}\n{background_pipelines.log_tail(job_name, 40)}") from e
    finally:
        background_pipelines.stop(proc, job_name)
