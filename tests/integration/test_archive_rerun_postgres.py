"""Archive re-runs give the original run's tables on PostgreSQL, with the
archive on the S3 server (the checks of tests/pipeline/test_archive_rerun.py).

Each test gets two databases of its own (created and dropped here), so the
recompute of a re-run's range touches nothing another test wrote."""
import uuid

import psycopg
import pytest

from iheard_io import settings
from tests.pipeline.test_archive_rerun import Store, check_rerun_equals_original


@pytest.fixture
def databases(services):
    """Two fresh PostgreSQL databases' DSNs."""
    admin = services.pg_dsn
    names = [f"rerun_{uuid.uuid4().hex[:12]}_{i}" for i in range(2)]
    with psycopg.connect(admin, autocommit=True) as conn:
        for name in names:
            conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield [settings.postgres_dsn(dict(services.env, POSTGRES_DB=name)) for name in names]
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", ["frontend", "text_agent"])
def test_archive_rerun_equals_the_original_run_postgres_s3(pipeline, services, databases,
                                                           tmp_path, monkeypatch):
    import boto3

    s3 = boto3.client("s3", endpoint_url=services.s3_endpoint,
                      aws_access_key_id=services.s3_access_key,
                      aws_secret_access_key=services.s3_secret_key,
                      region_name=services.s3_region)
    prefix = f"rerun-test/{uuid.uuid4().hex[:12]}"
    root = f"s3://{services.s3_bucket}/{prefix}"

    def state(_root):
        out = {}
        for page in s3.get_paginator("list_objects_v2").paginate(
                Bucket=services.s3_bucket, Prefix=prefix + "/"):
            for obj in page.get("Contents", []):
                body = s3.get_object(Bucket=services.s3_bucket, Key=obj["Key"])["Body"].read()
                out[obj["Key"][len(prefix) + 1:]] = body
        return out

    # The Spaces variables give Beam's S3 filesystem its endpoint and keys.
    for name in ("SPACES_ACCESS_KEY", "SPACES_SECRET_KEY", "SPACES_ENDPOINT", "SPACES_REGION"):
        monkeypatch.setenv(name, services.env[name])
    # run_job hands the keys to boto3 as AWS_* variables: recorded here, so
    # monkeypatch undoes them after the test.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", services.s3_access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", services.s3_secret_key)
    for name in ("REDIS_HOST", "POSTGRES_HOST"):
        monkeypatch.delenv(name, raising=False)
    first, fresh = databases
    check_rerun_equals_original(pipeline, tmp_path, Store(tmp_path / "first", first),
                                Store(tmp_path / "fresh", fresh), archive=root, state=state)
