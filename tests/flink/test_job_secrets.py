"""Secrets reach a Flink job without showing in its command line or in the
Flink dashboard's job configuration (issue 15).

Every Beam pipeline option is a Flink global job parameter: the dashboard
(and ``GET /jobs/<id>/config``, ``execution-config.user-config``) lists them
all. So the job below gets every secret the way a deployment would give it,
through the environment of the process whose workers need it (LOOPBACK
workers run in the submitting process; an EXTERNAL worker pool gets the same
variables, or an ``AWS_SHARED_CREDENTIALS_FILE``, from a Kubernetes Secret):

* ``PII_HMAC_SECRET``: read by ``resolve_connections``, pickled into the
  redaction step, never an option;
* ``POSTGRES_PASSWORD``: in the DSN ``resolve_connections`` builds, which
  the sinks carry; ``--postgres_dsn`` stays unset;
* ``SPACES_ACCESS_KEY`` / ``SPACES_SECRET_KEY``: ``apply_s3_options`` puts
  only endpoint and region into ``--s3_*`` and hands the keys to boto3 as
  ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` in the workers' environment.

A bounded frontend job (``--input`` file, ``--profile=flink-local``) runs to
the end; then the job's configuration, details and plan are read through the
REST API (``runners.flink_rest`` client) and searched for every secret, as are
the command lines of the submitting process and of its job-server JVM. The
archive objects and PostgreSQL rows it wrote show the secrets did reach the
workers.

Not run by the session that wrote it (the shared Flink cluster was busy with
a benchmark): run with ``python -m pytest tests/flink/test_job_secrets.py``.
"""
from __future__ import annotations

import json
import os
import subprocess
import uuid

import pytest

from beam_pipelines import generate
from iheard_io import settings
from tests.flink.conftest import REPO_ROOT, unique_job_name
from tests.flink.flink_rest import wait_for
from tests.support import script_env

pytestmark = [pytest.mark.flink, pytest.mark.slow]

SERVICES_SH = REPO_ROOT / "services" / "services.sh"
EVENTS = 200


@pytest.fixture(scope="module")
def services_env():
    up = subprocess.run(["bash", str(SERVICES_SH), "up"], capture_output=True, text=True, timeout=900)
    if up.returncode != 0:
        pytest.fail(f"services/services.sh up failed:\n{up.stdout}\n{up.stderr[-3000:]}")
    return script_env(str(SERVICES_SH))


def _cmdlines_of_session(sid: int):
    """Command lines of every process in session ``sid`` (the pipeline process
    was started with ``start_new_session``; its job-server JVM is in it too)."""
    lines = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getsid(int(pid)) != sid:
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                lines.append(f.read().replace(b"\0", b" ").decode(errors="replace"))
        except (OSError, ProcessLookupError):
            continue
    return lines


def _s3_keys(env, prefix):
    import boto3

    s3 = boto3.client("s3", endpoint_url=env["SPACES_ENDPOINT"], aws_access_key_id="reader",
                      aws_secret_access_key="reader", region_name=env.get("SPACES_REGION", "us-east-1"))
    listing = s3.list_objects_v2(Bucket=env["ARCHIVE_BUCKET"], Prefix=prefix + "/")
    return [obj["Key"] for obj in listing.get("Contents", [])]


def test_no_secret_in_the_flink_job_configuration_or_command_line(
        flink_cluster, background_pipelines, services_env, tmp_path):
    env = services_env
    run_id = uuid.uuid4().hex[:10]
    secrets = {
        "PII_HMAC_SECRET": f"pii-secret-{uuid.uuid4().hex}",
        "SPACES_ACCESS_KEY": f"AKIA{uuid.uuid4().hex[:16].upper()}",
        "SPACES_SECRET_KEY": f"s3-secret-{uuid.uuid4().hex}",
    }
    events = tmp_path / "events.jsonl"
    lines = [line.replace('"sess_', f'"sess_{run_id}_')
             for line in generate.frontend_events(EVENTS, seed=int(run_id, 16) % 10_000)]
    events.write_text("\n".join(lines) + "\n")
    prefix = f"flink-secrets/{run_id}"
    job_name = unique_job_name("iheard-test-secrets")

    # The pipeline process's environment: the plain services' settings as
    # variables (POSTGRES_PASSWORD included), the secrets above, and no
    # AWS_* of the test host's own.
    process_env = {k: v for k, v in flink_cluster.process_env().items()
                   if not k.startswith(("AWS_", "S3_", "SPACES_"))}
    process_env.update({
        "POSTGRES_HOST": env["POSTGRES_HOST"], "POSTGRES_PORT": env["POSTGRES_PORT"],
        "POSTGRES_USER": env["POSTGRES_USER"], "POSTGRES_PASSWORD": env["POSTGRES_PASSWORD"],
        "POSTGRES_DB": env["POSTGRES_DB"],
        "SPACES_ENDPOINT": env["SPACES_ENDPOINT"], "SPACES_REGION": env.get("SPACES_REGION", "us-east-1"),
        **secrets,
    })
    args = ["--profile=flink-local", f"--input={events}",
            f"--archive_path=s3://{env['ARCHIVE_BUCKET']}/{prefix}"]
    proc = background_pipelines.start("beam_pipelines.frontend", args, job_name, env=process_env)
    jid = background_pipelines.wait_job_id(proc, job_name)
    rest = flink_cluster.rest

    # While it runs: the command lines of the pipeline process and its JVM.
    cmdlines = _cmdlines_of_session(proc.pid)
    assert cmdlines, "no process of the pipeline's session found"

    state = rest.wait_state(jid, {"FINISHED", "FAILED", "CANCELED"}, 300)
    assert state == "FINISHED", f"{state}\n{rest.describe(jid)}\n{background_pipelines.log_tail(job_name)}"
    proc.wait(timeout=120)

    shown = {
        "job configuration": rest.client.get(f"/jobs/{jid}/config"),
        "job details": rest.client.get(f"/jobs/{jid}"),
        "job plan": rest.client.get(f"/jobs/{jid}/plan"),
    }
    user_config = shown["job configuration"]["execution-config"]["user-config"]
    # The right place: pipeline options are there (camelCase), ours included.
    assert user_config.get("archivePath") == f"s3://{env['ARCHIVE_BUCKET']}/{prefix}"
    assert user_config.get("s3EndpointUrl") == env["SPACES_ENDPOINT"]
    assert not user_config.get("s3SecretAccessKey") and not user_config.get("s3AccessKeyId")
    assert not user_config.get("postgresDsn") and not user_config.get("piiSecret")

    texts = {where: json.dumps(value) for where, value in shown.items()}
    texts["command lines"] = "\n".join(cmdlines) + "\n" + " ".join(args)
    for where, text in texts.items():
        for name, secret in secrets.items():
            assert secret not in text, f"{name} appears in the {where}"
        assert f"password={env['POSTGRES_PASSWORD']}" not in text, f"the DSN appears in the {where}"
        assert f":{env['POSTGRES_PASSWORD']}@" not in text, f"the DSN appears in the {where}"

    # ... and yet the workers had them: rows in PostgreSQL, objects in S3.
    import psycopg

    with psycopg.connect(settings.postgres_dsn(env)) as conn:
        rows = conn.execute("select count(*) from frontend_analytics where session_id like %s",
                            (f"sess_{run_id}_%",)).fetchone()[0]
    assert rows > 0
    assert wait_for(lambda: _s3_keys(env, prefix), 30, f"archive objects under {prefix}")
