"""Prometheus exporter for what no component reports by itself: Kafka consumer
lag, topic end offsets (dead-letter rate), Flink job state and checkpoint
failures, database round-trip times and each service's health.

    eval "$(bash services/services.sh env)"; eval "$(bash flink/cluster.sh env)"
    python -m monitoring.exporter --port 19400

Without flags it reads the same variables as every entry point
(``iheard_io.settings``): ``KAFKA_BOOTSTRAP`` and ``KAFKA_*`` security,
``FLINK_MASTER``, ``POSTGRES_*`` and ``REDIS_*``.

Every scrape runs the probes (``monitoring.probes``) once, at most every
``--min_interval_s`` (a cached result answers scrapes in between). Metrics:

    kafka_consumer_lag{group,topic,partition}          records the group has not committed
    kafka_topic_end_offset{topic,partition}            next offset; rate() of it is the topic's rate
    kafka_last_record_timestamp_seconds{topic}         time of the newest record (last event per source)
    flink_job_running{job_name}                        1 while the job is RUNNING, else 0
    flink_job_checkpoints_failed{job_name}             failed checkpoints of the running job
    database_operation_duration_seconds{database,operation}   probe round trip
    service_health_status{service}                     1 reachable, 0 not (kafka, flink, postgres, redis)
    exporter_probe_duration_seconds                    time the last probe run took
"""
from __future__ import annotations

import argparse
import sys
import time
import typing

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily

from iheard_io import settings as env_settings
from iheard_io.kafka import kafka_client_config
from monitoring import probes
from monitoring.logs import configure_logging, get_logger

__all__ = ["ExporterSettings", "PipelineCollector", "METRIC_NAMES", "main"]

_LOG = get_logger("monitoring.exporter")

METRIC_NAMES = (
    "kafka_consumer_lag",
    "kafka_topic_end_offset",
    "kafka_last_record_timestamp_seconds",
    "flink_job_running",
    "flink_job_checkpoints_failed",
    "database_operation_duration_seconds",
    "service_health_status",
    "exporter_probe_duration_seconds",
)

DEFAULT_TOPICS = ("frontend_user_interaction", "text_agent_turn_completed", "marketo_leads_delta",
                  "pipeline_dead_letter")


class ExporterSettings(typing.NamedTuple):
    kafka_client_config: dict
    topics: typing.Tuple[str, ...] = DEFAULT_TOPICS
    groups: typing.Optional[typing.Tuple[str, ...]] = None
    flink_rest_url: typing.Optional[str] = None
    postgres_dsn: typing.Optional[str] = None
    redis_url: typing.Optional[str] = None
    min_interval_s: float = 10.0


def probe_all(settings: ExporterSettings) -> dict:
    start = time.perf_counter()
    offsets = probes.kafka_offsets(settings.kafka_client_config, settings.topics)
    lag = probes.consumer_lag(settings.kafka_client_config, settings.topics, settings.groups) \
        if offsets["reachable"] else {"reachable": False, "groups": {}}
    result = {
        "offsets": offsets,
        "lag": lag,
        "flink": probes.flink_jobs(settings.flink_rest_url),
        "postgres": probes.postgres_probe(settings.postgres_dsn),
        "redis": probes.redis_probe(settings.redis_url),
    }
    result["duration_s"] = time.perf_counter() - start
    return result


