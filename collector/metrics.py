"""The collector's Prometheus metrics, in a registry of its own per app (so
tests can build several apps in one process)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from collector.events import SOURCES

__all__ = ["CollectorMetrics", "REJECT_REASONS"]

# The labels of collector_events_rejected_total / collector_requests_rejected_total.
REJECT_REASONS = (
    "invalid_json", "not_an_object", "empty_batch", "invalid_event",  # 400
    "origin_not_allowed",  # 403
    "too_large", "too_many_events",  # 413
    "rate_limited",  # 429
    "kafka_unavailable",  # 503
)

# Seconds: from ~1 ms (acknowledged while lingering) to the delivery timeout.
_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class CollectorMetrics:
    def __init__(self, registry: CollectorRegistry = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "collector_requests", "HTTP requests answered, by route and status code",
            ["route", "status"], registry=r)
        self.request_seconds = Histogram(
            "collector_request_duration_seconds", "Time to answer POST /api/analytics",
            buckets=_LATENCY_BUCKETS_S, registry=r)
        self.events_accepted = Counter(
            "collector_events_accepted", "Events Kafka acknowledged, by source",
            ["source"], registry=r)
        self.requests_rejected = Counter(
            "collector_requests_rejected", "Requests refused, by reason",
            ["reason"], registry=r)
        self.events_rejected = Counter(
            "collector_events_rejected", "Events in refused requests, by reason",
            ["reason"], registry=r)
        self.publish_seconds = Histogram(
            "collector_kafka_publish_duration_seconds",
            "Time from handing a batch to the producer to Kafka's acknowledgement",
            buckets=_LATENCY_BUCKETS_S, registry=r)
        self.batch_events = Histogram(
            "collector_batch_events", "Events per accepted request",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500), registry=r)
        self.last_event = Gauge(
            "collector_last_event_timestamp_seconds",
            "Wall-clock time of the last event Kafka acknowledged, by source",
            ["source"], registry=r)
        self.kafka_up = Gauge(
            "collector_kafka_connected", "1 when the collector's producer is connected to Kafka",
            registry=r)
        for source in SOURCES:
            self.events_accepted.labels(source)
        for reason in REJECT_REASONS:  # present at 0 from the start, so rate() works
            self.requests_rejected.labels(reason)
            self.events_rejected.labels(reason)
