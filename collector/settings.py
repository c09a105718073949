"""The collector's configuration: one dataclass, filled once from the command
line (``python -m collector --help``) with environment fallbacks for the
connection settings, then passed explicitly to everything else."""
from __future__ import annotations

import argparse
import dataclasses
import os
import typing

from collector.events import DEFAULT_TOPICS, FRONTEND, TEXT_AGENT

__all__ = ["CollectorSettings", "parse_args"]

# The seed's widget embeds on customer sites; no origin is allowed unless
# configured, so a default deployment accepts only server-side posts.
DEFAULT_MAX_BODY_BYTES = 256 * 1024
DEFAULT_MAX_EVENTS = 500


@dataclasses.dataclass(frozen=True)
class CollectorSettings:
    kafka_bootstrap: str
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_username: typing.Optional[str] = None
    kafka_password: typing.Optional[str] = None
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
        from iheard_io.kafka import kafka_client_config

        return kafka_client_config(self.kafka_bootstrap, self.kafka_security_protocol,
                                   username=self.kafka_username, password=self.kafka_password)

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
    p.add_argument("--kafka_bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP"))
    p.add_argument("--kafka_security_protocol", default="PLAINTEXT")
    p.add_argument("--frontend_topic", default=DEFAULT_TOPICS[FRONTEND])
    p.add_argument("--text_agent_topic", default=DEFAULT_TOPICS[TEXT_AGENT])
    p.add_argument("--allowed_origins", default=os.environ.get("COLLECTOR_ALLOWED_ORIGINS", ""),
                   help="comma-separated widget origins allowed to post from a browser "
                        "(e.g. https://shop.example.com); none by default")
    p.add_argument("--max_body_bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    p.add_argument("--max_events_per_request", type=int, default=DEFAULT_MAX_EVENTS)
    p.add_argument("--rate_limit_per_s", type=float, default=50.0,
                   help="requests per second per client (0 = no limit)")
    p.add_argument("--rate_limit_burst", type=int, default=100)
    p.add_argument("--trust_forwarded_for", action="store_true",
                   help="identify clients by X-Forwarded-For (behind a trusted proxy only)")
    p.add_argument("--flink_rest_url", default=os.environ.get("FLINK_REST_URL"),
                   help="e.g. http://127.0.0.1:18081, for /status")
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
        kafka_security_protocol=args.kafka_security_protocol,
        kafka_username=os.environ.get("KAFKA_USER"),
        kafka_password=os.environ.get("KAFKA_PASSWORD"),
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
