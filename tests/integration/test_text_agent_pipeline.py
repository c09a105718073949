"""The text-agent job end to end on real services: Kafka -> PostgreSQL, Redis, S3.

Sample turns (with emails and phone numbers in user messages, malformed
lines and producer retries) go to a fresh topic; ``beam_pipelines.text_agent``
reads it in bounded mode on the FnApiRunner and writes every table, the
Redis state and the Avro archive on the moto S3 server. The job then runs a
second time over the same topic (a replay) and every total must be unchanged.

All rows belong to a tenant and sessions unique to the test run, so the test
neither sees nor disturbs other tests' data.
"""
import datetime as dt
import io
import json
import uuid

import pytest
import redis
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from beam_pipelines import generate, text_agent
from iheard_io.redis_io import read_cost_today
from schemas.text_agent import TextAgentTurn
from tests.integration.test_kafka_io import make_topic, produce
from transforms.parse import parse_record

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

SECRET = "integration-test-secret-0123456789"


def _sample(tenant, seed):
    lines = []
    for line in generate.sample_turns(n_sessions=25, seed=seed):
        try:
            payload = json.loads(line)
        except ValueError:
            lines.append(line)  # a truncated line stays truncated
            continue
        payload["tenant_id"] = tenant
        lines.append(json.dumps(payload))
    # a malformed turn whose user message carries PII: the dead letter must not
    lines.append(json.dumps({"session_id": f"bad-{tenant}", "turn_id": "x", "tokens_in": -1,
                             "user_message": "reach me at leaker@example.org"}))
    return lines


def _expected(lines):
    turns = {}
    for line in lines:
        try:
            event = parse_record(line, TextAgentTurn)
        except ValueError:
            continue
        turns.setdefault((event["session_id"], event["turn_id"]), event)
    return turns


def _run_job(services, topic, archive):
    return text_agent.run([
        f"--kafka_bootstrap={services.kafka_bootstrap}",
        f"--kafka_topic={topic}", "--kafka_mode=bounded", "--kafka_start_from=earliest",
        f"--postgres_dsn={services.pg_dsn}", f"--redis_url={services.redis_url}",
        f"--archive_path={archive}",
        f"--s3_endpoint_url={services.s3_endpoint}",
        f"--s3_access_key_id={services.s3_access_key}",
        f"--s3_secret_access_key={services.s3_secret_key}",
        f"--s3_region_name={services.s3_region}",
        f"--pii_secret={SECRET}",
    ], runner=FnApiRunner())


def _pg_totals(pg_dsn, tenant, sessions):
    import psycopg

    with psycopg.connect(pg_dsn) as conn, conn.cursor() as cur:
        cur.execute("select count(*), coalesce(sum(total_tokens), 0) from agent_turns "
                    "where session_id = any(%s)", (sessions,))
        turns = cur.fetchone()
        cur.execute("select count(*), coalesce(sum(turn_count), 0) from agent_conversations "
                    "where session_id = any(%s)", (sessions,))
        conversations = cur.fetchone()
        cur.execute("select count(*), coalesce(sum(turns), 0), coalesce(sum(estimated_cost_usd), 0) "
                    "from agent_billing_hourly where tenant_id = %s", (tenant,))
        billing = cur.fetchone()
        cur.execute("select coalesce(sum(estimated_cost_usd), 0) from agent_turns "
                    "where session_id = any(%s)", (sessions,))
        turn_cost = cur.fetchone()[0]
        cur.execute("select row_to_json(t)::text from agent_turns t where session_id = any(%s)",
                    (sessions,))
        turn_dumps = [r[0] for r in cur.fetchall()]
        cur.execute("select raw_payload from failed_events where pipeline = 'text_agent' "
                    "and raw_payload like %s", (f"%{tenant}%",))
        dead = [r[0] for r in cur.fetchall()]
    return turns, conversations, billing, turn_cost, turn_dumps, dead


