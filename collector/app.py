"""The collector's ASGI application (FastAPI on Starlette).

Routes::

    POST /api/analytics  trackEvent body or array -> Kafka; 202 once acknowledged
    GET  /health         liveness: the process answers (200 always)
    GET  /status         Kafka reachable, Flink jobs, consumer lag, last event per source
    GET  /metrics        Prometheus text format

``POST /api/analytics``, in the order the checks run (each refusal is
counted in ``collector_requests_rejected_total{reason}`` and answered with a
JSON ``{"error": reason, "message": ..., "rejected": [{"index", "reason"}]}``):

    Origin header not in --allowed_origins         403 origin_not_allowed
    client over its rate (token bucket)            429 rate_limited (Retry-After)
    Content-Length or body over --max_body_bytes   413 too_large
    not JSON / not an object or array / empty      400 invalid_json | not_an_object | empty_batch
    more than --max_events_per_request events      413 too_many_events
    any event invalid (schemas/ models)            400 invalid_event, every bad index
    Kafka did not acknowledge                      503 kafka_unavailable (Retry-After)
    otherwise                                      202 {"accepted": n}

CORS: browsers get ``Access-Control-Allow-Origin`` only for the configured
widget origins (Starlette's ``CORSMiddleware`` answers preflights); requests
without an Origin header (servers, the load-test tool) are not affected.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
import typing

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from collector.events import BodyError, parse_body
from collector.metrics import CollectorMetrics
from collector.publisher import KafkaPublisher, PublishUnavailable
from collector.ratelimit import TokenBuckets
from collector.settings import CollectorSettings
from monitoring import probes
from monitoring.logs import get_logger

__all__ = ["create_app", "build_status"]

_LOG = get_logger("collector")
_ROUTE = "/api/analytics"


class _TooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refusing early (by Content-Length) or as soon as the
    streamed body passes ``limit`` (chunked uploads)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge(f"body of {declared} bytes exceeds the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge(f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def build_status(settings: CollectorSettings, publisher: typing.Optional[KafkaPublisher] = None) -> dict:
    """The ``/status`` document (blocking; probes Kafka and Flink)."""
    client_config = settings.kafka_client_config()
    source_topics = settings.source_topics
    offsets = probes.kafka_offsets(client_config, sorted(set(source_topics.values())))
    lag = probes.consumer_lag(client_config, list(settings.status_topics), settings.status_groups) \
        if offsets["reachable"] else {"reachable": False, "error": offsets["error"], "groups": {}}
    flink = probes.flink_jobs(settings.flink_rest_url)
    last_events = {}
    for source, topic in source_topics.items():
        info = offsets["topics"].get(topic, {})
        ts = info.get("last_timestamp_ms")
        last_events[source] = {"topic": topic, "last_event_ms": ts,
                               "last_event_at": _iso(ts) if ts else None}
    healthy = offsets["reachable"] and flink["reachable"] is not False
    return {
        "status": "ok" if healthy else "degraded",
        "kafka": {"reachable": offsets["reachable"], "error": offsets["error"],
                  "producer_connected": publisher.connected if publisher is not None else None},
        "flink": flink,
        "consumer_lag": lag["groups"],
        "last_events": last_events,
        "checked_at": _iso(time.time() * 1000),
    }


def _iso(ms: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(ms / 1000.0, datetime.timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def _error(status: int, reason: str, message: str, rejected=(), headers=None) -> JSONResponse:
    body = {"error": reason, "message": message}
    if rejected:
        body["rejected"] = [{"index": r.index, "reason": r.reason} for r in rejected]
    return JSONResponse(body, status_code=status, headers=headers)


def create_app(settings: CollectorSettings, publisher: typing.Optional[KafkaPublisher] = None,
               metrics: typing.Optional[CollectorMetrics] = None) -> FastAPI:
    """The application. ``publisher`` defaults to one built from ``settings``
    (connected at startup, closed at shutdown)."""
    metrics = metrics or CollectorMetrics()
    own_publisher = publisher is None
    publisher = publisher or KafkaPublisher(settings.kafka_client_config(), settings.producer_config)
    limiter = TokenBuckets(settings.rate_limit_per_s, settings.rate_limit_burst) \
        if settings.rate_limit_per_s > 0 else None
    status_cache = probes.StatusCache(lambda: build_status(settings, publisher), settings.status_ttl_s)
    allowed = set(settings.allowed_origins)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        connected = await asyncio.get_running_loop().run_in_executor(None, publisher.connect)
        metrics.kafka_up.set(1 if connected else 0)
        _LOG.info("collector started", kafka=settings.kafka_bootstrap, kafka_connected=connected,
                  topics=dict(settings.topics), allowed_origins=sorted(allowed))
        yield
        if own_publisher:
            await asyncio.get_running_loop().run_in_executor(None, publisher.close)
        _LOG.info("collector stopped")

    app = FastAPI(title="iheardAI event collector", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.publisher = publisher
    if allowed:
        app.add_middleware(CORSMiddleware, allow_origins=sorted(allowed), allow_methods=["POST"],
                           allow_headers=["Content-Type"], max_age=600)

    def client_key(request: Request) -> str:
        if settings.trust_forwarded_for:
            forwarded = request.headers.get("x-forwarded-for")
            if forwarded:
                return forwarded.split(",")[0].strip()
        return request.client.host if request.client else "unknown"

    def refuse(status: int, reason: str, message: str, events: int = 0, rejected=(), headers=None):
        metrics.requests_rejected.labels(reason).inc()
        if events:
            metrics.events_rejected.labels(reason).inc(events)
        metrics.requests.labels(_ROUTE, str(status)).inc()
        return _error(status, reason, message, rejected, headers)

    @app.post(_ROUTE, status_code=202)
    async def analytics(request: Request):
        start = time.perf_counter()
        origin = request.headers.get("origin")
        if origin is not None and origin not in allowed and "*" not in allowed:
            return refuse(403, "origin_not_allowed", f"origin {origin!r} may not post events")
        key = client_key(request)
        if limiter is not None and not limiter.allow(key):
            retry = max(1, int(limiter.retry_after_s(key) + 0.999))
            return refuse(429, "rate_limited", "too many requests from this client",
                          headers={"Retry-After": str(retry)})
        try:
            body = await _read_body(request, settings.max_body_bytes)
        except _TooLarge as exc:
            return refuse(413, "too_large", str(exc))
        try:
            records = parse_body(body, settings.topics, settings.max_events_per_request)
        except BodyError as exc:
            status = 413 if exc.kind == "too_many_events" else 400
            _LOG.info("request refused", reason=exc.kind, client=key, rejected=len(exc.rejected))
            return refuse(status, exc.kind, str(exc), events=len(exc.rejected) or 1, rejected=exc.rejected)
        publish_start = time.perf_counter()
        try:
            await publisher.publish([(r.topic, r.key, r.value, None) for r in records])
        except PublishUnavailable as exc:
            metrics.kafka_up.set(0)
            _LOG.warning("kafka unavailable", error=str(exc), events=len(records))
            return refuse(503, "kafka_unavailable", f"events not accepted: {exc}", events=len(records),
                          headers={"Retry-After": "5"})
        now = time.time()
        metrics.kafka_up.set(1)
        metrics.publish_seconds.observe(time.perf_counter() - publish_start)
        metrics.batch_events.observe(len(records))
        for record in records:
            metrics.events_accepted.labels(record.source).inc()
        for source in {r.source for r in records}:
            metrics.last_event.labels(source).set(now)
        metrics.requests.labels(_ROUTE, "202").inc()
        metrics.request_seconds.observe(time.perf_counter() - start)
        return JSONResponse({"accepted": len(records)}, status_code=202)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/status")
    async def status():
        doc = await asyncio.get_running_loop().run_in_executor(None, status_cache.get)
        return JSONResponse(doc, status_code=200 if doc["kafka"]["reachable"] else 503)

    @app.get("/metrics")
    async def prometheus_metrics():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
