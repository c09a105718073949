"""The collector, the producer client, /status and the load tool against the
real Kafka broker (and Flink's REST API for /status).

The app runs in-process under Starlette's TestClient (its lifespan connects
the real producer); every test writes to topics of its own. Broker down is
a collector pointed at a port where no broker listens: the shared broker is
never stopped.
"""
import asyncio
import json
import socket
import subprocess
import sys
import time
import uuid

import pytest
from fastapi.testclient import TestClient
from kafka import KafkaConsumer, TopicPartition

from collector.app import create_app
from collector.client import AnalyticsClient
from collector.publisher import PublishUnavailable
from collector.settings import CollectorSettings
from tests.integration.test_kafka_io import make_topic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

FLINK_REST = "http://127.0.0.1:18081"


def event(session, event_type="widget_open", **extra):
    return {"event_type": event_type, "session_id": session, "timestamp": int(time.time() * 1000),
            "page_url": "https://shop.example.com/", "widget_id": "sales-assistant", **extra}


def turn(session, turn_id="turn_1"):
    return {"event_type": "text_agent.turn_completed", "session_id": session, "turn_id": turn_id,
            "model_name": "claude-3-sonnet", "tokens_in": 10, "tokens_out": 5, "latency_ms": 120.0,
            "response_text": "Hello", "tools_used": [], "tool_results": {},
            "timestamp": int(time.time() * 1000)}


def read_all(bootstrap, topic):
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        records = []
        deadline = time.monotonic() + 20
        while any(consumer.position(tp) < end[tp] for tp in parts) and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def topics(kafka_bootstrap):
    return {"frontend": make_topic(kafka_bootstrap, 4, prefix="it-collector-fe"),
            "text_agent": make_topic(kafka_bootstrap, 2, prefix="it-collector-ta")}


def settings_for(bootstrap, topics, **kw):
    return CollectorSettings(kafka_bootstrap=bootstrap, topics=topics,
                             allowed_origins=("https://shop.example.com",), status_ttl_s=0, **kw)


def metric(client, name, **labels):
    text = client.get("/metrics").text
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


def test_accepted_events_are_in_kafka_keyed_by_session_before_the_202(kafka_bootstrap, topics):
    sess = f"sess-{uuid.uuid4().hex[:8]}"
    with TestClient(create_app(settings_for(kafka_bootstrap, topics))) as client:
        single = client.post("/api/analytics", json=event(sess))
        batch = client.post("/api/analytics", json=[event(sess, "message_sent", message_length=45), turn(sess)])
        assert single.status_code == 202 and single.json() == {"accepted": 1}
        assert batch.status_code == 202 and batch.json() == {"accepted": 2}
        assert metric(client, "collector_events_accepted_total", source="frontend") == 2
        assert metric(client, "collector_events_accepted_total", source="text_agent") == 1
        # Acknowledged means readable now: no flush, no wait.
        fe = read_all(kafka_bootstrap, topics["frontend"])
        ta = read_all(kafka_bootstrap, topics["text_agent"])
    assert sorted(json.loads(r.value)["event_type"] for r in fe) == ["message_sent", "widget_open"]
    assert {r.key for r in fe} == {sess.encode()} and len({r.partition for r in fe}) == 1
    assert [json.loads(r.value)["turn_id"] for r in ta] == ["turn_1"]


