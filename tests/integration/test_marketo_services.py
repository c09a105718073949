"""Marketo end to end on the real servers: local Marketo stub -> extractor ->
Kafka (fresh topic) -> beam_pipelines.marketo (bounded Kafka read) ->
PostgreSQL + Redis + the S3 archive (source=marketo, redacted), with a 607
quota stop in the middle of the extraction and the high-water mark in
PostgreSQL."""
import datetime as dt
import io
import json
import uuid

import boto3
import fastavro

import psycopg
import pytest
import redis
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from beam_pipelines import marketo, marketo_extract
from tests.integration.test_kafka_io import make_topic
from tests.marketo_server import CLIENT_ID, CLIENT_SECRET, MarketoStub, iso

SECRET = "integration-secret-0123456789"
START_MS = 1_735_000_000_000


def _lead(lead_id, updated_ms, user_id=None):
    lead = {"id": lead_id, "email": f"buyer{lead_id}@acme-corp.com", "firstName": "grace",
            "lastName": "HOPPER", "company": "Acme Corp", "title": "CTO", "phone": "+1 415 555 0100",
            "leadSource": "Referral", "leadScore": 95, "country": "US", "state": "NY",
            "createdAt": iso(updated_ms - 86_400_000), "updatedAt": iso(updated_ms)}
    if user_id:
        lead["iheardUserId"] = user_id
    return lead


def _archived(services, prefix):
    s3 = boto3.client("s3", endpoint_url=services.s3_endpoint,
                      aws_access_key_id=services.s3_access_key,
                      aws_secret_access_key=services.s3_secret_key, region_name=services.s3_region)
    records = []
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=services.s3_bucket,
                                                         Prefix=prefix + "/")
    for page in pages:
        for obj in page.get("Contents", []):
            body = s3.get_object(Bucket=services.s3_bucket, Key=obj["Key"])["Body"].read()
            records.extend((obj["Key"], r) for r in fastavro.reader(io.BytesIO(body)))
    return records


def _extract(stub, services, topic, dead_topic, name):
    return marketo_extract.run([
        f"--marketo_base_url={stub.base_url}", f"--marketo_client_id={CLIENT_ID}",
        f"--marketo_client_secret={CLIENT_SECRET}", "--marketo_since=2024-12-01T00:00:00Z",
        f"--marketo_extract_name={name}", "--marketo_rate_limit_wait_seconds=0.05",
        f"--kafka_bootstrap={services.kafka_bootstrap}", f"--kafka_topic={topic}",
        f"--dead_letter_topic={dead_topic}", f"--postgres_dsn={services.pg_dsn}",
        f"--pii_secret={SECRET}"], env={})