def test_kafka_to_postgres_redis_s3_and_replay(services, kafka_bootstrap, s3_bucket):
    import boto3
    import fastavro

    run_id = uuid.uuid4().hex[:8]
    tenant = f"it-{run_id}"
    seed = int(run_id, 16) % 100_000
    lines = _sample(tenant, seed)
    expected = _expected(lines)
    sessions = sorted({s for s, _ in expected})
    topic = make_topic(kafka_bootstrap, 3, prefix="it-text-agent")
    produce(kafka_bootstrap, topic,
            [(i % 3, None, line.encode(), None) for i, line in enumerate(lines)])
    prefix = f"it-text-agent-{run_id}"
    archive = f"s3://{s3_bucket}/{prefix}"

    _run_job(services, topic, archive)
    first = _pg_totals(services.pg_dsn, tenant, sessions)
    turns, conversations, billing, turn_cost, turn_dumps, dead = first

    # agent_turns: one row per distinct (session_id, turn_id), retries absorbed
    assert turns[0] == len(expected)
    assert turns[1] == sum(e["tokens_in"] + e["tokens_out"] for e in expected.values())
    # one conversation per session (turns are minutes apart, gap 30 min)
    assert conversations == (len(sessions), len(expected))
    # billing: every turn counted once, cost equal to the sum over turns
    assert billing[1] == len(expected)
    assert float(billing[2]) == pytest.approx(float(turn_cost), abs=1e-6)
    # no raw PII anywhere: the emails/phones of the sample are tokenised
    assert all("@example.com" not in d and "415 555" not in d for d in turn_dumps)
    assert dead and all("leaker@example.org" not in d for d in dead)

    # Redis: live conversation state and the tenant's running cost for the day
    client = redis.Redis.from_url(services.redis_url, decode_responses=True)
    try:
        state = client.hgetall(f"iheard:text_agent:session:{sessions[0]}")
        assert int(state["turn_count"]) == sum(1 for s, _ in expected if s == sessions[0])
        days = sorted({dt.datetime.fromtimestamp(e["timestamp_ms"] / 1000, dt.timezone.utc).date()
                       for e in expected.values()})
        redis_cost = sum(read_cost_today(client, tenant, day) for day in days)
        assert redis_cost == pytest.approx(float(turn_cost), abs=1e-5)
    finally:
        client.close()

    # S3: Avro files under source=text_agent/date=/hour=, redacted texts only
    s3 = boto3.client("s3", endpoint_url=services.s3_endpoint,
                      aws_access_key_id=services.s3_access_key,
                      aws_secret_access_key=services.s3_secret_key,
                      region_name=services.s3_region)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix=prefix + "/")
            .get("Contents", [])]
    assert keys and all("/source=text_agent/date=" in k and k.endswith(".avro") for k in keys)
    archived = []
    for key in keys:
        body = s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
        archived.extend(fastavro.reader(io.BytesIO(body)))
    assert {(r["session_id"], r["turn_id"]) for r in archived} == set(expected)
    assert all("@example.com" not in json.dumps(r) for r in archived)

    # Replay the whole topic: upserts and deterministic archive names leave
    # every total as it was.
    _run_job(services, topic, archive)
    second = _pg_totals(services.pg_dsn, tenant, sessions)
    assert second[:4] == first[:4]
    keys_again = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix=prefix + "/")
                  .get("Contents", [])]
    assert sorted(keys_again) == sorted(keys)

    # Restate the run's turns from the S3 archive under the 2025.06 book:
    # one row per turn, originals as stored, agent_turns untouched.
    from beam_pipelines import restate_costs

    days = sorted({dt.datetime.fromtimestamp(e["timestamp_ms"] / 1000, dt.timezone.utc).date()
                   for e in expected.values()})
    restate_costs.run([
        f"--archive_path={archive}", f"--postgres_dsn={services.pg_dsn}",
        f"--s3_endpoint_url={services.s3_endpoint}",
        f"--s3_access_key_id={services.s3_access_key}",
        f"--s3_secret_access_key={services.s3_secret_key}",
        f"--s3_region_name={services.s3_region}",
        f"--from={days[0].isoformat()}", f"--to={days[-1].isoformat()}",
        "--price_book_version=2025.06", f"--pii_secret={SECRET}",
    ], runner=FnApiRunner())
    import psycopg

    with psycopg.connect(services.pg_dsn) as conn, conn.cursor() as cur:
        cur.execute("select count(*), coalesce(sum(original_cost_usd), 0) "
                    "from agent_cost_restatements where session_id = any(%s) "
                    "and price_book_version = '2025.06'", (sessions,))
        restated = cur.fetchone()
    assert restated[0] == len(expected)
    assert float(restated[1]) == pytest.approx(float(turn_cost), abs=1e-6)
    assert _pg_totals(services.pg_dsn, tenant, sessions)[:4] == first[:4]


# -- the same job on the real Flink cluster -----------------------------------
# The fixture lives with the Flink tests; importing it makes it usable here.
from tests.flink.conftest import flink_cluster  # noqa: E402,F401  pylint: disable=unused-import


@pytest.mark.flink
@pytest.mark.slow
def test_batch_job_on_flink_writes_postgres(services, flink_cluster, tmp_path):
    """``python -m beam_pipelines.text_agent --profile=flink-local`` over a
    JSON-lines file: the job FINISHES on Flink, its counters are the
    expected ones and PostgreSQL holds one row per distinct turn and one
    conversation per session."""
    import subprocess
    import sys

    import psycopg

    from tests.flink.conftest import REPO_ROOT, unique_job_name

    seed = uuid.uuid4().int % 1_000_000
    lines = generate.sample_turns(n_sessions=15, seed=seed)
    expected = _expected(lines)
    sessions = sorted({s for s, _ in expected})
    path = tmp_path / "turns.jsonl"
    path.write_text("\n".join(lines) + "\n")
    job_name = unique_job_name("iheard-test-text-agent")
    env = flink_cluster.process_env()
    env.pop("REDIS_HOST", None)  # Redis is covered above; keep this job lean
    done = subprocess.run(
        [sys.executable, "-m", "beam_pipelines.text_agent", "--profile=flink-local",
         f"--input={path}", f"--postgres_dsn={services.pg_dsn}",
         f"--archive_path={tmp_path / 'archive'}", f"--pii_secret={SECRET}",
         f"--job_name={job_name}"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    rest = flink_cluster.rest
    jid = rest.job_id_by_name(job_name)
    assert jid and rest.state(jid) == "FINISHED"
    assert any("EnrichTurns" in v["name"] for v in rest.job(jid)["vertices"])
    counters = rest.accumulator_user_counters(jid)
    valid = sum(1 for line in lines if _expected([line]))
    assert counters[("text_agent", "received")] == len(lines)
    assert counters[("text_agent", "valid")] == valid
    assert counters[("text_agent", "turns_enriched")] == len(expected)

    with psycopg.connect(services.pg_dsn) as conn, conn.cursor() as cur:
        cur.execute("select count(*) from agent_turns where session_id = any(%s)", (sessions,))
        assert cur.fetchone()[0] == len(expected)
        cur.execute("select count(*), sum(turn_count) from agent_conversations "
                    "where session_id = any(%s)", (sessions,))
        assert cur.fetchone() == (len(sessions), len(expected))
