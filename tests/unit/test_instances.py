"""Named instances (services/instance.sh): the port arithmetic and what `env` prints.

Runs only the scripts' ``env`` command against a scratch IHEARD_HOME: no
server starts. The ports every instance may use must stay clear of the
default set, of the --secure set, of Linux's ephemeral range and of every
other instance; the default instance must print exactly its old settings.
"""
from __future__ import annotations

import os
import subprocess

import pytest

from tests.support import (CLUSTER_SH, DEFAULT_PORTS, INSTANCE_SLOTS, SECURE_PORTS, SERVICES_SH, instance_port,
                           instance_ports, parse_exports)

EPHEMERAL = range(32768, 61000)


def _env(script, home, *args, instance=None):
    env = {k: v for k, v in os.environ.items() if k != "IHEARD_INSTANCE"}
    env["IHEARD_HOME"] = str(home)
    if instance is not None:
        env["IHEARD_INSTANCE"] = instance
    done = subprocess.run(["bash", script, "env", *args], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return parse_exports(done.stdout)


def test_instance_port_blocks_avoid_the_default_secure_ephemeral_sets_and_each_other():
    seen = set()
    for slot in range(INSTANCE_SLOTS):
        ports = instance_ports(slot)
        assert len(ports) == 40  # every offset of the table
        assert not ports & DEFAULT_PORTS, slot
        assert not ports & SECURE_PORTS, slot
        assert not any(p in EPHEMERAL for p in ports), slot
        assert not ports & seen, slot
        seen |= ports


def test_default_instance_env_is_unchanged(tmp_path):
    services = _env(SERVICES_SH, tmp_path)
    assert services["KAFKA_BOOTSTRAP"] == "127.0.0.1:19092"
    assert (services["POSTGRES_PORT"], services["REDIS_PORT"]) == ("15433", "16380")
    assert services["SPACES_ENDPOINT"] == "http://127.0.0.1:19000"
    assert "IHEARD_INSTANCE" not in services
    flink = _env(CLUSTER_SH, tmp_path)
    assert flink["FLINK_MASTER"] == "localhost:18081"
    assert flink["FLINK_PROMETHEUS_URL"] == "http://127.0.0.1:19249/metrics"
    assert flink["FLINK_CONF_DIR"] == str(tmp_path / "flink" / "conf")
    assert not (tmp_path / "instances").exists()  # the default allocates no slot


def test_named_instances_get_distinct_slots_ports_and_folders(tmp_path):
    a = _env(SERVICES_SH, tmp_path, "--instance=alpha")
    b = _env(SERVICES_SH, tmp_path, instance="beta")  # the environment variable works too
    again = _env(SERVICES_SH, tmp_path, "--instance=alpha")
    assert a == again  # a slot, once given, stays
    assert a["IHEARD_INSTANCE_SLOT"] != b["IHEARD_INSTANCE_SLOT"]
    for env in (a, b):
        slot = int(env["IHEARD_INSTANCE_SLOT"])
        assert env["KAFKA_BOOTSTRAP"] == f"127.0.0.1:{instance_port(slot, 'kafka')}"
        assert int(env["POSTGRES_PORT"]) == instance_port(slot, "postgres")
        assert int(env["REDIS_PORT"]) == instance_port(slot, "redis")
        assert env["SPACES_ENDPOINT"] == f"http://127.0.0.1:{instance_port(slot, 's3')}"
        assert env["IHEARD_INSTANCE_DIR"] == str(tmp_path / "instances" / env["IHEARD_INSTANCE"])
        assert env["IHEARD_HOME"] == str(tmp_path)  # the shared root, not the instance folder
        flink = _env(CLUSTER_SH, tmp_path, f"--instance={env['IHEARD_INSTANCE']}")
        assert flink["FLINK_MASTER"] == f"localhost:{instance_port(slot, 'flink_rest')}"
        assert flink["FLINK_PROMETHEUS_URL"] == f"http://127.0.0.1:{instance_port(slot, 'flink_tm_prometheus')}/metrics"
        assert flink["FLINK_JOBMANAGER_PROMETHEUS_URL"] == (
            f"http://127.0.0.1:{instance_port(slot, 'flink_jm_prometheus')}/metrics")
        assert flink["FLINK_CONF_DIR"] == env["IHEARD_INSTANCE_DIR"] + "/flink/conf"
        # the downloads stay shared
        assert flink["FLINK_HOME"].startswith(str(tmp_path / "flink" / "dist"))


@pytest.mark.parametrize("bad", ["Upper", "-dash", "a/b", "x" * 41, "sp ace"])
def test_bad_instance_names_are_refused(tmp_path, bad):
    done = subprocess.run(["bash", SERVICES_SH, "env", f"--instance={bad}"], capture_output=True, text=True,
                          env={**os.environ, "IHEARD_HOME": str(tmp_path)}, timeout=60)
    assert done.returncode == 2 and "instance name" in done.stderr


def test_secure_and_instance_do_not_combine(tmp_path):
    done = subprocess.run(["bash", SERVICES_SH, "env", "--secure", "--instance=x"], capture_output=True, text=True,
                          env={**os.environ, "IHEARD_HOME": str(tmp_path)}, timeout=60)
    assert done.returncode == 2