def test_refusals_have_reasons_status_codes_and_counters(kafka_bootstrap, topics):
    s = settings_for(kafka_bootstrap, topics, max_body_bytes=2048, max_events_per_request=3)
    with TestClient(create_app(s)) as client:
        bad = client.post("/api/analytics", json=[event("s1"), {"event_type": "x"}])
        assert bad.status_code == 400
        assert bad.json()["error"] == "invalid_event"
        assert bad.json()["rejected"] == [{"index": 1, "reason": "session_id: field required"}]
        assert client.post("/api/analytics", content=b"{oops").json()["error"] == "invalid_json"
        big = client.post("/api/analytics", content=b"[" + b" " * 4096 + b"]")
        assert big.status_code == 413 and big.json()["error"] == "too_large"

        def chunks():  # no Content-Length: refused while streaming
            for _ in range(10):
                yield b" " * 1024

        assert client.post("/api/analytics", content=chunks()).status_code == 413
        many = client.post("/api/analytics", json=[event("s1")] * 4)
        assert many.status_code == 413 and many.json()["error"] == "too_many_events"
        assert metric(client, "collector_requests_rejected_total", reason="invalid_event") == 1
        assert metric(client, "collector_events_rejected_total", reason="invalid_event") == 1
        assert metric(client, "collector_requests_rejected_total", reason="invalid_json") == 1
        assert metric(client, "collector_requests_rejected_total", reason="too_large") == 2
        assert metric(client, "collector_requests_total", route="/api/analytics", status="413") == 3
    assert read_all(kafka_bootstrap, topics["frontend"]) == []  # nothing of a refused batch


