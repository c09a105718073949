"""The pipelines against the secure services (``services.sh up --secure``).

Kafka speaks only SASL_SSL (SCRAM-SHA-512), PostgreSQL only ``hostssl`` with
a scram password, Redis only TLS with ``requirepass``, the S3 server only
HTTPS with signed requests; every certificate comes from a throwaway CA.
The jobs get every setting the way a deployment would: from the seed's
environment variables, read once by ``resolve_connections`` (no secret on
their command line).

What is checked:

* the frontend and text-agent jobs (bounded, DirectRunner) read a SASL_SSL
  topic and write PostgreSQL, Redis, the S3 archive and the dead-letter
  topic through TLS;
* a wrong password, a client without TLS and a certificate from another CA
  are refused by each service's check with a clear error within seconds
  (no hang, no fallback to plaintext), and a job with a wrong Kafka or Redis
  password stops before it starts;
* no secret appears in the captured logs, the dead letters or any of those
  error texts.
"""
import io
import json
import os
import subprocess
import time
import uuid

import pytest

from beam_pipelines import frontend, generate, text_agent
from iheard_io import settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

PII_SECRET = "secure-test-pii-key-5f1c0e"
# A refusal must come quickly: the checks use 10 s timeouts at most.
REFUSAL_LIMIT_S = 15.0


def _secrets(env):
    return [v for v in (env["KAFKA_PASSWORD"], env["POSTGRES_PASSWORD"], env["REDIS_PASSWORD"],
                        env["SPACES_SECRET_KEY"], PII_SECRET) if v]


def _assert_no_secret(texts, env, where):
    for secret in _secrets(env):
        for text in texts:
            assert secret not in str(text), f"a secret appears in {where}"


def _kafka_config(env, **overrides):
    config = {
        "bootstrap_servers": env["KAFKA_BOOTSTRAP"],
        "security_protocol": env["KAFKA_SECURITY_PROTOCOL"],
        "sasl_mechanism": env["KAFKA_SASL_MECHANISM"],
        "sasl_plain_username": env["KAFKA_USER"],
        "sasl_plain_password": env["KAFKA_PASSWORD"],
        "ssl_cafile": env["KAFKA_SSL_CAFILE"],
    }
    config.update(overrides)
    return {k: v for k, v in config.items() if v is not None}


@pytest.fixture(scope="module")
def rogue_ca(tmp_path_factory):
    """A CA that signed nothing the services present."""
    folder = tmp_path_factory.mktemp("rogue-ca")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", str(folder / "ca.key"), "-out", str(folder / "ca.pem"),
                    "-subj", "/CN=not the iheardai test CA"],
                   check=True, capture_output=True)
    return str(folder / "ca.pem")


@pytest.fixture
def secure_env(secure_services, monkeypatch):
    """The secure set's settings in this process's environment, as a
    deployment would set them; any plain-mode variable is removed first."""
    for name in list(os.environ):
        if name.startswith(("KAFKA_", "POSTGRES_", "REDIS_", "SPACES_", "S3_", "AWS_")):
            monkeypatch.delenv(name, raising=False)
    for name, value in secure_services.env.items():
        monkeypatch.setenv(name, value)
    return secure_services.env


def _timed(fn):
    t0 = time.monotonic()
    try:
        fn()
    except Exception as exc:  # the refusal under test
        return exc, time.monotonic() - t0
    raise AssertionError("the connection was accepted")


# ---------------------------------------------------------------- refusals ---


def test_kafka_refuses_wrong_password_plaintext_and_untrusted_certificate(secure_services, rogue_ca):
    from iheard_io.kafka import KafkaConnectionRefused, check_kafka_connection

    env = secure_services.env
    check_kafka_connection(_kafka_config(env))  # the right settings work
    cases = {
        "wrong password": (_kafka_config(env, sasl_plain_password="not-the-password"),
                           "refused SASL authentication as user 'iheard'"),
        "no TLS": (_kafka_config(env, security_protocol="SASL_PLAINTEXT", ssl_cafile=None),
                   "its listener speaks TLS"),
        "plaintext": ({"bootstrap_servers": env["KAFKA_BOOTSTRAP"]}, "its listener speaks TLS"),
        "untrusted CA": (_kafka_config(env, ssl_cafile=rogue_ca), "certificate not trusted"),
    }
    texts = []
    for case, (config, expected) in cases.items():
        exc, took_s = _timed(lambda: check_kafka_connection(config, timeout_s=5))
        assert isinstance(exc, KafkaConnectionRefused), (case, exc)
        assert expected in str(exc), (case, str(exc))
        assert took_s < REFUSAL_LIMIT_S, (case, took_s)
        texts.append(str(exc))
    _assert_no_secret(texts, env, "Kafka refusal messages")


