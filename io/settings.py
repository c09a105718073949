"""Every environment variable the project reads, read here and only here.

Each entry point (the pipelines' ``resolve_connections``, the Marketo
extractor, the collector, the Prometheus exporter, the logging set-up, the
runner profiles and ``python -m runners.submit``) takes its environment
fallbacks from the functions below, so one setting has one name everywhere,
and it is the name ``services/services.sh env`` and ``flink/cluster.sh env``
print. ``VARIABLES`` lists them all (the README's settings table is checked
against it); ``value(env, NAME)`` refuses a name that is not listed, so a
reader cannot invent a second spelling.

Flags always win over the environment; these functions only give the
fallback. Connectors and DoFns never call them: they take every setting as an
argument (``docs/ARCHITECTURE.md``, Configuration).

Only the standard library is imported at module level, so every package
(``runners`` included) can use it cheaply.
"""
from __future__ import annotations

import os
import typing
import urllib.parse

__all__ = [
    "VARIABLES",
    "SCRIPT_VARIABLES",
    "Variable",
    "environment",
    "value",
    "postgres_dsn",
    "redis_url",
    "redis_password_file",
    "kafka_security",
    "pii_secret",
    "spaces_s3_options",
    "spaces_credentials",
    "snowflake_values",
    "marketo_api_values",
    "flink_master",
    "flink_rest_url",
    "iheard_home",
]

Env = typing.Mapping[str, str]


class Variable(typing.NamedTuple):
    name: str
    meaning: str
    default: str
    read_by: str


_PIPELINES = "pipelines"
_ALL_KAFKA = "pipelines, extractor, collector, exporter"

