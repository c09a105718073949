"""The servers started by services/services.sh really work.

Each test talks to one real server through the endpoints of ``services.sh
env``: Kafka topics and a produce/consume round trip, PostgreSQL DDL and
queries as the ``iheard`` role, Redis commands, S3 objects in the archive
bucket. The last tests check the script itself: a second ``up`` leaves the
running servers alone, and it never signals or claims a process that its
pid files do not name.

Run: ``python -m pytest tests/integration/test_services.py``
"""
import os
import re
import socket
import subprocess
import time
import uuid

import boto3
import psycopg
import pytest
import redis
from botocore.config import Config
from kafka import KafkaConsumer
from kafka import KafkaProducer
from kafka import TopicPartition
from kafka.admin import ConfigResource
from kafka.admin import ConfigResourceType
from kafka.admin import KafkaAdminClient

from iheard_io import settings
from tests.support import parse_exports
from tests.integration.conftest import run_services_sh

pytestmark = pytest.mark.timeout(300)

DAY_MS = 24 * 60 * 60 * 1000
# Topic -> (partitions, retention.ms) that services.sh must have created.
EXPECTED_TOPICS = {
    "frontend_user_interaction": (8, 30 * DAY_MS),
    "text_agent_turn_completed": (6, 30 * DAY_MS),
    "marketo_leads_delta": (3, 7 * DAY_MS),
    "pipeline_dead_letter": (3, 30 * DAY_MS),
}
SERVICE_NAMES = ("kafka", "postgres", "redis", "s3")
STATUS_LINE = re.compile(r"^(\S+)\s+running\s+pid (\d+)\s+\S+ healthy$")


@pytest.fixture()
def kafka_admin(kafka_bootstrap):
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="test-services")
    yield admin
    admin.close()


def test_kafka_topics_have_their_partitions_and_retention(kafka_admin):
    described = {t["name"]: t for t in kafka_admin.describe_topics(list(EXPECTED_TOPICS))}
    configs = kafka_admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name) for name in EXPECTED_TOPICS])
    for name, (partitions, retention_ms) in EXPECTED_TOPICS.items():
        topic = described[name]
        assert topic["error_code"] == 0, name
        assert len(topic["partitions"]) == partitions, name
        assert all(p["leader_id"] >= 0 for p in topic["partitions"]), name
        assert configs["topic"][name]["retention.ms"]["value"] == str(retention_ms), name


def test_kafka_produce_and_consume_on_a_fresh_topic(kafka_bootstrap, kafka_admin):
    # A topic of our own, so no pipeline test ever reads these records.
    topic = f"services_probe_{uuid.uuid4().hex[:12]}"
    kafka_admin.create_topics({topic: {"num_partitions": 2, "replication_factor": 1}},
                              wait_for_metadata=True)
    try:
        sent = {0: [b"p0-a", b"p0-b"], 1: [b"p1-a"]}
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        try:
            for partition, values in sent.items():
                for value in values:
                    producer.send(topic, value=value, key=b"k", partition=partition).get(timeout=30)
        finally:
            producer.close()

        consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False,
                                 consumer_timeout_ms=1000)
        try:
            partitions = [TopicPartition(topic, p) for p in sent]
            consumer.assign(partitions)
            consumer.seek_to_beginning(*partitions)
            received = {p: [] for p in sent}
            deadline = time.monotonic() + 60
            while sum(map(len, received.values())) < 3 and time.monotonic() < deadline:
                for tp, records in consumer.poll(timeout_ms=1000).items():
                    received[tp.partition].extend(r.value for r in records)
        finally:
            consumer.close()
        assert received == sent
        assert len(kafka_admin.describe_topics([topic])[0]["partitions"]) == 2
    finally:
        kafka_admin.delete_topics([topic])