def test_postgres_refuses_wrong_password_plaintext_and_untrusted_certificate(secure_services, rogue_ca):
    import psycopg

    from iheard_io.postgres import ensure_schema, is_refusal

    env = secure_services.env
    base = (f"host={env['POSTGRES_HOST']} port={env['POSTGRES_PORT']} user={env['POSTGRES_USER']} "
            f"dbname={env['POSTGRES_DB']} connect_timeout=5")
    ok = f"{base} password={env['POSTGRES_PASSWORD']} sslmode=verify-full sslrootcert={env['POSTGRES_SSLROOTCERT']}"
    with psycopg.connect(ok) as conn:
        assert conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone() == (True,)
    cases = {
        "wrong password": (ok.replace(env["POSTGRES_PASSWORD"], "not-the-password"),
                           "password authentication failed"),
        "no TLS": (f"{base} password={env['POSTGRES_PASSWORD']} sslmode=disable", "no encryption"),
        "untrusted CA": (f"{base} password={env['POSTGRES_PASSWORD']} sslmode=verify-full "
                         f"sslrootcert={rogue_ca}", "certificate verify failed"),
    }
    texts = []
    for case, (dsn, expected) in cases.items():
        exc, took_s = _timed(lambda: ensure_schema(dsn))
        assert isinstance(exc, psycopg.OperationalError), (case, exc)
        assert expected in str(exc) and is_refusal(exc), (case, str(exc))
        assert took_s < REFUSAL_LIMIT_S, (case, took_s)
        texts.append(str(exc))
    _assert_no_secret(texts, env, "PostgreSQL refusal messages")


def test_redis_refuses_wrong_password_plaintext_and_untrusted_certificate(secure_services, rogue_ca):
    from iheard_io.redis_io import RedisConnectionRefused, check_redis_connection

    env = secure_services.env
    host, port, ca, pw = env["REDIS_HOST"], env["REDIS_PORT"], env["REDIS_CA_CERT"], env["REDIS_PASSWORD"]
    check_redis_connection(settings.redis_url(env))
    cases = {
        "wrong password": (f"rediss://:not-the-password@{host}:{port}/0?ssl_ca_certs={ca}",
                           "authentication failed"),
        "no password": (f"rediss://{host}:{port}/0?ssl_ca_certs={ca}", "authentication failed"),
        "no TLS": (f"redis://:{pw}@{host}:{port}/0", "the server wants TLS"),
        "untrusted CA": (f"rediss://:{pw}@{host}:{port}/0?ssl_ca_certs={rogue_ca}",
                         "certificate not trusted"),
    }
    texts = []
    for case, (url, expected) in cases.items():
        exc, took_s = _timed(lambda: check_redis_connection(url))
        assert isinstance(exc, RedisConnectionRefused), (case, exc)
        assert expected in str(exc), (case, str(exc))
        assert took_s < REFUSAL_LIMIT_S, (case, took_s)
        texts.append(str(exc))
    _assert_no_secret(texts, env, "Redis refusal messages")


def test_s3_refuses_wrong_key_plaintext_and_untrusted_certificate(secure_services, rogue_ca):
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError, EndpointConnectionError, SSLError

    env = secure_services.env

    def list_buckets(endpoint, key, secret, verify):
        client = boto3.client(
            "s3", endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
            region_name=env["SPACES_REGION"], verify=verify,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                          connect_timeout=3, read_timeout=5))
        return client.list_buckets()

    endpoint, key, ca = env["SPACES_ENDPOINT"], env["SPACES_ACCESS_KEY"], env["SPACES_CA_BUNDLE"]
    assert list_buckets(endpoint, key, env["SPACES_SECRET_KEY"], ca)["Buckets"]
    for case, call, errors in [
        ("wrong secret", lambda: list_buckets(endpoint, key, "not-the-secret", ca), (ClientError,)),
        ("unknown key", lambda: list_buckets(endpoint, "test", "test", ca), (ClientError,)),
        ("untrusted CA", lambda: list_buckets(endpoint, key, env["SPACES_SECRET_KEY"], rogue_ca),
         (SSLError,)),
        ("no TLS", lambda: list_buckets(endpoint.replace("https://", "http://"), key,
                                        env["SPACES_SECRET_KEY"], None),
         (EndpointConnectionError, ClientError, ConnectionError)),
    ]:
        exc, took_s = _timed(call)
        assert isinstance(exc, errors) or "Connection" in type(exc).__name__, (case, repr(exc))
        if isinstance(exc, ClientError):
            assert exc.response["Error"]["Code"] in (
                "SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied"), (case, exc.response)
        assert took_s < REFUSAL_LIMIT_S, (case, took_s)


