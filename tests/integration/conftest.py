"""Fixtures for tests that talk to the project's real servers.

The session fixture ``services`` runs ``services/services.sh up`` once per
test session. The script is idempotent: when the servers already run (as
under ``make test``, which starts them first) it only checks their health.
The servers are left running at the end of the session; whoever started the
session (Makefile, CI script, developer) decides when to stop them with
``services.sh down``.

Every test collected under tests/integration is marked ``integration``, so
``pytest -m "not integration"`` skips them all.
"""
import dataclasses
import os
import pathlib
import subprocess

import pytest

from iheard_io import settings
from tests.support import parse_exports

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SERVICES_SH = REPO_ROOT / "services" / "services.sh"
INTEGRATION_DIR = pathlib.Path(__file__).resolve().parent

# A cold `up` resolves the Kafka jars with mvn and may apt-get install
# PostgreSQL and Redis; a warm one takes seconds.
UP_TIMEOUT_S = 900
ENV_TIMEOUT_S = 30


@dataclasses.dataclass(frozen=True)
class Services:
    """Connection settings of the running servers, from ``services.sh env``."""

    env: dict

    @property
    def kafka_bootstrap(self):
        return self.env["KAFKA_BOOTSTRAP"]

    @property
    def pg_dsn(self):
        return settings.postgres_dsn(self.env)

    @property
    def redis_url(self):
        return settings.redis_url(self.env)

    @property
    def s3_endpoint(self):
        return self.env["SPACES_ENDPOINT"]

    @property
    def s3_bucket(self):
        return self.env["ARCHIVE_BUCKET"]

    @property
    def s3_access_key(self):
        return self.env["SPACES_ACCESS_KEY"]

    @property
    def s3_secret_key(self):
        return self.env["SPACES_SECRET_KEY"]

    @property
    def s3_region(self):
        return self.env["SPACES_REGION"]


def run_services_sh(*args, timeout_s, env=None):
    """Runs services.sh with ARGS; returns the CompletedProcess (text)."""
    return subprocess.run(
        ["bash", str(SERVICES_SH), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env if env is not None else os.environ.copy(),
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.fixture(scope="session")
def services():
    """Starts (or checks) every service and returns their endpoints."""
    up = run_services_sh("up", timeout_s=UP_TIMEOUT_S)
    if up.returncode != 0:
        pytest.fail(
            f"services.sh up failed (exit {up.returncode}):\n{up.stderr}{up.stdout}",
            pytrace=False,
        )
    printed = run_services_sh("env", timeout_s=ENV_TIMEOUT_S)
    printed.check_returncode()
    return Services(env=parse_exports(printed.stdout))


@pytest.fixture(scope="session")
def secure_services():
    """Starts (or checks) the separate TLS + password set (``services.sh up
    --secure``: own ports and state beside the plain one) and returns its
    settings, secrets included (``services.sh env --secure``)."""
    up = run_services_sh("up", "--secure", timeout_s=UP_TIMEOUT_S)
    if up.returncode != 0:
        pytest.fail(
            f"services.sh up --secure failed (exit {up.returncode}):\n{up.stderr}{up.stdout}",
            pytrace=False,
        )
    printed = run_services_sh("env", "--secure", timeout_s=ENV_TIMEOUT_S)
    printed.check_returncode()
    return Services(env=parse_exports(printed.stdout))


@pytest.fixture(scope="session")
def kafka_bootstrap(services):
    return services.kafka_bootstrap


@pytest.fixture(scope="session")
def pg_dsn(services):
    return services.pg_dsn


@pytest.fixture(scope="session")
def redis_url(services):
    return services.redis_url


@pytest.fixture(scope="session")
def s3_endpoint(services):
    return services.s3_endpoint


@pytest.fixture(scope="session")
def s3_bucket(services):
    return services.s3_bucket


def pytest_collection_modifyitems(config, items):
    # This hook sees the whole session's items, not only this folder's.
    for item in items:
        if INTEGRATION_DIR in pathlib.Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.integration)