def test_postgres_table_insert_select_as_iheard(pg_dsn):
    table = f"services_probe_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        user, db, port, version = conn.execute(
            "SELECT current_user, current_database(), inet_server_port(),"
            " current_setting('server_version_num')::int").fetchone()
        assert (user, db, port) == ("iheard", "analytics", 15433)
        assert 150000 <= version < 160000
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, payload jsonb NOT NULL)")
        try:
            with conn.cursor() as cur:
                cur.executemany(f"INSERT INTO {table} VALUES (%s, %s::jsonb)",
                                [(1, '{"a": 1}'), (2, '{"a": 2}')])
            conn.execute(f"INSERT INTO {table} VALUES (2, '{{\"a\": 3}}')"
                         " ON CONFLICT (id) DO UPDATE SET payload = EXCLUDED.payload")
            rows = conn.execute(f"SELECT id, payload->>'a' FROM {table} ORDER BY id").fetchall()
            assert rows == [(1, "1"), (2, "3")]
        finally:
            conn.execute(f"DROP TABLE {table}")


def test_postgres_refuses_a_wrong_password(services):
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(host=services.env["POSTGRES_HOST"], port=services.env["POSTGRES_PORT"],
                        user="iheard", password="wrong", dbname="analytics", connect_timeout=5)


def test_redis_set_get_and_expiry(redis_url):
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.info("server")["redis_version"].startswith("7.")
        key = f"services:probe:{uuid.uuid4().hex}"
        assert client.set(key, b"value", ex=60)
        assert client.get(key) == b"value"
        assert 0 < client.ttl(key) <= 60
        assert client.incrby(key + ":n", 5) == 5
        client.delete(key, key + ":n")
        assert client.get(key) is None
    finally:
        client.close()


def test_s3_put_get_list_delete(services):
    s3 = boto3.client(
        "s3", endpoint_url=services.s3_endpoint, region_name=services.s3_region,
        aws_access_key_id=services.s3_access_key, aws_secret_access_key=services.s3_secret_key,
        config=Config(s3={"addressing_style": "path"}))
    assert services.s3_bucket in {b["Name"] for b in s3.list_buckets()["Buckets"]}
    key = f"services-probe/{uuid.uuid4().hex}/object.bin"
    body = os.urandom(64 * 1024)
    s3.put_object(Bucket=services.s3_bucket, Key=key, Body=body)
    try:
        assert s3.get_object(Bucket=services.s3_bucket, Key=key)["Body"].read() == body
        listed = s3.list_objects_v2(Bucket=services.s3_bucket, Prefix=key.rsplit("/", 1)[0])
        assert [o["Key"] for o in listed["Contents"]] == [key]
    finally:
        s3.delete_object(Bucket=services.s3_bucket, Key=key)
    with pytest.raises(s3.exceptions.NoSuchKey):
        s3.get_object(Bucket=services.s3_bucket, Key=key)


def running_pids():
    """Service name -> pid from `services.sh status`; fails unless all are healthy."""
    status = run_services_sh("status", timeout_s=60)
    assert status.returncode == 0, status.stdout + status.stderr
    pids = {}
    for line in status.stdout.splitlines():
        match = STATUS_LINE.match(line.strip())
        if match:
            pids[match.group(1)] = int(match.group(2))
    assert set(pids) == set(SERVICE_NAMES), status.stdout
    return pids


def test_second_up_leaves_running_servers_alone(services):
    before = running_pids()
    again = run_services_sh("up", timeout_s=300)
    assert again.returncode == 0, again.stderr
    for name in SERVICE_NAMES:
        assert f"{name}: already running (pid {before[name]})" in again.stderr
    assert "started: none" in again.stderr
    assert running_pids() == before


