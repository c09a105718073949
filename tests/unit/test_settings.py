"""iheard_io.settings: the one reader of the environment, one name per setting."""
import pathlib
import re
import zipfile

import pytest

from iheard_io import settings

REPO = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = ("beam_pipelines", "transforms", "io", "schemas", "runners", "collector", "monitoring")
KNOWN = {v.name for v in settings.VARIABLES} | {name for name, _ in settings.SCRIPT_VARIABLES}


def _function_body(script: str, name: str) -> str:
    text = (REPO / script).read_text()
    start = text.index(f"{name}() {{")
    return text[start:text.index("\n}\n", start)]


def test_no_other_module_reads_the_environment():
    readers = re.compile(r"os\.environ\.get|os\.environ\[|os\.getenv|environ\.get\(|\benv\.get\(")
    found = []
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            if path == REPO / "io" / "settings.py":
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if readers.search(line):
                    found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert found == []


def test_every_name_the_service_scripts_print_is_a_project_setting():
    services = set(re.findall(r"\[([A-Z_]+)\]=", _function_body("services/services.sh", "cmd_env")))
    cluster = set(re.findall(r"export ([A-Z_]+)=", _function_body("flink/cluster.sh", "cmd_env")))
    assert {"KAFKA_BOOTSTRAP", "POSTGRES_HOST", "SPACES_ENDPOINT"} <= services
    assert {"FLINK_MASTER", "FLINK_JOB_SERVER_JAR"} <= cluster
    assert (services | cluster) - KNOWN == set()
    # One name per setting: the old second spellings are gone.
    for old in ("POSTGRES_DSN", "REDIS_URL", "S3_ENDPOINT_URL", "S3_REGION", "S3_CA_BUNDLE",
                "FLINK_REST_URL", "IHEARD_FLINK_JOB_SERVER_JAR"):
        assert old not in KNOWN


def test_readme_table_lists_every_setting_once():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Settings"):]
    section = section[:section.index("\n## ", 4)]
    rows = re.findall(r"^\| `([A-Z_]+)` \|", section, flags=re.M)
    assert sorted(rows) == sorted(KNOWN)
    assert len(rows) == len(set(rows))


def test_an_unlisted_name_is_refused():
    with pytest.raises(KeyError, match="not one of the project's settings"):
        settings.value({"POSTGRES_DSN": "x"}, "POSTGRES_DSN")


def test_empty_counts_as_unset_and_defaults_apply():
    env = {"FLINK_MASTER": "", "POSTGRES_HOST": "db", "POSTGRES_PASSWORD": "p w'"}
    assert settings.flink_master(env, "localhost:18081") == "localhost:18081"
    assert settings.flink_rest_url(env) is None
    assert settings.flink_rest_url({"FLINK_MASTER": "flink:8081"}) == "http://flink:8081"
    assert settings.flink_rest_url({"FLINK_MASTER": "https://f:1"}) == "https://f:1"
    dsn = settings.postgres_dsn(env)
    assert "host=db" in dsn and "port=5432" in dsn and "password='p w\\''" in dsn
    assert settings.iheard_home({"IHEARD_HOME": "/h"}) == "/h"


def test_kafka_security_flags_win_and_password_file_keeps_the_password_out():
    env = {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_USER": "u", "KAFKA_PASSWORD": "pw",
           "KAFKA_PASSWORD_FILE": "/run/pw", "KAFKA_SSL_CAFILE": "/ca.pem"}
    assert settings.kafka_security(env) == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "username": "u",
        "password_file": "/run/pw", "ssl_cafile": "/ca.pem"}
    assert settings.kafka_security(env, protocol="PLAINTEXT") == {"security_protocol": "PLAINTEXT"}


def test_collector_and_exporter_read_the_shared_names(monkeypatch):
    from collector.settings import parse_args

    monkeypatch.setenv("KAFKA_BOOTSTRAP", "k:1")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("KAFKA_USER", "alice")
    monkeypatch.setenv("KAFKA_PASSWORD_FILE", "/run/kafka")
    monkeypatch.setenv("FLINK_MASTER", "127.0.0.1:18081")
    collector, _ = parse_args([])
    config = collector.kafka_client_config()
    assert config["sasl_mechanism"] == "SCRAM-SHA-512"
    assert config["sasl_plain_password_file"] == "/run/kafka"
    assert collector.flink_rest_url == "http://127.0.0.1:18081"


def test_job_server_jar_one_name_for_profiles_and_uber_jar(tmp_path):
    from runners.profiles import profile_flags
    from runners.uberjar import ENTRY_CLASS, holds_runner_classes, resolve_jar

    launcher, fat = tmp_path / "launcher.jar", tmp_path / "fat.jar"
    with zipfile.ZipFile(launcher, "w") as jar:
        jar.writestr("META-INF/MANIFEST.MF", "Class-Path: a.jar\n")
    with zipfile.ZipFile(fat, "w") as jar:
        jar.writestr(ENTRY_CLASS.replace(".", "/") + ".class", b"\xca\xfe")
    assert not holds_runner_classes(str(launcher)) and holds_runner_classes(str(fat))
    env = {"FLINK_JOB_SERVER_JAR": str(fat)}
    assert f"--flink_job_server_jar={fat}" in profile_flags("flink-local", env)
    assert resolve_jar(None, env) == str(fat)