def metric_families(result: dict) -> typing.Iterator[GaugeMetricFamily]:
    """The probe results as Prometheus gauges (pure: tested on plain dicts)."""
    lag = GaugeMetricFamily("kafka_consumer_lag", "Records a consumer group has not committed yet",
                            labels=["group", "topic", "partition"])
    for group, topics in sorted(result["lag"].get("groups", {}).items()):
        for topic, parts in sorted(topics.items()):
            for partition, info in sorted(parts.items()):
                lag.add_metric([group, topic, str(partition)], info["lag"])
    yield lag
    end = GaugeMetricFamily("kafka_topic_end_offset", "Next offset of each partition",
                            labels=["topic", "partition"])
    last = GaugeMetricFamily("kafka_last_record_timestamp_seconds", "Timestamp of the newest record",
                             labels=["topic"])
    for topic, info in sorted(result["offsets"].get("topics", {}).items()):
        for partition, part in sorted(info.get("partitions", {}).items()):
            end.add_metric([topic, str(partition)], part["end"])
        if info.get("last_timestamp_ms") is not None:
            last.add_metric([topic], info["last_timestamp_ms"] / 1000.0)
    yield end
    yield last
    running = GaugeMetricFamily("flink_job_running", "1 while the Flink job is RUNNING", labels=["job_name"])
    failed = GaugeMetricFamily("flink_job_checkpoints_failed", "Failed checkpoints of the running job",
                               labels=["job_name"])
    by_name: typing.Dict[str, dict] = {}
    for job in sorted(result["flink"].get("jobs", []), key=lambda j: j.get("start_time_ms") or 0):
        if job.get("name"):
            by_name[job["name"]] = job  # the latest start of a name wins
    for name, job in sorted(by_name.items()):
        running.add_metric([name], 1.0 if job["state"] == "RUNNING" else 0.0)
        if job.get("checkpoints") is not None:
            failed.add_metric([name], job["checkpoints"]["failed"])
    yield running
    yield failed
    duration = GaugeMetricFamily("database_operation_duration_seconds", "Round trip of a probe operation",
                                 labels=["database", "operation"])
    for database, operation in (("postgres", "select_1"), ("redis", "ping")):
        if result[database].get("duration_s") is not None:
            duration.add_metric([database, operation], result[database]["duration_s"])
    yield duration
    health = GaugeMetricFamily("service_health_status", "1 when the service answered the probe",
                               labels=["service"])
    states = {"kafka": result["offsets"]["reachable"], "flink": result["flink"]["reachable"],
              "postgres": result["postgres"]["reachable"], "redis": result["redis"]["reachable"]}
    for service, reachable in sorted(states.items()):
        if reachable is not None:  # None: not configured, so not monitored
            health.add_metric([service], 1.0 if reachable else 0.0)
    yield health
    yield GaugeMetricFamily("exporter_probe_duration_seconds", "Time the last probe run took",
                            value=result["duration_s"])


class PipelineCollector:
    """A prometheus_client custom collector: probes on scrape, cached."""

    def __init__(self, settings: ExporterSettings):
        self._cache = probes.StatusCache(lambda: probe_all(settings), settings.min_interval_s)

    def collect(self):
        yield from metric_families(self._cache.get())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m monitoring.exporter", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=19400)
    p.add_argument("--kafka_bootstrap", default=env_settings.value(None, "KAFKA_BOOTSTRAP"))
    p.add_argument("--topics", default=",".join(DEFAULT_TOPICS))
    p.add_argument("--groups", default="", help="consumer groups (default: every group)")
    p.add_argument("--flink_rest_url", default=env_settings.flink_rest_url(),
                   help="default: $FLINK_MASTER")
    p.add_argument("--postgres_dsn", default=env_settings.postgres_dsn(),
                   help="default: from POSTGRES_HOST and friends")
    p.add_argument("--redis_url", default=env_settings.redis_url(),
                   help="default: from REDIS_HOST and friends")
    p.add_argument("--min_interval_s", type=float, default=10.0)
    p.add_argument("--log_format", choices=("json", "text"), default=None)
    args = p.parse_args(argv)
    configure_logging(args.log_format)
    if not args.kafka_bootstrap:
        p.error("--kafka_bootstrap (or KAFKA_BOOTSTRAP) is required")
    settings = ExporterSettings(
        kafka_client_config=kafka_client_config(args.kafka_bootstrap,
                                                **env_settings.kafka_security()),
        topics=tuple(t for t in args.topics.split(",") if t),
        groups=tuple(g for g in args.groups.split(",") if g) or None,
        flink_rest_url=args.flink_rest_url, postgres_dsn=args.postgres_dsn, redis_url=args.redis_url,
        min_interval_s=args.min_interval_s)
    registry = CollectorRegistry()
    registry.register(PipelineCollector(settings))
    start_http_server(args.port, addr=args.host, registry=registry)
    _LOG.info("exporter listening", host=args.host, port=args.port, topics=list(settings.topics))
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