def test_env_prints_consistent_settings(services):
    env = parse_exports(run_services_sh("env", timeout_s=30).stdout)
    assert env["KAFKA_BOOTSTRAP"] == "127.0.0.1:19092"
    assert (env["POSTGRES_HOST"], env["POSTGRES_PORT"], env["POSTGRES_DB"]) == (
        "127.0.0.1", "15433", "analytics")
    # Every name it prints is one of the project's settings (or services.sh's own).
    known = {v.name for v in settings.VARIABLES} | {n for n, _ in settings.SCRIPT_VARIABLES}
    assert set(env) <= known
    assert settings.postgres_dsn(env).startswith("host=127.0.0.1 port=15433")
    assert settings.redis_url(env) == f"redis://{env['REDIS_HOST']}:{env['REDIS_PORT']}/0"
    assert env["SPACES_ENDPOINT"] == "http://127.0.0.1:19000"
    assert (env["SPACES_ACCESS_KEY"], env["SPACES_SECRET_KEY"]) == ("test", "test")
    assert env["ARCHIVE_BUCKET"] == "iheardai-archive"


def test_env_quotes_values_for_the_shell(tmp_path):
    home = str(tmp_path / "a home with spaces")
    printed = run_services_sh("env", timeout_s=30, env={**os.environ, "IHEARD_HOME": home})
    assert parse_exports(printed.stdout)["IHEARD_HOME"] == home
    evaluated = subprocess.run(
        ["bash", "-c", 'eval "$0"; printf %s "$IHEARD_HOME"', printed.stdout],
        capture_output=True, text=True, check=True)
    assert evaluated.stdout == home


@pytest.fixture()
def other_home(tmp_path):
    """An IHEARD_HOME that started nothing: what runs is not its own."""
    env = os.environ.copy()
    env["IHEARD_HOME"] = str(tmp_path / "home")
    return env


def test_stale_pid_file_naming_a_foreign_process_is_dropped_not_killed(other_home):
    stranger = subprocess.Popen(["sleep", "120"])
    try:
        run_dir = os.path.join(other_home["IHEARD_HOME"], "redis", "run")
        os.makedirs(run_dir)
        pid_file = os.path.join(run_dir, "redis.pid")
        with open(pid_file, "w") as f:
            f.write(f"{stranger.pid}\n")

        status = run_services_sh("status", "redis", timeout_s=30, env=other_home)
        assert status.returncode == 1
        assert "stale pid file" in status.stdout

        down = run_services_sh("down", "redis", timeout_s=60, env=other_home)
        assert down.returncode == 0, down.stderr
        assert stranger.poll() is None, "services.sh down signalled a process it did not start"
        assert not os.path.exists(pid_file)
    finally:
        stranger.kill()
        stranger.wait()


def test_up_refuses_a_port_held_by_a_server_it_did_not_start(services, other_home):
    before = running_pids()
    up = run_services_sh("up", "redis", timeout_s=120, env=other_home)
    assert up.returncode != 0
    assert "port 16380" in up.stderr and "already in use" in up.stderr
    assert running_pids() == before


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_own_server_with_lost_pid_file_is_adopted_then_stopped(other_home):
    # A Redis of a scratch IHEARD_HOME on a port of its own, so the shared
    # servers are never touched.
    port = free_port()
    other_home["IHEARD_REDIS_PORT"] = str(port)
    pid_file = os.path.join(other_home["IHEARD_HOME"], "redis", "run", "redis.pid")
    try:
        up = run_services_sh("up", "redis", timeout_s=120, env=other_home)
        assert up.returncode == 0, up.stderr
        with open(pid_file) as f:
            pid = int(f.read())
        os.remove(pid_file)

        again = run_services_sh("up", "redis", timeout_s=120, env=other_home)
        assert again.returncode == 0, again.stderr
        assert f"adopting running server pid {pid}" in again.stderr
        assert redis.Redis(port=port).ping()

        down = run_services_sh("down", "redis", timeout_s=60, env=other_home)
        assert down.returncode == 0, down.stderr
        assert not os.path.exists(f"/proc/{pid}")
        with pytest.raises(redis.ConnectionError):
            redis.Redis(port=port, socket_connect_timeout=2).ping()
    finally:
        run_services_sh("down", "redis", timeout_s=60, env=other_home)


def test_unknown_service_is_an_error():
    result = run_services_sh("status", "mongodb", timeout_s=30)
    assert result.returncode != 0
    assert "unknown service 'mongodb'" in result.stderr
