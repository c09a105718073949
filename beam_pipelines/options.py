"""Pipeline options shared by the project's pipelines.

Configuration enters here once: every connection setting is a flag, and
``resolve_connections`` falls back to the seed's environment variables
(``KAFKA_USER``, ``POSTGRES_HOST``, ``REDIS_HOST``, ``SPACES_ACCESS_KEY``,
``SNOWFLAKE_ACCOUNT`` ...) when a flag is absent, read through
``iheard_io.settings`` (the one reader of the environment, for every entry
point). Connectors (``iheard_io``) take every setting as an argument and
have no environment fallbacks; DoFns never read options or the environment.

With no connection flag at all a pipeline writes to embedded defaults: a DuckDB
file and a local Avro archive under ``--output_dir``.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import typing

from apache_beam.options.pipeline_options import PipelineOptions, S3Options

from iheard_io import settings
from iheard_io.archive_read import ArchiveInput, parse_archive_input
from iheard_io.security import redact
from iheard_io.snowflake import SnowflakeSettings

from iheard_io.retry import DEFAULT_RETRY_BUDGET_S

from transforms.dedupe import DEFAULT_TTL_SECONDS
from transforms.sessions import DEFAULT_ALLOWED_LATENESS_SECONDS, DEFAULT_GAP_SECONDS

__all__ = [
    "IheardOptions",
    "Connections",
    "resolve_connections",
    "apply_s3_options",
    "batched_hot_path",
    "HOT_PATHS",
    "DEV_PII_SECRET",
]

_LOG = logging.getLogger(__name__)

# Only for local runs: tokens made with it are reproducible but not secret.
DEV_PII_SECRET = "iheardai-dev-only-pii-secret"


class IheardOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        src = parser.add_argument_group("source")
        src.add_argument(
            "--input",
            help="JSON-lines file pattern (.jsonl or .jsonl.gz) to read "
            "instead of Kafka.",
        )
        src.add_argument(
            "--from", dest="from_",
            help="Archive input (--input=<archive>/source=<pipeline>) or restate_costs: "
            "start of the range, inclusive: YYYY-MM-DD (midnight UTC) or ISO-8601.",
        )
        src.add_argument(
            "--to",
            help="End of the range, exclusive; a bare date includes that whole day.",
        )
        src.add_argument(
            "--kafka_bootstrap",
            help="Kafka bootstrap servers, e.g. 127.0.0.1:19092.",
        )
        src.add_argument("--kafka_topic", help="Topic to read (default: the pipeline's seed topic).")
        src.add_argument(
            "--kafka_mode",
            choices=["bounded", "streaming"],
            help="bounded: stop at the end offsets seen at start; streaming: "
            "read forever. Default: streaming when --streaming is set.",
        )
        src.add_argument("--kafka_group_id", help="Consumer group for offset commits (lag monitoring).")
        src.add_argument(
            "--kafka_start_from",
            default="committed",
            choices=["earliest", "latest", "committed"],
            help="Where a partition starts when the group has no committed offset: "
            "'committed' falls back to earliest.",
        )
        src.add_argument(
            "--kafka_security_protocol",
            default=None,
            choices=["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"],
            help="Default: env KAFKA_SECURITY_PROTOCOL, else PLAINTEXT.",
        )
        src.add_argument(
            "--kafka_sasl_mechanism",
            default=None,
            help="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512. Default: env "
            "KAFKA_SASL_MECHANISM, else PLAIN. User and password come from "
            "KAFKA_USER and KAFKA_PASSWORD (or KAFKA_PASSWORD_FILE, read by the "
            "workers), never from a flag.",
        )
        src.add_argument(
            "--kafka_ssl_cafile",
            help="CA bundle the broker's certificate must chain to (SSL, SASL_SSL). "
            "Default: env KAFKA_SSL_CAFILE, else the system's CAs.",
        )
        src.add_argument(
            "--kafka_max_read_seconds",
            type=float,
            default=None,
            help="Streaming: how long one read call of a partition lasts before "
            "its records go downstream (their latency floor on Flink) and the "
            "runner may checkpoint. Default: the source's (1 s).",
        )
        src.add_argument(
            "--kafka_format",
            default="json",
            choices=["json", "avro"],
            help="Payload encoding on the topic.",
        )

        sink = parser.add_argument_group("sinks")
        sink.add_argument(
            "--postgres_dsn",
            help="PostgreSQL DSN. Default: built from POSTGRES_HOST/PORT/USER/"
            "PASSWORD/DB when POSTGRES_HOST is set, else the embedded DuckDB file.",
        )
        sink.add_argument(
            "--redis_url",
            help="redis:// or rediss:// URL. Default: from REDIS_HOST/REDIS_PORT/"
            "REDIS_PASSWORD when REDIS_HOST is set, else no Redis output.",
        )
        sink.add_argument(
            "--archive_path",
            help="Avro archive root: s3://bucket/prefix or a local folder. "
            "Default: <output_dir>/archive.",
        )
        sink.add_argument(
            "--dead_letter_topic",
            help="Also publish dead letters to this Kafka topic (needs --kafka_bootstrap).",
        )
        for name, variable, text in _SNOWFLAKE_FLAGS:
            sink.add_argument(f"--snowflake_{name}", help=f"{text} Default: env {variable}.")
        for store, after in (("postgres", "the bundle fails (Flink replays from its checkpoint)"),
                             ("redis", "the batch's rows become dead letters"),
                             ("snowflake", "the batch's rows become dead letters")):
            sink.add_argument(
                f"--{store}_retry_budget_seconds", type=float, default=DEFAULT_RETRY_BUDGET_S,
                help=f"How long the {store} sinks retry a server that is down (capped "
                f"exponential backoff) before {after}. Default: %(default)s.")
        sink.add_argument(
            "--output_dir",
            default="output",
            help="Folder for the embedded defaults (DuckDB file, archive).",
        )

        proc = parser.add_argument_group("processing")
        proc.add_argument(
            "--pii_secret",
            help="HMAC key for PII tokens. Default: env PII_HMAC_SECRET, else a "
            "development key (logged as a warning).",
        )
        proc.add_argument(
            "--session_gap_seconds",
            type=int,
            default=DEFAULT_GAP_SECONDS,
            help="Inactivity gap that closes a session window.",
        )
        proc.add_argument(
            "--allowed_lateness_seconds",
            type=int,
            default=DEFAULT_ALLOWED_LATENESS_SECONDS,
            help="How long after the watermark passes a session's end late events "
            "still restate it.",
        )
        proc.add_argument(
            "--dedupe_ttl_seconds",
            type=int,
            default=DEFAULT_TTL_SECONDS,
            help="How long an event id is remembered for de-duplication.",
        )
        proc.add_argument(
            "--hot_path",
            choices=HOT_PATHS,
            default="batched",
            help="Streaming Kafka jobs: 'batched' carries one Kafka poll (hundreds of "
            "events) per element from the source to the sinks, with de-duplication "
            "state per id bucket (transforms/batches.py); 'per_event' is the "
            "earlier one-element-per-event path, kept for comparison. Bounded runs "
            "always take the per-event path.",
        )
        proc.add_argument(
            "--dedupe_buckets",
            type=int,
            default=16,
            help="Batched path: id-hash buckets per time slice of de-duplication state.",
        )
        proc.add_argument(
            "--progress",
            choices=PROGRESS_MODES,
            default="auto",
            help="Bounded file or archive input: records read, rate and time left as a "
            "bar on a terminal (auto, bar) or a log line every --progress_interval_seconds "
            "(auto, log); off: only the summary at the end.",
        )
        proc.add_argument(
            "--progress_interval_seconds",
            type=float,
            default=DEFAULT_PROGRESS_INTERVAL_SECONDS,
            help="Seconds between progress log lines. Default: %(default)s.",
        )
        # Set by cli.run_job: the key a run's source counts its reads under.
        proc.add_argument("--progress_key", help=argparse.SUPPRESS)
        proc.add_argument(
            "--profile",
            help="Runner profile (see python -m runners.profiles); expanded by run().",
        )


HOT_PATHS = ("batched", "per_event")
# --progress (beam_pipelines.progress shows it).
PROGRESS_MODES = ("auto", "bar", "log", "off")
DEFAULT_PROGRESS_INTERVAL_SECONDS = 10.0

# Snowflake loading (optional): flag suffix, the seed's variable, help text.
# Configured when an account is given (flag or variable).
_SNOWFLAKE_FLAGS = (
    ("account", "SNOWFLAKE_ACCOUNT", "Snowflake account identifier; enables loading "
     "FRONTEND_EVENTS / AGENT_TURNS / MARKETO_LEADS."),
    ("user", "SNOWFLAKE_USER", "Snowflake user."),
    ("password", "SNOWFLAKE_PASSWORD", "Snowflake password (prefer the variable)."),
    ("database", "SNOWFLAKE_DATABASE", "Snowflake database (must exist)."),
    ("schema", "SNOWFLAKE_SCHEMA", "Snowflake schema (must exist; PUBLIC if unset)."),
    ("warehouse", "SNOWFLAKE_WAREHOUSE", "Snowflake virtual warehouse."),
    ("role", "SNOWFLAKE_ROLE", "Snowflake role (the user's default if unset)."),
)


def batched_hot_path(opts, streaming: bool) -> bool:
    """Whether this run carries lists of events: a streaming Kafka source with
    ``--hot_path=batched`` (the default)."""
    return (bool(streaming) and opts.hot_path == "batched" and not opts.input
            and bool(opts.kafka_bootstrap))


@dataclasses.dataclass(frozen=True)
class Connections:
    """Where one run reads and writes, after flags and environment are merged."""

    input: typing.Optional[str]
    kafka_bootstrap: typing.Optional[str]
    postgres_dsn: typing.Optional[str]
    redis_url: typing.Optional[str]
    # None: no archive is written (an archive re-run without --archive_path).
    archive_path: typing.Optional[str]
    embedded_db: typing.Optional[str]  # set when Postgres is not configured
    dead_letter_topic: typing.Optional[str]
    pii_secret: bytes
    # Keyword arguments of ReadFromKafka / WriteToKafka: security_protocol,
    # ssl_cafile, and for SASL sasl_mechanism, username, and password or
    # password_file (a path the workers read the password from).
    kafka_security: typing.Mapping[str, typing.Any]
    # Beam S3Options (endpoint, region, CA bundle) that the flags left empty,
    # filled from the Spaces variables; ``apply_s3_options`` sets them.
    s3_options: typing.Mapping[str, str] = dataclasses.field(default_factory=dict)
    # boto3's AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from the Spaces keys:
    # handed to workers through the environment, never as pipeline options.
    s3_credentials: typing.Mapping[str, str] = dataclasses.field(default_factory=dict)
    snowflake: typing.Optional[typing.Any] = None  # iheard_io.snowflake.SnowflakeSettings
    # A file the workers read the Redis password from (REDIS_PASSWORD_FILE).
    redis_password_file: typing.Optional[str] = None
    # How long each store's sinks retry it while it is down (the policy
    # table in iheard_io.sink_base): --<store>_retry_budget_seconds.
    postgres_retry_budget_s: float = DEFAULT_RETRY_BUDGET_S
    redis_retry_budget_s: float = DEFAULT_RETRY_BUDGET_S
    snowflake_retry_budget_s: float = DEFAULT_RETRY_BUDGET_S
    # --input names an archive folder (iheard_io.archive_read): this run
    # re-runs the archive (beam_pipelines/reprocess.py).
    archive_input: typing.Optional[ArchiveInput] = None

    def __repr__(self) -> str:
        # Connections hold passwords (DSN, Redis URL, Kafka SASL, PII key):
        # a log line or traceback that shows one must not show them.
        fields = ", ".join(
            f"{f.name}={redact(getattr(self, f.name), f.name)!r}" for f in dataclasses.fields(self))
        return f"Connections({fields})"


def _snowflake_settings(opts, env):
    from_env = settings.snowflake_values(env)
    values = {name: getattr(opts, f"snowflake_{name}", None) or from_env[name]
              for name, _, _ in _SNOWFLAKE_FLAGS}
    if not values["account"]:
        return None
    missing = [f"--snowflake_{n} / {v}" for n, v, _ in _SNOWFLAKE_FLAGS
               if n in ("user", "database") and not values[n]]
    if missing:
        raise ValueError("Snowflake account given but not " + ", ".join(missing))
    values["schema"] = values["schema"] or "PUBLIC"
    return SnowflakeSettings(**values)


def resolve_connections(opts: PipelineOptions, env=None) -> Connections:
    """Merges flags with the seed's environment variables (flags win).

    The environment (``env``, default ``os.environ``) is read through
    ``iheard_io.settings``, as by every other entry point."""
    opts = opts.view_as(IheardOptions)
    postgres_dsn = opts.postgres_dsn or settings.postgres_dsn(env)
    redis_url = opts.redis_url or settings.redis_url(env)
    output_dir = opts.output_dir or "output"
    secret = opts.pii_secret or settings.pii_secret(env)
    if not secret:
        _LOG.warning(
            "No --pii_secret or PII_HMAC_SECRET: using the development key; "
            "PII tokens are NOT secret."
        )
        secret = DEV_PII_SECRET
    security = settings.kafka_security(env, opts.kafka_security_protocol,
                                       opts.kafka_sasl_mechanism, opts.kafka_ssl_cafile)
    archive_input = _archive_input(opts.input)
    archive_path = opts.archive_path or os.path.join(output_dir, "archive")
    if archive_input is not None:
        # A re-run never writes the archive it reads: no archive unless one
        # is named, and not the input's own root; no live state in Redis.
        archive_path = opts.archive_path
        if archive_path and _same_path(archive_path, archive_input.root):
            raise ValueError(
                f"--archive_path={archive_path} is the archive --input reads: an archive "
                "re-run writes no archive by default, or a separate one (another "
                "--archive_path)")
        redis_url = None
    return Connections(
        input=opts.input,
        kafka_bootstrap=opts.kafka_bootstrap,
        postgres_dsn=postgres_dsn,
        redis_url=redis_url,
        archive_path=archive_path,
        embedded_db=None if postgres_dsn else os.path.join(output_dir, "iheardai.duckdb"),
        dead_letter_topic=opts.dead_letter_topic,
        pii_secret=secret.encode("utf-8"),
        kafka_security=security,
        s3_options=_s3_options_from_env(opts, env),
        s3_credentials=_s3_credentials_from_env(opts, env),
        snowflake=_snowflake_settings(opts, env),
        redis_password_file=(settings.redis_password_file(env)
                             if redis_url and not opts.redis_url else None),
        postgres_retry_budget_s=opts.postgres_retry_budget_seconds,
        redis_retry_budget_s=opts.redis_retry_budget_seconds,
        snowflake_retry_budget_s=opts.snowflake_retry_budget_seconds,
        archive_input=archive_input,
    )


def _archive_input(path: typing.Optional[str]) -> typing.Optional[ArchiveInput]:
    """The archive ``--input`` names: a path with a ``source=`` folder, or a
    local folder holding ``source=`` folders (an archive root)."""
    if not path:
        return None
    found = parse_archive_input(path)
    if found is None and "://" not in path and os.path.isdir(path) and any(
            name.startswith("source=") for name in os.listdir(path)):
        return ArchiveInput(path.rstrip("/"), None)
    return found


def _same_path(a: str, b: str) -> bool:
    if "://" in a or "://" in b:
        return a.rstrip("/") == b.rstrip("/")
    return os.path.realpath(a) == os.path.realpath(b)


_SECRET_S3_OPTIONS = ("s3_secret_access_key", "s3_session_token")


def _s3_options_from_env(options: PipelineOptions, env) -> typing.Dict[str, str]:
    s3 = options.view_as(S3Options)
    return {option: value for option, value in settings.spaces_s3_options(env).items()
            if not getattr(s3, option, None)}


def _s3_credentials_from_env(options: PipelineOptions, env) -> typing.Dict[str, str]:
    s3 = options.view_as(S3Options)
    if s3.s3_access_key_id or s3.s3_secret_access_key:
        return {}  # keys given as flags win (and are visible: see apply_s3_options)
    return settings.spaces_credentials(env)


def apply_s3_options(options: PipelineOptions, conns: Connections, environ=None) -> None:
    """Gives Beam's S3 filesystem (boto3) what ``resolve_connections`` took
    from the Spaces variables (Spaces speaks the S3 API), so an ``s3://``
    archive works with the variables the rest of the platform uses.

    Endpoint, region and CA bundle become ``--s3_*`` pipeline options (the
    flags win). The keys do NOT: pipeline options travel with the job and are
    shown in the Flink dashboard's job configuration. Beam's S3 client leaves
    ``aws_access_key_id`` unset then, and boto3 finds the keys itself, on each
    worker, in its usual places:

    * ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` in the worker's
      environment. This function sets them in this process (``environ``,
      default ``os.environ``) from ``SPACES_ACCESS_KEY`` / ``SPACES_SECRET_KEY``,
      which covers in-process runners and Flink ``LOOPBACK`` workers (they run
      in the submitting process);
    * an ``AWS_SHARED_CREDENTIALS_FILE`` (``[default]`` profile) mounted on
      the workers, e.g. a Kubernetes Secret volume beside an ``EXTERNAL``
      worker pool, or the pool's own environment from that Secret.

    ``--s3_access_key_id`` / ``--s3_secret_access_key`` given as flags still
    work, but then the secret is among the job's options: warned about.
    """
    environ = os.environ if environ is None else environ
    s3 = options.view_as(S3Options)
    for option, value in conns.s3_options.items():
        if not getattr(s3, option, None):
            setattr(s3, option, value)
    if any(getattr(s3, option, None) for option in _SECRET_S3_OPTIONS):
        _LOG.warning(
            "--s3_secret_access_key/--s3_session_token are pipeline options: the Flink "
            "dashboard shows them in the job configuration. Prefer SPACES_SECRET_KEY or "
            "an AWS_SHARED_CREDENTIALS_FILE on the workers.")
    for name, value in conns.s3_credentials.items():
        environ[name] = value