def test_a_job_with_a_wrong_kafka_password_stops_before_it_starts(secure_env, monkeypatch, caplog):
    from iheard_io.kafka import KafkaConnectionRefused

    monkeypatch.setenv("KAFKA_PASSWORD", "not-the-password")
    t0 = time.monotonic()
    with pytest.raises(KafkaConnectionRefused, match="refused SASL authentication"):
        frontend.run(["--kafka_bootstrap=" + secure_env["KAFKA_BOOTSTRAP"],
                      "--kafka_mode=bounded", f"--pii_secret={PII_SECRET}",
                      "--archive_path=s3://iheardai-archive/never", "--runner=DirectRunner"])
    assert time.monotonic() - t0 < REFUSAL_LIMIT_S + 5
    _assert_no_secret([caplog.text], secure_env, "the log of a refused job")


def test_a_job_with_a_wrong_redis_password_stops_before_it_starts(secure_env, monkeypatch):
    from iheard_io.redis_io import RedisConnectionRefused

    monkeypatch.setenv("REDIS_PASSWORD", "not-the-password")
    with pytest.raises(RedisConnectionRefused, match="authentication failed"):
        frontend.run(["--kafka_bootstrap=" + secure_env["KAFKA_BOOTSTRAP"],
                      "--kafka_mode=bounded", f"--pii_secret={PII_SECRET}",
                      "--archive_path=s3://iheardai-archive/never", "--runner=DirectRunner"])


# ------------------------------------------------------ pipelines end to end ---


def _make_topic(env, partitions, prefix):
    from kafka.admin import KafkaAdminClient, NewTopic

    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    admin = KafkaAdminClient(**_kafka_config(env))
    try:
        admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        admin.close()
    return name


def _produce(env, topic, values, partitions):
    from kafka import KafkaProducer

    producer = KafkaProducer(acks="all", **_kafka_config(env))
    try:
        for i, value in enumerate(values):
            producer.send(topic, value=value.encode(), partition=i % partitions)
        producer.flush()
    finally:
        producer.close()


def _consume_all(env, topic):
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, auto_offset_reset="earliest", consumer_timeout_ms=5000,
                             **_kafka_config(env))
    try:
        return [m.value.decode() for m in consumer]
    finally:
        consumer.close()


def _pg(env):
    import psycopg

    return psycopg.connect(settings.postgres_dsn(env))


def _redis(env):
    import redis

    return redis.Redis.from_url(settings.redis_url(env), decode_responses=True)


def _archived(env, prefix):
    import boto3
    import fastavro

    s3 = boto3.client("s3", endpoint_url=env["SPACES_ENDPOINT"], verify=env["SPACES_CA_BUNDLE"],
                      aws_access_key_id=env["SPACES_ACCESS_KEY"],
                      aws_secret_access_key=env["SPACES_SECRET_KEY"], region_name=env["SPACES_REGION"])
    records = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=env["ARCHIVE_BUCKET"], Prefix=prefix):
        for obj in page.get("Contents", []):
            body = s3.get_object(Bucket=env["ARCHIVE_BUCKET"], Key=obj["Key"])["Body"].read()
            records.extend(fastavro.reader(io.BytesIO(body)))
    return records


def _is_valid_frontend(line):
    try:
        event = json.loads(line)
    except ValueError:
        return False
    return (isinstance(event, dict) and isinstance(event.get("session_id"), str)
            and isinstance(event.get("event_type"), str)
            and isinstance(event.get("timestamp"), int) and event["timestamp"] > 0)