def test_extract_to_kafka_to_postgres_with_quota_stop(services):
    run = uuid.uuid4().int % 1000
    base = 1_500_000_000 + run * 10_000  # this run's lead ids (INTEGER column)
    n = 120
    user_id = f"it-marketo-user-{uuid.uuid4().hex[:8]}"
    name = f"it-marketo-{uuid.uuid4().hex[:8]}"
    topic = make_topic(services.kafka_bootstrap, 3, prefix="it-marketo")
    dead_topic = make_topic(services.kafka_bootstrap, 1, prefix="it-marketo-dlq")
    ids = list(range(base, base + n))
    client = redis.Redis.from_url(services.redis_url)
    with psycopg.connect(services.pg_dsn, autocommit=True) as conn:
        from iheard_io.postgres import ensure_schema

        ensure_schema(services.pg_dsn)
        conn.execute(
            "INSERT INTO frontend_sessions (session_id, window_start, window_end, user_id, "
            "event_count, messages, conversions, max_engagement_score) VALUES "
            "(%s, now(), now(), %s, 40, 8, 2, 95)", (f"it-{user_id}", user_id))
        try:
            with MarketoStub(page_size=30, daily_quota=5, expire_token_after_calls=3,
                             rate_limit_every=4) as stub:
                for i, lead_id in enumerate(ids):
                    stub.upsert_lead(_lead(lead_id, START_MS + i * 1000,
                                           user_id if i == 0 else None))
                first = _extract(stub, services, topic, dead_topic, name)
                assert first == marketo_extract.EXIT_QUOTA
                mark, status = conn.execute(
                    "SELECT high_water_mark, last_status FROM marketo_extract_state "
                    "WHERE name = %s", (name,)).fetchone()
                assert status == "quota_exhausted" and mark is not None
                assert mark < dt.datetime.fromtimestamp((START_MS + (n - 1) * 1000) / 1000,
                                                        tz=dt.timezone.utc)
                stub.daily_quota = 0
                assert _extract(stub, services, topic, dead_topic, name) == marketo_extract.EXIT_OK
                # a newer version of the first lead, extracted by a third run
                stub.upsert_lead(dict(_lead(ids[0], START_MS + 10_000_000, user_id),
                                      title="Chief Executive Officer"))
                assert _extract(stub, services, topic, dead_topic, name) == marketo_extract.EXIT_OK

            prefix = f"it-marketo-{run}-{uuid.uuid4().hex[:6]}"
            result = marketo.run([
                f"--kafka_bootstrap={services.kafka_bootstrap}", f"--kafka_topic={topic}",
                "--kafka_mode=bounded", "--kafka_start_from=earliest",
                f"--postgres_dsn={services.pg_dsn}", f"--redis_url={services.redis_url}",
                f"--archive_path=s3://{services.s3_bucket}/{prefix}",
                f"--s3_endpoint_url={services.s3_endpoint}",
                f"--s3_access_key_id={services.s3_access_key}",
                f"--s3_secret_access_key={services.s3_secret_key}",
                f"--s3_region_name={services.s3_region}",
                f"--pii_secret={SECRET}"], runner=FnApiRunner())
            assert str(result.state) == "DONE"

            # The archive: one record per lead (its newest version), same
            # layout as the other sources, and no address, name or phone.
            archived = _archived(services, prefix)
            assert {key.split("/")[1] for key, _ in archived} == {"source=marketo"}
            by_lead = {r["lead_id"]: r for _, r in archived}
            assert sorted(by_lead) == ids and len(archived) == n
            assert json.loads(by_lead[ids[0]]["transformation_metadata_json"])["title"] == (
                "Chief Executive Officer")
            text = json.dumps([r for _, r in archived]).lower()
            assert "@acme-corp.com" not in text and "hopper" not in text
            assert "415 555 0100" not in text and "4155550100" not in text

            rows = conn.execute(
                "SELECT lead_id, lead_quality_score, engagement_level, recommended_action, "
                "transformation_metadata->>'title', (engagement->>'sessions')::int "
                "FROM marketo_leads WHERE lead_id BETWEEN %s AND %s ORDER BY lead_id",
                (base, base + n)).fetchall()
            assert [r[0] for r in rows] == ids  # every lead, once
            first_row = rows[0]
            assert first_row[4] == "Chief Executive Officer"  # the newest version won
            assert first_row[5] == 1 and first_row[2] in ("medium", "high")
            assert all(r[1] > 80 for r in rows)
            (count,), = conn.execute(
                "SELECT COUNT(*) FROM marketo_leads WHERE lead_quality_score > 80 "
                "AND lead_id BETWEEN %s AND %s", (base, base + n)).fetchall()
            assert count == n
            for r in rows:
                in_set = client.zscore("iheard:marketo:priority_leads", str(r[0])) is not None
                assert in_set == (r[3] == "immediate_sales_follow_up")
        finally:
            conn.execute("DELETE FROM marketo_leads WHERE lead_id BETWEEN %s AND %s",
                         (base, base + n))
            conn.execute("DELETE FROM frontend_sessions WHERE user_id = %s", (user_id,))
            conn.execute("DELETE FROM marketo_extract_state WHERE name = %s", (name,))
            client.zrem("iheard:marketo:priority_leads", *[str(i) for i in ids])
            client.hdel("iheard:marketo:lead_version", *[str(i) for i in ids])
            client.close()
