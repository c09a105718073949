"""Security settings without servers: how the secure environment becomes
connector arguments, secrets read from files, and redaction.

The same settings against real TLS/SASL servers: tests/integration/test_secure_services.py.
"""
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from beam_pipelines.options import IheardOptions, resolve_connections
from iheard_io.kafka import kafka_client_config
from iheard_io.postgres import is_refusal
from iheard_io.retry import PostgresErrors
from iheard_io.security import read_secret_file, redact, resolve_secret_files

SECURE_ENV = {
    "KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "KAFKA_USER": "iheard", "KAFKA_PASSWORD": "kafka-pw-123", "KAFKA_SSL_CAFILE": "/tls/ca.pem",
    "POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": "25433", "POSTGRES_USER": "iheard",
    "POSTGRES_PASSWORD": "pg-pw-456", "POSTGRES_DB": "analytics",
    "POSTGRES_SSLMODE": "verify-full", "POSTGRES_SSLROOTCERT": "/tls/ca.pem",
    "REDIS_HOST": "127.0.0.1", "REDIS_PORT": "26380", "REDIS_PASSWORD": "redis/pw:789",
    "REDIS_TLS": "1", "REDIS_CA_CERT": "/tls/ca.pem", "PII_HMAC_SECRET": "pii-key-000",
}


def test_secure_environment_becomes_tls_and_sasl_settings():
    conns = resolve_connections(IheardOptions([]), env=SECURE_ENV)
    assert conns.kafka_security == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
        "username": "iheard", "password": "kafka-pw-123",
        "ssl_cafile": "/tls/ca.pem",
    }
    dsn = conninfo_to_dict(conns.postgres_dsn)
    assert dsn["sslmode"] == "verify-full" and dsn["sslrootcert"] == "/tls/ca.pem"
    assert dsn["password"] == "pg-pw-456"
    # the password is URL-quoted; the CA travels as redis-py's ssl_ca_certs
    assert conns.redis_url == "rediss://:redis%2Fpw%3A789@127.0.0.1:26380/0?ssl_ca_certs=/tls/ca.pem"


def test_flags_still_win_over_the_environment():
    opts = IheardOptions(["--kafka_security_protocol=SSL", "--kafka_ssl_cafile=/flag/ca.pem"])
    conns = resolve_connections(opts, env=SECURE_ENV)
    assert conns.kafka_security == {"security_protocol": "SSL", "ssl_cafile": "/flag/ca.pem"}


def test_password_files_keep_passwords_out_of_the_settings(tmp_path):
    env = {**SECURE_ENV, "KAFKA_PASSWORD_FILE": str(tmp_path / "kafka"),
           "REDIS_PASSWORD_FILE": str(tmp_path / "redis"),
           "POSTGRES_PASSFILE": str(tmp_path / "pgpass")}
    conns = resolve_connections(IheardOptions([]), env=env)
    text = repr(conns.kafka_security) + conns.postgres_dsn + conns.redis_url
    for secret in ("kafka-pw-123", "pg-pw-456", "redis/pw:789", "redis%2Fpw"):
        assert secret not in text
    assert conns.kafka_security["password_file"] == str(tmp_path / "kafka")
    assert "password" not in conns.kafka_security
    assert conninfo_to_dict(conns.postgres_dsn)["passfile"] == str(tmp_path / "pgpass")
    assert conns.redis_password_file == str(tmp_path / "redis")


def test_kafka_settings_are_the_connectors_keyword_arguments(tmp_path):
    # Connections.kafka_security is passed as **kwargs to ReadFromKafka /
    # WriteToKafka / kafka_client_config: every key must be one they take.
    env = {**SECURE_ENV, "KAFKA_PASSWORD_FILE": str(tmp_path / "kafka")}
    conns = resolve_connections(IheardOptions([]), env=env)
    config = kafka_client_config("b:1", **conns.kafka_security)
    assert config["sasl_plain_password_file"] == str(tmp_path / "kafka")
    assert config["ssl_cafile"] == "/tls/ca.pem"


def test_secret_files_are_read_on_the_worker(tmp_path):
    (tmp_path / "kafka").write_text("s3cr3t\n")
    config = kafka_client_config("b:1", "SASL_SSL", "SCRAM-SHA-512", "iheard",
                                 None, "/tls/ca.pem", password_file=str(tmp_path / "kafka"))
    assert "sasl_plain_password" not in config
    resolved = resolve_secret_files(config)
    assert resolved["sasl_plain_password"] == "s3cr3t"
    assert "sasl_plain_password_file" not in resolved


def test_an_unreadable_secret_file_names_the_path_only(tmp_path):
    with pytest.raises(PermissionError, match="cannot read secret file .*missing"):
        read_secret_file(str(tmp_path / "missing"))


def test_connections_repr_shows_no_secret():
    conns = resolve_connections(IheardOptions([]), env=SECURE_ENV)
    text = repr(conns)
    for secret in ("kafka-pw-123", "pg-pw-456", "redis%2Fpw%3A789", "pii-key-000"):
        assert secret not in text
    assert "sslrootcert=/tls/ca.pem" in text  # the rest stays readable


def test_redact_masks_dsn_url_and_named_values():
    assert redact("host=h password=abc user=u") == "host=h password=*** user=u"
    assert redact("postgresql://u:abc@h:1/db") == "postgresql://u:***@h:1/db"
    assert redact({"sasl_plain_password": "abc", "user": "u"}) == {
        "sasl_plain_password": "***", "user": "u"}


@pytest.mark.parametrize("message, refusal", [
    ('connection failed: FATAL:  password authentication failed for user "iheard"', True),
    ('FATAL:  no pg_hba.conf entry for host "127.0.0.1", user "iheard", no encryption', True),
    ("connection failed: SSL error: certificate verify failed", True),
    ("connection failed: Connection refused", False),
    ("terminating connection due to administrator command", False),
])
def test_postgres_refusals_are_not_retried(message, refusal):
    exc = psycopg.OperationalError(message)
    assert is_refusal(exc) is refusal
    assert PostgresErrors().is_transient(exc) is (not refusal)


def test_redact_masks_a_quoted_libpq_password():
    from psycopg.conninfo import make_conninfo

    dsn = make_conninfo(host="h", password="a b'c", user="u")
    assert "a b" not in redact(dsn) and "user=u" in redact(dsn)