def test_frontend_job_reads_and_writes_every_sink_over_tls(secure_env, caplog, capfd):
    import logging

    caplog.set_level(logging.INFO)
    env = secure_env
    run_id = uuid.uuid4().hex[:8]
    lines = list(generate.frontend_events(300, seed=int(run_id, 16) % 10_000, malformed_ratio=0.05,
                                          duplicate_ratio=0.05,
                                          start_ms=int(time.time() * 1000) - 3_600_000))
    lines = [line.replace('"sess_', f'"sess_{run_id}_') for line in lines]
    valid = {line for line in lines if _is_valid_frontend(line)}
    malformed = [line for line in lines if not _is_valid_frontend(line)]
    sessions = sorted({json.loads(line)["session_id"] for line in valid})
    topic = _make_topic(env, 4, "sec-frontend")
    dead_letter_topic = _make_topic(env, 1, "sec-frontend-dlq")
    _produce(env, topic, lines, 4)
    prefix = f"sec-frontend-{run_id}"

    # Only non-secret flags: every connection setting comes from the environment.
    argv = [f"--kafka_bootstrap={env['KAFKA_BOOTSTRAP']}", f"--kafka_topic={topic}",
            "--kafka_mode=bounded", "--kafka_start_from=earliest",
            f"--dead_letter_topic={dead_letter_topic}",
            f"--archive_path=s3://{env['ARCHIVE_BUCKET']}/{prefix}",
            f"--pii_secret={PII_SECRET}", "--runner=DirectRunner"]
    _assert_no_secret([" ".join(argv).replace(PII_SECRET, "")], env, "the command line")
    frontend.run(argv)

    with _pg(env) as conn:
        analytics = conn.execute("select count(*), count(distinct event_id) from frontend_analytics "
                                 "where session_id = any(%s)", (sessions,)).fetchone()
        failed = conn.execute("select stage, error_message, raw_payload from failed_events "
                              "where source_topic = %s", (topic,)).fetchall()
    assert analytics == (len(valid), len(valid))
    assert len(failed) == len(malformed) and malformed
    client = _redis(env)
    try:
        state = client.hgetall(f"iheard:frontend:session:{sessions[0]}")
        assert int(state["event_count"]) >= 1
    finally:
        client.close()
    archived = _archived(env, prefix)
    assert len(archived) == len(valid)
    letters = _consume_all(env, dead_letter_topic)
    assert len(letters) == len(malformed)

    out, err = capfd.readouterr()
    _assert_no_secret([caplog.text, out, err], env, "the job's logs")
    _assert_no_secret([json.dumps(f) for f in failed] + letters, env, "the dead letters")


def test_text_agent_job_reads_and_writes_every_sink_over_tls(secure_env, caplog, capfd):
    import logging

    from schemas.text_agent import TextAgentTurn
    from transforms.parse import parse_record

    caplog.set_level(logging.INFO)
    env = secure_env
    run_id = uuid.uuid4().hex[:8]
    tenant = f"sec-{run_id}"
    lines = []
    for line in text_agent.sample_turns(n_sessions=10, seed=int(run_id, 16) % 100_000):
        try:
            payload = json.loads(line)
        except ValueError:
            lines.append(line)
            continue
        payload["tenant_id"] = tenant
        lines.append(json.dumps(payload))
    expected = {}
    for line in lines:
        try:
            event = parse_record(line, TextAgentTurn)
        except ValueError:
            continue
        expected.setdefault((event["session_id"], event["turn_id"]), event)
    sessions = sorted({s for s, _ in expected})
    topic = _make_topic(env, 3, "sec-text-agent")
    _produce(env, topic, lines, 3)
    prefix = f"sec-text-agent-{run_id}"

    text_agent.run([f"--kafka_bootstrap={env['KAFKA_BOOTSTRAP']}", f"--kafka_topic={topic}",
                    "--kafka_mode=bounded", "--kafka_start_from=earliest",
                    f"--archive_path=s3://{env['ARCHIVE_BUCKET']}/{prefix}",
                    f"--pii_secret={PII_SECRET}", "--runner=DirectRunner"])

    with _pg(env) as conn:
        turns = conn.execute("select count(*) from agent_turns where session_id = any(%s)",
                             (sessions,)).fetchone()[0]
        billing = conn.execute("select coalesce(sum(turns), 0) from agent_billing_hourly "
                               "where tenant_id = %s", (tenant,)).fetchone()[0]
        failed = conn.execute("select error_message, raw_payload from failed_events "
                              "where source_topic = %s", (topic,)).fetchall()
    assert turns == len(expected) and billing == len(expected)
    client = _redis(env)
    try:
        state = client.hgetall(f"iheard:text_agent:session:{sessions[0]}")
        assert int(state["turn_count"]) == sum(1 for s, _ in expected if s == sessions[0])
    finally:
        client.close()
    assert len(_archived(env, prefix)) == len(expected)

    out, err = capfd.readouterr()
    _assert_no_secret([caplog.text, out, err], env, "the job's logs")
    _assert_no_secret([json.dumps(f) for f in failed], env, "the dead letters")
