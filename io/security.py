"""Security helpers shared by the connectors: secrets that reach workers as
files, redaction for logs, and a TLS probe for clear connection errors.

A password handed to a connector as a value is pickled into the job graph
and, when it came in as a flag, also shown among the job's options (e.g.
the Flink dashboard's job configuration). A connector given a *path*
instead (``password_file=``, or the ``*_file`` keys of a Kafka client
config) reads the secret in ``setup()`` on the worker, from a file the
deployment mounts there (a Kubernetes Secret volume, a Docker secret, a
0600 file on a local TaskManager). Only the path travels with the job.

PostgreSQL needs none of this: libpq reads ``passfile=`` itself.
"""
from __future__ import annotations

import re
import socket
import ssl
import typing

__all__ = ["read_secret_file", "resolve_secret_files", "redact", "tls_handshake", "speaks_tls",
           "SECRET_FILE_KEYS"]

# Kafka client config keys that name a file holding the value of another key.
SECRET_FILE_KEYS = {"sasl_plain_password_file": "sasl_plain_password"}


def read_secret_file(path: str) -> str:
    """The file's content without its trailing newline. The error names the
    path, never the content."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().rstrip("\r\n")
    except OSError as exc:
        raise PermissionError(
            f"cannot read secret file {path!r}: {exc.strerror or type(exc).__name__}") from None


def resolve_secret_files(config: typing.Mapping[str, typing.Any]) -> dict:
    """A copy of ``config`` with every ``*_file`` key of ``SECRET_FILE_KEYS``
    replaced by the value read from that file."""
    resolved = dict(config)
    for file_key, value_key in SECRET_FILE_KEYS.items():
        path = resolved.pop(file_key, None)
        if path:
            resolved[value_key] = read_secret_file(path)
    return resolved


_SECRET_NAME_PARTS = ("password", "secret", "token")


def redact(value, name: str = ""):
    """``value`` with passwords masked, for logs and reprs: a DSN's
    ``password=`` and URL userinfo, and whole values (or mapping entries)
    whose name says password, secret or token."""
    if any(part in name.lower() for part in _SECRET_NAME_PARTS):
        return None if value is None else "***"
    if isinstance(value, typing.Mapping):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, str):
        # libpq quotes a value with spaces or quotes: password='a b\'c'
        value = re.sub(r"password=('(?:[^'\\]|\\.)*'|\S+)", "password=***", value)
        return re.sub(r"://([^:/@]*):[^@/]*@", r"://\1:***@", value)
    return value


def tls_handshake(host: str, port: int, cafile: typing.Optional[str] = None,
                  verify: bool = True, timeout_s: float = 5.0) -> None:
    """One TLS handshake with ``host:port``; raises ``ssl.SSLError`` (e.g.
    certificate verify failed) or ``OSError`` (no connection)."""
    if verify:
        context = ssl.create_default_context(cafile=cafile)
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        with context.wrap_socket(sock, server_hostname=host):
            pass


def speaks_tls(host: str, port: int, timeout_s: float = 5.0) -> typing.Optional[bool]:
    """Whether the server completes a TLS handshake (certificate unchecked);
    None when nothing accepts a connection."""
    try:
        tls_handshake(host, port, verify=False, timeout_s=timeout_s)
        return True
    except ssl.SSLError:
        return False
    except OSError:
        # A plaintext server often just resets or closes the connection.
        return False if _accepts(host, port, timeout_s) else None


def _accepts(host, port, timeout_s) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
        return True
    except OSError:
        return False