# One row per variable: name, what it sets, default, which entry points read it.
VARIABLES: typing.Tuple[Variable, ...] = (
    Variable("KAFKA_BOOTSTRAP", "Kafka bootstrap servers", "none (required by collector, "
             "exporter)", "collector, exporter"),
    Variable("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
             "PLAINTEXT", _ALL_KAFKA),
    Variable("KAFKA_SASL_MECHANISM", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", "PLAIN", _ALL_KAFKA),
    Variable("KAFKA_USER", "SASL user", "none", _ALL_KAFKA),
    Variable("KAFKA_PASSWORD", "SASL password", "none", _ALL_KAFKA),
    Variable("KAFKA_PASSWORD_FILE", "file the SASL password is read from (by the workers); "
             "wins over KAFKA_PASSWORD", "none", _ALL_KAFKA),
    Variable("KAFKA_SSL_CAFILE", "CA bundle the broker's certificate must chain to",
             "the system's CAs", _ALL_KAFKA),
    Variable("POSTGRES_HOST", "PostgreSQL host; unset: the embedded DuckDB file "
             "(pipelines), no database probe (exporter)", "none", "pipelines, extractor, exporter"),
    Variable("POSTGRES_PORT", "PostgreSQL port", "5432", "pipelines, extractor, exporter"),
    Variable("POSTGRES_USER", "PostgreSQL user", "postgres", "pipelines, extractor, exporter"),
    Variable("POSTGRES_PASSWORD", "PostgreSQL password", "empty", "pipelines, extractor, exporter"),
    Variable("POSTGRES_DB", "PostgreSQL database", "analytics", "pipelines, extractor, exporter"),
    Variable("POSTGRES_SSLMODE", "libpq sslmode", "prefer", "pipelines, extractor, exporter"),
    Variable("POSTGRES_SSLROOTCERT", "CA bundle for verify-ca/verify-full", "none",
             "pipelines, extractor, exporter"),
    Variable("POSTGRES_PASSFILE", "pgpass file libpq reads the password from (on the "
             "workers); wins over POSTGRES_PASSWORD", "none", "pipelines, extractor, exporter"),
    Variable("POSTGRES_CONNECT_TIMEOUT", "libpq connect_timeout, seconds", "10",
             "pipelines, extractor, exporter"),
    Variable("REDIS_HOST", "Redis host; unset: no Redis output (pipelines), no Redis probe "
             "(exporter)", "none", "pipelines, exporter"),
    Variable("REDIS_PORT", "Redis port", "6379", "pipelines, exporter"),
    Variable("REDIS_PASSWORD", "Redis password", "none", "pipelines, exporter"),
    Variable("REDIS_PASSWORD_FILE", "file the Redis password is read from (by the workers)",
             "none", "pipelines"),
    Variable("REDIS_TLS", "1/true/yes: rediss://", "off", "pipelines, exporter"),
    Variable("REDIS_CA_CERT", "CA bundle for rediss://", "the system's CAs", "pipelines, exporter"),
    Variable("SPACES_ENDPOINT", "S3 endpoint of the archive (Beam's --s3_endpoint_url)",
             "AWS", _PIPELINES),
    Variable("SPACES_REGION", "S3 region (--s3_region_name)", "boto3's", _PIPELINES),
    Variable("SPACES_CA_BUNDLE", "CA bundle for an https S3 endpoint (--s3_verify)",
             "the system's CAs", _PIPELINES),
    Variable("SPACES_ACCESS_KEY", "S3 access key (to boto3's AWS_ACCESS_KEY_ID, never a "
             "pipeline option)", "boto3's own lookup", _PIPELINES),
    Variable("SPACES_SECRET_KEY", "S3 secret key (to AWS_SECRET_ACCESS_KEY)",
             "boto3's own lookup", _PIPELINES),
    Variable("PII_HMAC_SECRET", "HMAC key of PII tokens", "a development key (warned about)",
             "pipelines, extractor"),
    Variable("SNOWFLAKE_ACCOUNT", "Snowflake account; set: load the warehouse tables",
             "none (no Snowflake)", _PIPELINES),
    Variable("SNOWFLAKE_USER", "Snowflake user", "none", _PIPELINES),
    Variable("SNOWFLAKE_PASSWORD", "Snowflake password", "none", _PIPELINES),
    Variable("SNOWFLAKE_DATABASE", "Snowflake database", "none", _PIPELINES),
    Variable("SNOWFLAKE_SCHEMA", "Snowflake schema", "PUBLIC", _PIPELINES),
    Variable("SNOWFLAKE_WAREHOUSE", "Snowflake warehouse", "the user's default", _PIPELINES),
    Variable("SNOWFLAKE_ROLE", "Snowflake role", "the user's default", _PIPELINES),
    Variable("MARKETO_BASE_URL", "Marketo REST base URL", "none (required)", "extractor"),
    Variable("MARKETO_CLIENT_ID", "Marketo API client id", "none (required)", "extractor"),
    Variable("MARKETO_CLIENT_SECRET", "Marketo API client secret", "none (required)", "extractor"),
    Variable("FLINK_MASTER", "Flink REST address (host:port or http://host:port)",
             "localhost:18081 (profiles); none (submit, collector /status, exporter)",
             "profiles, submit, collector, exporter"),
    Variable("FLINK_JOB_SERVER_JAR", "Beam Flink job-server jar (the launcher of "
             "flink/cluster.sh, or a fat jar; runners.submit builds a fat jar when given a "
             "launcher)", "the launcher under IHEARD_HOME", "profiles, submit"),
    Variable("IHEARD_HOME", "cache and service state folder", "~/.cache/iheardai",
             "profiles, services.sh, cluster.sh"),
    Variable("IHEARD_LOG_FORMAT", "json or text", "json, text on a terminal", "every entry point"),
    Variable("COLLECTOR_ALLOWED_ORIGINS", "comma-separated browser origins the collector "
             "accepts", "none", "collector"),
)

_NAMES = frozenset(v.name for v in VARIABLES)

# Printed by ``services.sh env`` / ``flink/cluster.sh env`` for shells, tests
# and Flink's own scripts, read by no Python entry point: name, meaning.
SCRIPT_VARIABLES: typing.Tuple[typing.Tuple[str, str], ...] = (
    ("ARCHIVE_BUCKET", "the S3 server's archive bucket (pass --archive_path=s3://$ARCHIVE_BUCKET/...)"),
    ("IHEARD_SECURE", "1 when the secure services set printed these lines"),
    ("IHEARD_CA_FILE", "the secure set's CA certificate"),
    ("IHEARD_SECRETS_DIR", "the secure set's password files"),
    ("IHEARD_SECURE_HOME", "the secure set's IHEARD_HOME"),
    ("IHEARD_INSTANCE", "a named private instance (services.sh/cluster.sh --instance=NAME)"),
    ("IHEARD_INSTANCE_SLOT", "the instance's port block: ports 20000 + 100 x slot + offset"),
    ("IHEARD_INSTANCE_DIR", "the instance's data, log and pid folders"),
    ("FLINK_VERSION", "Flink minor version of the local cluster"),
    ("FLINK_PROMETHEUS_URL", "TaskManager Prometheus reporter"),
    ("FLINK_JOBMANAGER_PROMETHEUS_URL", "JobManager Prometheus reporter"),
    ("FLINK_HOME", "Flink distribution (Flink's own variable)"),
    ("FLINK_CONF_DIR", "Flink configuration folder (Flink's own variable)"),
    ("FLINK_CHECKPOINTS_DIR", "checkpoint folder of the local cluster"),
)


def environment(env: typing.Optional[Env] = None) -> Env:
    """``env``, else the process environment."""
    return os.environ if env is None else env


def value(env: typing.Optional[Env], name: str, default: typing.Optional[str] = None
          ) -> typing.Optional[str]:
    """The variable ``name`` (empty counts as unset), else ``default``. Only
    names in ``VARIABLES`` may be read (KeyError otherwise)."""
    if name not in _NAMES:
        raise KeyError(f"{name} is not one of the project's settings (iheard_io.settings.VARIABLES)")
    got = environment(env).get(name)
    return got if got else default


# -- stores -------------------------------------------------------------------

def postgres_dsn(env: typing.Optional[Env] = None) -> typing.Optional[str]:
    """A libpq connection string from POSTGRES_*, or None without POSTGRES_HOST.

    Values are quoted by libpq's rules, so a password with a space or a quote
    survives."""
    host = value(env, "POSTGRES_HOST")
    if not host:
        return None
    from psycopg.conninfo import make_conninfo  # psycopg is only needed with PostgreSQL

    parts = {
        "host": host,
        "port": value(env, "POSTGRES_PORT", "5432"),
        "user": value(env, "POSTGRES_USER", "postgres"),
        "password": value(env, "POSTGRES_PASSWORD", ""),
        "dbname": value(env, "POSTGRES_DB", "analytics"),
        "sslmode": value(env, "POSTGRES_SSLMODE", "prefer"),
        "sslrootcert": value(env, "POSTGRES_SSLROOTCERT", ""),
        # libpq reads the password from this pgpass file itself, on the worker.
        "passfile": value(env, "POSTGRES_PASSFILE", ""),
        "connect_timeout": value(env, "POSTGRES_CONNECT_TIMEOUT", "10"),
    }
    if parts["passfile"]:
        parts["password"] = ""
    return make_conninfo(**{k: v for k, v in parts.items() if v != ""})


def redis_url(env: typing.Optional[Env] = None) -> typing.Optional[str]:
    """redis:// (rediss:// with REDIS_TLS) from REDIS_*, or None without
    REDIS_HOST. With REDIS_PASSWORD_FILE the URL carries no password."""
    host = value(env, "REDIS_HOST")
    if not host:
        return None
    tls = (value(env, "REDIS_TLS") or "").lower() in ("1", "true", "yes")
    scheme = "rediss" if tls else "redis"
    password = None if value(env, "REDIS_PASSWORD_FILE") else value(env, "REDIS_PASSWORD")
    auth = f":{urllib.parse.quote(password, safe='')}@" if password else ""
    ca = value(env, "REDIS_CA_CERT")
    query = f"?ssl_ca_certs={urllib.parse.quote(ca)}" if tls and ca else ""
    return f"{scheme}://{auth}{host}:{value(env, 'REDIS_PORT', '6379')}/0{query}"


def redis_password_file(env: typing.Optional[Env] = None) -> typing.Optional[str]:
    return value(env, "REDIS_PASSWORD_FILE")


def kafka_security(env: typing.Optional[Env] = None, protocol: typing.Optional[str] = None,
                   mechanism: typing.Optional[str] = None, cafile: typing.Optional[str] = None
                   ) -> typing.Dict[str, typing.Any]:
    """The security keyword arguments of ``iheard_io.kafka.kafka_client_config``
    (and so of ``ReadFromKafka`` / ``WriteToKafka``): the flags given
    (``protocol``, ``mechanism``, ``cafile``), else KAFKA_*. User and password
    come only from the environment; with KAFKA_PASSWORD_FILE only the path
    travels (the workers read the file, ``iheard_io.security``)."""
    protocol = protocol or value(env, "KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    security: typing.Dict[str, typing.Any] = {"security_protocol": protocol}
    if protocol.startswith("SASL"):
        security.update(sasl_mechanism=mechanism or value(env, "KAFKA_SASL_MECHANISM", "PLAIN"),
                        username=value(env, "KAFKA_USER"))
        password_file = value(env, "KAFKA_PASSWORD_FILE")
        if password_file:
            security["password_file"] = password_file
        else:
            security["password"] = value(env, "KAFKA_PASSWORD")
    cafile = cafile or value(env, "KAFKA_SSL_CAFILE")
    if protocol.endswith("SSL") and cafile:
        security["ssl_cafile"] = cafile
    return security


def pii_secret(env: typing.Optional[Env] = None) -> typing.Optional[str]:
    return value(env, "PII_HMAC_SECRET")


# Beam's S3 options <- the design document's DigitalOcean Spaces variables.
# Only settings that are not secret become pipeline options: every pipeline
# option is shown in the Flink dashboard's job configuration.
_SPACES_OPTIONS = (
    ("s3_endpoint_url", "SPACES_ENDPOINT"),
    ("s3_region_name", "SPACES_REGION"),
    # A CA bundle for an https endpoint with a private CA.
    ("s3_verify", "SPACES_CA_BUNDLE"),
)
# The keys go to boto3's own variables instead.
_SPACES_CREDENTIALS = (
    ("AWS_ACCESS_KEY_ID", "SPACES_ACCESS_KEY"),
    ("AWS_SECRET_ACCESS_KEY", "SPACES_SECRET_KEY"),
)


def spaces_s3_options(env: typing.Optional[Env] = None) -> typing.Dict[str, str]:
    """Beam S3Options attribute -> value, for the Spaces variables that are set."""
    return {option: value(env, name) for option, name in _SPACES_OPTIONS if value(env, name)}


def spaces_credentials(env: typing.Optional[Env] = None) -> typing.Dict[str, str]:
    """boto3's AWS_* variable -> value, from the Spaces keys that are set."""
    return {aws: value(env, name) for aws, name in _SPACES_CREDENTIALS if value(env, name)}


SNOWFLAKE_FIELDS = ("account", "user", "password", "database", "schema", "warehouse", "role")


def snowflake_values(env: typing.Optional[Env] = None) -> typing.Dict[str, typing.Optional[str]]:
    """``SnowflakeSettings`` field -> SNOWFLAKE_<FIELD> (None where unset)."""
    return {field: value(env, f"SNOWFLAKE_{field.upper()}") for field in SNOWFLAKE_FIELDS}


def marketo_api_values(env: typing.Optional[Env] = None) -> typing.Dict[str, typing.Optional[str]]:
    """``base_url``, ``client_id``, ``client_secret`` from MARKETO_*."""
    return {field: value(env, f"MARKETO_{field.upper()}")
            for field in ("base_url", "client_id", "client_secret")}


# -- Flink and the machine -----------------------------------------------------

def flink_master(env: typing.Optional[Env] = None, default: typing.Optional[str] = None
                 ) -> typing.Optional[str]:
    """FLINK_MASTER as given (``host:port`` or a URL), else ``default``."""
    return value(env, "FLINK_MASTER", default)


def flink_rest_url(env: typing.Optional[Env] = None) -> typing.Optional[str]:
    """FLINK_MASTER as an http(s) URL (``http://`` added to ``host:port``)."""
    master = flink_master(env)
    if not master:
        return None
    return master if "://" in master else "http://" + master


def iheard_home(env: typing.Optional[Env] = None) -> str:
    return value(env, "IHEARD_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "iheardai")
