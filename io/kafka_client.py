"""Kafka client settings shared by the project's reader and writer (see iheard_io.kafka).

``kafka_client_config`` validates servers, security protocol, SASL mechanism
and credentials once and returns kafka-python keyword arguments; tuning
settings cannot override them (``_tuning_config``); ``check_kafka_connection``
tells a refused connection (TLS, authentication) from an absent broker.
"""
from __future__ import annotations

import logging
import typing


from iheard_io.security import resolve_secret_files
from iheard_io.security import speaks_tls
from iheard_io.security import tls_handshake

__all__ = ['kafka_client_config', 'check_kafka_connection', 'KafkaConnectionRefused', 'SECURITY_PROTOCOLS', 'SASL_MECHANISMS']

_LOG = logging.getLogger(__name__)

SECURITY_PROTOCOLS = ("PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

# --------------------------------------------------------------------------
# Configuration helpers
# --------------------------------------------------------------------------


def kafka_client_config(
    bootstrap_servers,
    security_protocol: str = "PLAINTEXT",
    sasl_mechanism: typing.Optional[str] = None,
    username: typing.Optional[str] = None,
    password: typing.Optional[str] = None,
    ssl_cafile: typing.Optional[str] = None,
    password_file: typing.Optional[str] = None,
) -> dict:
    """kafka-python keyword arguments shared by consumers and producers
    (with ``password_file``: a ``sasl_plain_password_file`` key that
    ``resolve_secret_files`` turns into the password on the worker)."""
    if security_protocol not in SECURITY_PROTOCOLS:
        raise ValueError(
            f"security_protocol must be one of {SECURITY_PROTOCOLS}, "
            f"got {security_protocol!r}")
    config = {
        "bootstrap_servers": bootstrap_servers,
        "security_protocol": security_protocol,
    }
    if security_protocol.startswith("SASL_"):
        mechanism = sasl_mechanism or "PLAIN"
        if mechanism not in SASL_MECHANISMS:
            raise ValueError(
                f"sasl_mechanism must be one of {SASL_MECHANISMS}, "
                f"got {mechanism!r}")
        if not username or (password is None and not password_file):
            raise ValueError(
                f"{security_protocol} needs a username and password (or password_file)")
        config.update(sasl_mechanism=mechanism, sasl_plain_username=username)
        if password_file and password is None:
            config["sasl_plain_password_file"] = password_file
        else:
            config["sasl_plain_password"] = password
    if security_protocol in ("SASL_SSL", "SSL") and ssl_cafile:
        config["ssl_cafile"] = ssl_cafile
    return config


# Keys kafka_client_config owns: extra consumer/producer settings may not
# override them (they would bypass its validation).
_CLIENT_KEYS = frozenset({
    "bootstrap_servers", "security_protocol", "sasl_mechanism",
    "sasl_plain_username", "sasl_plain_password", "sasl_plain_password_file",
    "ssl_cafile"})


def _tuning_config(extra: typing.Optional[dict], name: str) -> dict:
    """``extra`` as a dict, refusing keys that ``kafka_client_config`` owns."""
    extra = dict(extra or {})
    clashing = sorted(_CLIENT_KEYS.intersection(extra))
    if clashing:
        raise ValueError(
            f"{name} may not set {clashing}: pass them as the transform's own "
            "arguments (security_protocol, sasl_mechanism, username, password, password_file, "
            "ssl_cafile)")
    return extra


class KafkaConnectionRefused(ConnectionError):
    """The broker is there but refused us: TLS or authentication."""


def _first_server(bootstrap_servers) -> typing.Tuple[str, int]:
    first = bootstrap_servers if isinstance(bootstrap_servers, str) else bootstrap_servers[0]
    first = first.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    return host.strip("[]"), int(port)


def check_kafka_connection(client_config: typing.Mapping[str, typing.Any],
                           timeout_s: float = 10.0) -> None:
    """Raises a clear error unless a client with ``client_config`` (as made
    by ``kafka_client_config``, ``*_file`` keys allowed) gets cluster
    metadata within ``timeout_s``.

    kafka-python itself keeps reconnecting and, after its bootstrap timeout,
    says only "Unable to bootstrap": a wrong password, a plaintext client on
    a TLS listener and an untrusted certificate all look alike. On failure
    this probes the first bootstrap server directly to say which it was:
    ``KafkaConnectionRefused`` for TLS and authentication problems,
    ``ConnectionError`` when nothing answers. Messages name the user and the
    protocol, never the password.
    """
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    config = resolve_secret_files(client_config)
    servers = config["bootstrap_servers"]
    protocol = config.get("security_protocol", "PLAINTEXT")
    kafka_logger = logging.getLogger("kafka")
    level = kafka_logger.level
    # kafka-python logs every reconnect attempt at ERROR; the one error that
    # matters is raised below.
    kafka_logger.setLevel(logging.CRITICAL)
    try:
        admin = KafkaAdminClient(**{
            k: v for k, v in config.items()
            if k not in ("group_id", "enable_auto_commit", "auto_offset_reset", "acks",
                         "retries", "linger_ms")},
            bootstrap_timeout_ms=int(timeout_s * 1000),
            request_timeout_ms=int(timeout_s * 1000))
        admin.close()
        return
    except KafkaError as exc:
        failure = exc
    finally:
        kafka_logger.setLevel(level)

    host, port = _first_server(servers)
    where = f"Kafka at {host}:{port}"
    tls = speaks_tls(host, port, timeout_s)
    if tls is None:
        raise ConnectionError(f"{where}: no connection; is the broker running?")
    if protocol in ("PLAINTEXT", "SASL_PLAINTEXT") and tls:
        raise KafkaConnectionRefused(
            f"{where} refused a {protocol} client: its listener speaks TLS "
            "(use security_protocol SSL or SASL_SSL with ssl_cafile)")
    if protocol in ("SSL", "SASL_SSL"):
        if not tls:
            raise KafkaConnectionRefused(f"{where} does not speak TLS but {protocol} was asked for")
        try:
            tls_handshake(host, port, config.get("ssl_cafile"), verify=True, timeout_s=timeout_s)
        except OSError as exc:
            raise KafkaConnectionRefused(
                f"{where}: TLS certificate not trusted with ssl_cafile="
                f"{config.get('ssl_cafile')!r} ({exc})") from None
    if protocol.startswith("SASL_"):
        raise KafkaConnectionRefused(
            f"{where} refused SASL authentication as user "
            f"{config.get('sasl_plain_username')!r} ({config.get('sasl_mechanism')}): "
            "wrong password, unknown user or mechanism not enabled")
    raise ConnectionError(f"{where}: no metadata within {timeout_s:g}s over {protocol} "
                          f"({type(failure).__name__}); does the listener want SASL?")