def test_cors_only_for_configured_origins(kafka_bootstrap, topics):
    with TestClient(create_app(settings_for(kafka_bootstrap, topics))) as client:
        pre = client.options("/api/analytics", headers={
            "Origin": "https://shop.example.com", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"})
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == "https://shop.example.com"
        denied = client.options("/api/analytics", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in denied.headers
        post = client.post("/api/analytics", json=event("s-cors"), headers={"Origin": "https://evil.example"})
        assert post.status_code == 403 and post.json()["error"] == "origin_not_allowed"
        ok = client.post("/api/analytics", json=event("s-cors"), headers={"Origin": "https://shop.example.com"})
        assert ok.status_code == 202
        assert ok.headers["access-control-allow-origin"] == "https://shop.example.com"
    assert len(read_all(kafka_bootstrap, topics["frontend"])) == 1


def test_rate_limit_per_client_answers_429(kafka_bootstrap, topics):
    s = settings_for(kafka_bootstrap, topics, rate_limit_per_s=0.5, rate_limit_burst=2, trust_forwarded_for=True)
    with TestClient(create_app(s)) as client:
        codes = [client.post("/api/analytics", json=event("s-rl"), headers={"X-Forwarded-For": "10.0.0.1"}).status_code
                 for _ in range(3)]
        assert codes == [202, 202, 429]
        limited = client.post("/api/analytics", json=event("s-rl"), headers={"X-Forwarded-For": "10.0.0.1"})
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        other = client.post("/api/analytics", json=event("s-rl"), headers={"X-Forwarded-For": "10.0.0.2"})
        assert other.status_code == 202
        assert metric(client, "collector_requests_rejected_total", reason="rate_limited") == 2
    assert len(read_all(kafka_bootstrap, topics["frontend"])) == 3


def test_broker_unreachable_answers_503_and_the_retry_lands_once(kafka_bootstrap, topics):
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    body = event(f"sess-{uuid.uuid4().hex[:8]}")
    with TestClient(create_app(settings_for(dead, topics))) as client:
        assert client.get("/health").status_code == 200  # alive, though Kafka is not
        down = client.post("/api/analytics", json=body)
        assert down.status_code == 503 and down.json()["error"] == "kafka_unavailable"
        assert down.headers["retry-after"] == "5"
        assert metric(client, "collector_events_rejected_total", reason="kafka_unavailable") == 1
        assert metric(client, "collector_kafka_connected") == 0
        status = client.get("/status")
        assert status.status_code == 503 and status.json()["kafka"]["reachable"] is False
    # The client retries against a collector whose broker is up: exactly one copy.
    with TestClient(create_app(settings_for(kafka_bootstrap, topics))) as client:
        assert client.post("/api/analytics", json=body).status_code == 202
    records = read_all(kafka_bootstrap, topics["frontend"])
    assert [json.loads(r.value) for r in records] == [body]


def test_status_reports_kafka_flink_lag_and_last_event_per_source(kafka_bootstrap, topics):
    from kafka import KafkaProducer

    sess = f"sess-{uuid.uuid4().hex[:8]}"
    group = f"it-collector-group-{uuid.uuid4().hex[:8]}"
    s = settings_for(kafka_bootstrap, topics, flink_rest_url=FLINK_REST,
                     status_topics=(topics["frontend"],), status_groups=(group,))
    with TestClient(create_app(s)) as client:
        for i in range(5):
            assert client.post("/api/analytics", json=event(sess, timestamp=1767225600000 + i)).status_code == 202
        # A consumer group that read 2 of the 5 records: lag 3 on that partition.
        consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False)
        [partition] = {r.partition for r in read_all(kafka_bootstrap, topics["frontend"])}
        tp = TopicPartition(topics["frontend"], partition)
        from kafka.structs import OffsetAndMetadata
        consumer.commit({tp: OffsetAndMetadata(2, "", -1)})
        consumer.close()
        doc = client.get("/status").json()
    assert doc["kafka"]["reachable"] is True and doc["kafka"]["producer_connected"] is True
    lag = doc["consumer_lag"][group][topics["frontend"]]
    assert lag[str(partition)] == {"committed": 2, "end": 5, "lag": 3}
    assert sum(p["lag"] for p in lag.values()) == 3  # other partitions are empty
    produced = read_all(kafka_bootstrap, topics["frontend"])
    assert doc["last_events"]["frontend"]["last_event_ms"] == max(r.timestamp for r in produced)
    assert doc["last_events"]["text_agent"]["last_event_ms"] is None  # nothing sent there
    flink = doc["flink"]
    if flink["reachable"]:
        assert isinstance(flink["jobs"], list)
        assert all({"id", "name", "state"} <= set(j) for j in flink["jobs"])
    else:
        assert flink["error"]


def test_producer_client_validates_batches_and_calls_back(kafka_bootstrap, topics):
    sess = f"sess-{uuid.uuid4().hex[:8]}"
    delivered = []
    client = AnalyticsClient(kafka_bootstrap, topics=topics)
    try:
        with pytest.raises(ValueError, match="tokens_out: field required"):
            client.publish_event({k: v for k, v in turn(sess).items() if k != "tokens_out"})
        client.publish_event(turn(sess, "turn_a"), on_delivery=lambda d, e: delivered.append((d, e)))
        client.flush(10)
        assert len(delivered) == 1 and delivered[0][1] is None
        assert delivered[0][0].topic == topics["text_agent"]
        got = asyncio.run(client.track_event(turn(sess, "turn_b")))
        assert got.topic == topics["text_agent"] and got.offset >= 0
    finally:
        client.close()
    records = read_all(kafka_bootstrap, topics["text_agent"])
    assert sorted(json.loads(r.value)["turn_id"] for r in records) == ["turn_a", "turn_b"]
    assert {r.key for r in records} == {sess.encode()}

    dead = AnalyticsClient(f"127.0.0.1:{free_port()}", producer_config={"bootstrap_timeout_ms": 1000})
    try:
        with pytest.raises(PublishUnavailable):
            asyncio.run(dead.track_event(turn(sess)))
    finally:
        dead.close()


def test_load_tool_against_kafka_prints_its_figures(kafka_bootstrap):
    topic = make_topic(kafka_bootstrap, 2, prefix="it-loadtest")
    run = subprocess.run(
        [sys.executable, "-m", "collector.loadtest", "--duration=2", "--rate=100", "--target=kafka",
         f"--kafka_bootstrap={kafka_bootstrap}", f"--topic={topic}", "--json"],
        capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["error_events"] == 0 and summary["events_ok"] == summary["events_sent"] > 150
    assert summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"]
    assert "ev/s" in run.stderr  # the progress line
    assert len(read_all(kafka_bootstrap, topic)) == summary["events_ok"]
