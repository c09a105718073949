"""The collector's configuration: one dataclass, filled once from the command
line (``python -m collector --help``) with environment fallbacks for the
connection settings (read through ``iheard_io.settings``, under the same names
as every other entry point), then passed explicitly to everything else."""
from __future__ import annotations

import argparse
import dataclasses
import typing

from collector.events import DEFAULT_TOPICS, FRONTEND, TEXT_AGENT
from iheard_io import settings as env_settings
from iheard_io.kafka import kafka_client_config

__all__ = ["CollectorSettings", "parse_args"]

# The seed's widget embeds on customer sites; no origin is allowed unless
# configured, so a default deployment accepts only server-side posts.
DEFAULT_MAX_BODY_BYTES = 256 * 1024
DEFAULT_MAX_EVENTS = 500


@dataclasses.dataclass(frozen=True)
class CollectorSettings:
    kafka_bootstrap: str
    # Keyword arguments of iheard_io.kafka.kafka_client_config (security_protocol,
    # sasl_mechanism, username, password or password_file, ssl_cafile).
    kafka_security: typing.Mapping[str, typing.Any] = dataclasses.field(
        default_factory=lambda: {"security_protocol": "PLAINTEXT"})
    topics: typing.Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(DEFAULT_TOPICS))
    allowed_origins: typing.Tuple[str, ...] = ()
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_events_per_request: int = DEFAULT_MAX_EVENTS
    rate_limit_per_s: float = 50.0  # 0 disables rate limiting
    rate_limit_burst: int = 100
    trust_forwarded_for: bool = False
    flink_rest_url: typing.Optional[str] = None
    status_topics: typing.Tuple[str, ...] = ("frontend_user_interaction", "text_agent_turn_completed",
                                             "marketo_leads_delta")
    status_groups: typing.Optional[typing.Tuple[str, ...]] = None
    status_ttl_s: float = 5.0
    producer_config: typing.Mapping[str, typing.Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not self.kafka_bootstrap:
            raise ValueError("kafka_bootstrap is required (--kafka_bootstrap or KAFKA_BOOTSTRAP)")
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be >= 1024, got {self.max_body_bytes}")
        if self.max_events_per_request < 1:
            raise ValueError(f"max_events_per_request must be >= 1, got {self.max_events_per_request}")
        if self.rate_limit_per_s < 0:
            raise ValueError(f"rate_limit_per_s must be >= 0, got {self.rate_limit_per_s}")
        for origin in self.allowed_origins:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ValueError(f"allowed origin {origin!r} must start with http:// or https://")

    def kafka_client_config(self) -> dict:
        return kafka_client_config(self.kafka_bootstrap, **self.kafka_security)

    @property
    def source_topics(self) -> typing.Dict[str, str]:
        """Source name -> topic whose last record time ``/status`` reports."""
        return {FRONTEND: self.topics[FRONTEND], TEXT_AGENT: self.topics[TEXT_AGENT],
                "marketo": "marketo_leads_delta"}


def _csv(text: str) -> typing.Tuple[str, ...]:
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m collector",
                                description="HTTP collector: POST /api/analytics -> Kafka.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--kafka_bootstrap", default=env_settings.value(None, "KAFKA_BOOTSTRAP"))
    p.add_argument("--kafka_security_protocol", default=None,
                   choices=["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"],
                   help="default: $KAFKA_SECURITY_PROTOCOL, else PLAINTEXT (user, password "
                        "and CA from KAFKA_USER, KAFKA_PASSWORD[_FILE], KAFKA_SSL_CAFILE)")
    p.add_argument("--frontend_topic", default=DEFAULT_TOPICS[FRONTEND])
    p.add_argument("--text_agent_topic", default=DEFAULT_TOPICS[TEXT_AGENT])
    p.add_argument("--allowed_origins", default=env_settings.value(None, "COLLECTOR_ALLOWED_ORIGINS", ""),
                   help="comma-separated widget origins allowed to post from a browser "
                        "(e.g. https://shop.example.com); none by default")
    p.add_argument("--max_body_bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    p.add_argument("--max_events_per_request", type=int, default=DEFAULT_MAX_EVENTS)
    p.add_argument("--rate_limit_per_s", type=float, default=50.0,
                   help="requests per second per client (0 = no limit)")
    p.add_argument("--rate_limit_burst", type=int, default=100)
    p.add_argument("--trust_forwarded_for", action="store_true",
                   help="identify clients by X-Forwarded-For (behind a trusted proxy only)")
    p.add_argument("--flink_rest_url", default=env_settings.flink_rest_url(),
                   help="e.g. http://127.0.0.1:18081, for /status (default: $FLINK_MASTER)")
    p.add_argument("--status_groups", default="",
                   help="consumer groups whose lag /status reports (default: every group)")
    p.add_argument("--log_format", choices=("json", "text"), default=None,
                   help="default: $IHEARD_LOG_FORMAT, else json unless stderr is a terminal")
    p.add_argument("--log_level", default="INFO")
    return p


def parse_args(argv=None) -> typing.Tuple[CollectorSettings, argparse.Namespace]:
    args = build_parser().parse_args(argv)
    settings = CollectorSettings(
        kafka_bootstrap=args.kafka_bootstrap,
        kafka_security=env_settings.kafka_security(None, args.kafka_security_protocol),
        topics={FRONTEND: args.frontend_topic, TEXT_AGENT: args.text_agent_topic},
        allowed_origins=_csv(args.allowed_origins),
        max_body_bytes=args.max_body_bytes,
        max_events_per_request=args.max_events_per_request,
        rate_limit_per_s=args.rate_limit_per_s,
        rate_limit_burst=args.rate_limit_burst,
        trust_forwarded_for=args.trust_forwarded_for,
        flink_rest_url=args.flink_rest_url,
        status_groups=_csv(args.status_groups) or None,
    )
    return settings, args
