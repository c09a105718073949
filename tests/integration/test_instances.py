"""A private instance of the services runs beside the default one and goes away alone.

Starts the default services (shared, idempotent ``up``), then a named
instance of PostgreSQL, Redis and S3 (Kafka's start is what the fault tests
pay for; the port and folder logic is the same for every service), checks
each answers on its own port with its own data, then ``down`` of the
instance: it stops, the default set still runs and is healthy.
"""
from __future__ import annotations

import os
import re
import uuid

import psycopg
import pytest
import redis

from iheard_io import settings
from tests.integration.conftest import run_services_sh
from tests.support import PrivateInstance

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def _default_status():
    env = {k: v for k, v in os.environ.items() if k != "IHEARD_INSTANCE"}
    return run_services_sh("status", timeout_s=60, env=env)


def test_private_instance_runs_beside_the_default_and_down_stops_only_it(services):
    default = services.env
    assert _default_status().returncode == 0
    name = f"t-{uuid.uuid4().hex[:8]}"
    instance = PrivateInstance(name, services=("postgres", "redis", "s3"))
    with instance:
        env = instance.env
        assert env["IHEARD_INSTANCE"] == name
        assert env["REDIS_PORT"] != default["REDIS_PORT"] and env["POSTGRES_PORT"] != default["POSTGRES_PORT"]
        key = f"instance-test:{name}"
        redis.Redis.from_url(settings.redis_url(env)).set(key, "private")
        assert redis.Redis.from_url(settings.redis_url(default)).get(key) is None
        with psycopg.connect(settings.postgres_dsn(env), autocommit=True) as conn:
            assert conn.execute("select inet_server_port()").fetchone()[0] == int(env["POSTGRES_PORT"])
        status = instance.services_sh("status", "postgres", "redis", "s3", check=False)
        assert status.returncode == 0, status.stdout
        pids = [int(m) for m in re.findall(r"running\s+pid (\d+)", status.stdout)]
        assert len(pids) == 3, status.stdout
        instance_dir = env["IHEARD_INSTANCE_DIR"]
        assert os.path.isdir(os.path.join(instance_dir, "redis", "run"))
    # down (reset) stopped the instance and removed its folder; the default runs on.
    for pid in pids:
        assert not _alive(pid), pid
    assert not os.path.exists(instance_dir)
    default_after = _default_status()
    assert default_after.returncode == 0, default_after.stdout
    assert redis.Redis.from_url(settings.redis_url(default)).ping()
