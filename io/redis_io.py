"""Redis sinks for hot session state and live KPIs (redis-py).

Both transforms (and ``iheard_io.redis_leads``) are ``iheard_io.sink_base``
sinks: elements are buffered and sent in one Redis pipeline per batch
(``batch_size`` elements, and at the end of every bundle), from a client made
in ``setup()``. A command Redis refuses (e.g. WRONGTYPE on a key someone else
wrote) makes only its element a dead letter. Connection errors and timeouts
are retried on fresh connections with capped exponential backoff for
``retry_budget_seconds`` (default 60 s: a 30 s restart loses nothing); past
it the batch's elements come out on the returned ``failed`` PCollection as
``FailedRecord``s (stage ``sink:redis``, reason ``StoreUnavailable``, the
element as JSON: replayable, since every write below is versioned or a set)
instead of failing the job - live state is a derived copy, and a Redis
outage must not stop the PostgreSQL writes. ``on_exhausted="fail"`` fails
the bundle instead (Flink then replays from its checkpoint).

Connection, AUTH and TLS come from the URL: ``redis://[user:password@]host:
port/db`` or ``rediss://...`` for TLS (extra ``redis.Redis`` keyword
arguments, e.g. ``ssl_ca_certs``, via ``client_kwargs``). ``password_file``
instead of a password in the URL: the workers read it in ``setup()``
(iheard_io.security), so it never travels with the job. A refused AUTH
or an untrusted server certificate is a configuration error, not an outage:
it fails the bundle at once with ``RedisConnectionRefused`` instead of being
retried and dead-lettered; ``check_redis_connection`` finds it before a job
starts.

Delivery guarantee: at-least-once, and every write below is idempotent, so a
replay from a Flink checkpoint (or a retried batch) leaves the same state.

``WriteSessionState`` - one hash per session::

    HSET  <key_prefix><session_id>  field value ...  _version <version ms>
    EXPIRE <key_prefix><session_id> ttl_seconds

done by a small Lua script that skips the HSET when the stored ``_version``
is newer than the element's (``version_fn``, default: the element's
``last_event_at`` / ``updated_at`` / ``timestamp_ms`` / ``timestamp`` as epoch
ms), so a replayed or late older element never overwrites newer state.
Writing the same element twice gives the same hash. Read with
``HGETALL <key_prefix><session_id>``; dict/list fields are JSON, others text.

``WriteLiveKpis`` - from event dicts (``event_id``, ``session_id``,
``event_type``, ``timestamp_ms``); all buckets use the *event* time in UTC, so
a replay lands in the same keys:

* active sessions: ``ZADD <p>active_sessions GT <timestamp_ms> <session_id>``
  (GT: a replayed older event never moves a session's last-seen back; the
  same event twice is a no-op), then ``ZREMRANGEBYSCORE`` drops members older
  than ``active_window_seconds`` before that event. Read: ``ZCOUNT
  <p>active_sessions <now_ms - window_ms> +inf``.
* events per minute per type: ``SADD <p>events:<event_type>:<YYYYMMDDHHMM>
  <event_id>`` with a TTL of ``minute_ttl_seconds``. Read: ``SCARD`` of the
  key (a set of ids, so a replayed event is counted once). With
  ``approximate_counts=True`` it is ``PFADD`` / ``PFCOUNT`` instead (a
  HyperLogLog: 12 KB per key whatever the volume, ~0.8 % error, equally
  replay-safe).
* conversions today: ``SADD <p>conversions:<YYYY-MM-DD> <event_id>`` for
  events whose type is in ``conversion_event_types``, TTL
  ``day_ttl_seconds``. Read: ``SCARD <p>conversions:<today UTC>``.

``read_live_kpis`` below performs exactly these reads.

Key layouts the pipelines write (and the readers here read):

* ``session_state_prefix(pipeline)`` = ``iheard:<pipeline>:session:``: one
  ``WriteSessionState`` hash per session (frontend sessions, text-agent
  conversations).
* ``iheard:text_agent:cost:<tenant>:<YYYY-MM-DD>`` (``DAILY_COST_PREFIX``): a
  tenant's UTC-day cost, fields ``cost:<model>:<HH>`` and
  ``turns:<model>:<HH>`` (``daily_cost_state`` makes the element from an
  ``agent_billing_hourly`` row; ``read_cost_today`` sums ``cost:*``).
"""
from __future__ import annotations

import datetime as dt
import json
import time
import typing

import apache_beam as beam

from iheard_io.retry import DEFAULT_FIRST_BACKOFF_S
from iheard_io.retry import DEFAULT_RETRY_BUDGET_S
from iheard_io.retry import OnExhausted
from iheard_io.retry import RedisErrors
from iheard_io.security import read_secret_file
from iheard_io.security import speaks_tls
from iheard_io.sink_base import BatchSinkFn
from iheard_io.sink_base import retry_policy
from schemas.tables import to_utc_datetime

__all__ = [
    "WriteSessionState",
    "WriteLiveKpis",
    "read_live_kpis",
    "session_state_prefix",
    "daily_cost_state",
    "read_cost_today",
    "check_redis_connection",
    "RedisConnectionRefused",
    "DEFAULT_SESSION_PREFIX",
    "DEFAULT_KPI_PREFIX",
    "DAILY_COST_PREFIX",
    "DAILY_COST_TTL_SECONDS",
]

STAGE = "sink:redis"


def session_state_prefix(pipeline: str) -> str:
    """Key prefix of a pipeline's per-session hashes."""
    return f"iheard:{pipeline}:session:"


DEFAULT_SESSION_PREFIX = session_state_prefix("frontend")
DEFAULT_KPI_PREFIX = "iheard:kpi:"
# Redis hash with the running cost of a tenant's UTC day (daily_cost_state).
DAILY_COST_PREFIX = "iheard:text_agent:cost:"
# A session with no event for 30 minutes is over (same gap as the session
# windows); its hash lives on for that long after its last write.
DEFAULT_SESSION_TTL_S = 30 * 60
DEFAULT_ACTIVE_WINDOW_S = 5 * 60
# Per-minute keys are for "the last hour" charts; keep two hours.
DEFAULT_MINUTE_TTL_S = 2 * 3600
# "Today" in any time zone is within three UTC days.
DEFAULT_DAY_TTL_S = 3 * 86400
# A tenant's day is "today" somewhere for up to ~50 h; keep its cost hash as long.
DAILY_COST_TTL_SECONDS = DEFAULT_DAY_TTL_S
DEFAULT_BATCH_SIZE = 500
DEFAULT_ON_EXHAUSTED = OnExhausted.DEAD_LETTER.value

# KEYS[1] = hash; ARGV[1] = ttl s, ARGV[2] = version, ARGV[3..] = field, value...
_VERSIONED_HSET_LUA = """
local stored = redis.call('HGET', KEYS[1], '_version')
if stored and tonumber(stored) > tonumber(ARGV[2]) then
  return 0
end
if #ARGV > 2 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 3))
end
redis.call('HSET', KEYS[1], '_version', ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
"""


def _epoch_ms(value) -> typing.Optional[int]:
    parsed = to_utc_datetime(value)
    return None if parsed is None else int(parsed.timestamp() * 1000)


def default_version(element: typing.Mapping) -> int:
    """Newest time the element describes, as epoch ms (0 when it has none)."""
    for field in ("last_event_at", "updated_at", "timestamp_ms", "timestamp"):
        value = element.get(field)
        if value not in (None, ""):
            try:
                ms = _epoch_ms(value)
            except (TypeError, ValueError):
                continue
            if ms is not None:
                return ms
    return 0


def _field_value(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value, sort_keys=True, default=str)


class RedisConnectionRefused(ConnectionError):
    """Redis answered but refused us: AUTH or TLS verification."""


def _refusal(exc: BaseException) -> typing.Optional[str]:
    """Why Redis refused us, or None for an outage worth retrying."""
    import redis

    if isinstance(exc, redis.AuthenticationError):
        return "authentication failed (wrong or missing password)"
    if "CERTIFICATE_VERIFY_FAILED" in str(exc):
        return "TLS certificate not trusted (check ssl_ca_certs)"
    return None


def _client_kwargs(client_kwargs) -> dict:
    kwargs = {"socket_timeout": 10, "socket_connect_timeout": 5, **(client_kwargs or {})}
    password_file = kwargs.pop("password_file", None)
    if password_file:
        kwargs["password"] = read_secret_file(password_file)
    return kwargs


def _where(redis_url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(redis_url)  # never the password
    return f"Redis at {parts.scheme}://{parts.hostname}:{parts.port}"


def check_redis_connection(redis_url: str, client_kwargs: typing.Optional[dict] = None,
                           timeout_s: float = 5.0) -> None:
    """PING with the sink's settings; raises ``RedisConnectionRefused`` (AUTH,
    TLS) or ``ConnectionError`` (nothing answers, or a plaintext client on a
    TLS port) with a message that names the server, never the password."""
    import redis

    kwargs = _client_kwargs({"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s,
                             **(client_kwargs or {})})
    client = redis.Redis.from_url(redis_url, **kwargs)
    try:
        client.ping()
    except redis.RedisError as exc:
        reason = _refusal(exc)
        if reason:
            raise RedisConnectionRefused(f"{_where(redis_url)}: {reason}") from None
        if redis_url.startswith("redis://"):
            from urllib.parse import urlsplit

            parts = urlsplit(redis_url)
            if speaks_tls(parts.hostname, parts.port or 6379, timeout_s):
                raise RedisConnectionRefused(
                    f"{_where(redis_url)}: the server wants TLS (use rediss:// with ssl_ca_certs)"
                ) from None
        raise ConnectionError(f"{_where(redis_url)}: {type(exc).__name__}: {exc}") from None
    finally:
        client.close()


class _RedisBatchFn(BatchSinkFn):
    """Each element's commands are recorded first (``_queue``), so an element
    that cannot even become commands is its own dead letter and a batch can
    be replayed on a new pipeline after a reconnect; a batch is one
    non-transactional pipeline."""

    counter_namespace = "WriteToRedis"
    stage = STAGE

    def __init__(self, redis_url, client_kwargs=None, batch_size=DEFAULT_BATCH_SIZE,
                 retry_budget_s=DEFAULT_RETRY_BUDGET_S, backoff_s=DEFAULT_FIRST_BACKOFF_S,
                 pipeline="", on_exhausted=DEFAULT_ON_EXHAUSTED, batched=False):
        super().__init__(errors=RedisErrors(),
                         retry=retry_policy(retry_budget_s, backoff_s, on_exhausted),
                         batch_size=batch_size, pipeline=pipeline, batched=batched)
        self._redis_url = redis_url
        self._client_kwargs = dict(client_kwargs or {})

    def open_client(self):
        import redis

        return redis.Redis.from_url(self._redis_url, **_client_kwargs(self._client_kwargs))

    def _queue(self, pipe, element) -> None:
        raise NotImplementedError

    def prepare(self, element):
        probe = _CommandRecorder()
        self._queue(probe, element)
        return probe.commands

    def write(self, client, batch):
        import redis

        pipe = client.pipeline(transaction=False)
        for commands in batch:
            for name, args, kwargs in commands:
                getattr(pipe, name)(*args, **kwargs)
        try:
            # Connection failures raise; a command Redis refused comes back
            # in its slot, so only its element becomes a dead letter.
            results = iter(pipe.execute(raise_on_error=False))
        except redis.RedisError as exc:
            reason = _refusal(exc)
            if reason:
                raise RedisConnectionRefused(f"{_where(self._redis_url)}: {reason}") from None
            raise
        errors = []
        for commands in batch:
            refused = [r for r in (next(results) for _ in commands) if isinstance(r, Exception)]
            errors.append(refused[0] if refused else None)
        return errors


class _CommandRecorder:
    """Records pipeline calls so a batch can be replayed on a new pipeline
    after a reconnect."""

    def __init__(self):
        self.commands = []

    def __getattr__(self, name):
        def record(*args, **kwargs):
            self.commands.append((name, args, kwargs))
        return record


class _WriteSessionStateFn(_RedisBatchFn):
    counter_namespace = "WriteSessionState"

    def __init__(self, key_prefix, ttl_seconds, session_key_fn, version_fn, **common):
        super().__init__(**common)
        self._key_prefix = key_prefix
        self._ttl_seconds = ttl_seconds
        self._session_key_fn = session_key_fn
        self._version_fn = version_fn

    def _queue(self, pipe, element):
        session_id = self._session_key_fn(element)
        if session_id in (None, ""):
            raise ValueError("element has no session id")
        args = [self._ttl_seconds, int(self._version_fn(element))]
        for field in sorted(element):
            value = element[field]
            if value is None or field == "_version":
                continue
            args.extend((field, _field_value(value)))
        pipe.eval(_VERSIONED_HSET_LUA, 1, f"{self._key_prefix}{session_id}", *args)


class _WriteLiveKpisFn(_RedisBatchFn):
    counter_namespace = "WriteLiveKpis"

    def __init__(self, key_prefix, active_window_s, minute_ttl_s, day_ttl_s,
                 conversion_event_types, approximate_counts, **common):
        super().__init__(**common)
        self._p = key_prefix
        self._active_window_ms = int(active_window_s * 1000)
        self._minute_ttl_s = int(minute_ttl_s)
        self._day_ttl_s = int(day_ttl_s)
        self._conversion_types = frozenset(conversion_event_types)
        self._approximate = approximate_counts

    def _queue(self, pipe, event):
        event_id = event.get("event_id")
        event_type = event.get("event_type")
        ts_ms = event.get("timestamp_ms")
        if ts_ms is None:
            ts_ms = _epoch_ms(event.get("timestamp"))
        if not event_id or not event_type or ts_ms is None:
            raise ValueError("a KPI event needs event_id, event_type and timestamp_ms")
        ts_ms = int(ts_ms)
        when = dt.datetime.fromtimestamp(ts_ms / 1000.0, tz=dt.timezone.utc)
        session_id = event.get("session_id")
        if session_id:
            active = f"{self._p}active_sessions"
            pipe.zadd(active, {session_id: ts_ms}, gt=True)
            pipe.zremrangebyscore(active, "-inf", f"({ts_ms - self._active_window_ms}")
        minute_key = f"{self._p}events:{event_type}:{when:%Y%m%d%H%M}"
        if self._approximate:
            pipe.pfadd(minute_key, event_id)
        else:
            pipe.sadd(minute_key, event_id)
        pipe.expire(minute_key, self._minute_ttl_s)
        if event_type in self._conversion_types:
            day_key = f"{self._p}conversions:{when:%Y-%m-%d}"
            pipe.sadd(day_key, event_id)
            pipe.expire(day_key, self._day_ttl_s)


def read_live_kpis(client, key_prefix: str = DEFAULT_KPI_PREFIX, now_ms: typing.Optional[int] = None,
                   active_window_seconds: float = DEFAULT_ACTIVE_WINDOW_S,
                   event_types: typing.Sequence[str] = (), minutes: int = 1,
                   approximate_counts: bool = False) -> dict:
    """The reads documented in the module docstring: active sessions now,
    events per type for the last ``minutes`` minutes (including the current
    one) and conversions today (UTC)."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    now = dt.datetime.fromtimestamp(now_ms / 1000.0, tz=dt.timezone.utc)
    result = {
        "active_sessions": client.zcount(
            f"{key_prefix}active_sessions", now_ms - int(active_window_seconds * 1000), "+inf"),
        "conversions_today": client.scard(f"{key_prefix}conversions:{now:%Y-%m-%d}"),
        "events_per_minute": {},
    }
    for event_type in event_types:
        per_minute = {}
        for back in range(minutes):
            minute = now - dt.timedelta(minutes=back)
            key = f"{key_prefix}events:{event_type}:{minute:%Y%m%d%H%M}"
            per_minute[f"{minute:%Y%m%d%H%M}"] = (
                client.pfcount(key) if approximate_counts else client.scard(key))
        result["events_per_minute"][event_type] = per_minute
    return result


def daily_cost_state(row: typing.Mapping) -> dict:
    """A billing row as a Redis element for ``WriteSessionState``.

    One hash per tenant and UTC day, ``iheard:text_agent:cost:<tenant>:<date>``,
    with the fields ``cost:<model>:<HH>`` and ``turns:<model>:<HH>``. Each
    hourly pane overwrites its own fields with the hour's full aggregate, so
    replays leave the same hash; today's running cost is the sum of the
    ``cost:*`` fields (``read_cost_today``).
    """
    hour = dt.datetime.fromisoformat(row["hour"])
    return {
        "_key": f"{row['tenant_id']}:{hour.strftime('%Y-%m-%d')}",
        f"cost:{row['model']}:{hour.strftime('%H')}": row["estimated_cost_usd"],
        f"turns:{row['model']}:{hour.strftime('%H')}": row["turns"],
    }


def read_cost_today(client, tenant_id: str, day: typing.Optional[dt.date] = None,
                    prefix: str = DAILY_COST_PREFIX) -> float:
    """Running cost of ``tenant_id`` for ``day`` (default today, UTC) from Redis."""
    day = day or dt.datetime.now(dt.timezone.utc).date()
    fields = client.hgetall(f"{prefix}{tenant_id}:{day.isoformat()}")
    total = 0.0
    for name, value in fields.items():
        name = name.decode() if isinstance(name, bytes) else name
        if name.startswith("cost:"):
            total += float(value)
    return round(total, 6)


class _WriteToRedis(beam.PTransform):
    def _fn(self):
        raise NotImplementedError

    def expand(self, pcoll):
        results = pcoll | "WriteBatches" >> beam.ParDo(self._fn()).with_outputs(
            _RedisBatchFn.FAILED, main="written")
        return results[_RedisBatchFn.FAILED]


def _common_args(redis_url, client_kwargs, password_file, batch_size, retry_budget_seconds,
                 retry_backoff_seconds, pipeline, on_exhausted, batched=False) -> dict:
    """The ``_RedisBatchFn`` arguments every Redis sink takes, checked."""
    if not redis_url or not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("redis_url must be a redis://, rediss:// or unix:// URL")
    if batch_size <= 0:
        raise ValueError("batch_size must be positive")
    if retry_budget_seconds < 0:
        raise ValueError("retry_budget_seconds must be >= 0")
    if password_file:
        client_kwargs = {**(client_kwargs or {}), "password_file": password_file}
    return dict(redis_url=redis_url, client_kwargs=client_kwargs, batch_size=batch_size,
                retry_budget_s=retry_budget_seconds, backoff_s=retry_backoff_seconds,
                pipeline=pipeline, on_exhausted=OnExhausted(on_exhausted), batched=batched)


class WriteSessionState(_WriteToRedis):
    """Writes session aggregates (or events) as one Redis hash per session;
    returns the ``FailedRecord``s of elements that could not be written. See
    the module docstring for the key layout, why replays are harmless, and
    what happens when Redis stays down past ``retry_budget_seconds``."""

    def __init__(
        self,
        redis_url: str,
        key_prefix: str = DEFAULT_SESSION_PREFIX,
        ttl_seconds: int = DEFAULT_SESSION_TTL_S,
        session_key_fn: typing.Callable[[dict], str] = lambda e: e.get("session_id"),
        version_fn: typing.Callable[[dict], int] = default_version,
        batch_size: int = DEFAULT_BATCH_SIZE,
        retry_budget_seconds: float = DEFAULT_RETRY_BUDGET_S,
        retry_backoff_seconds: float = DEFAULT_FIRST_BACKOFF_S,
        pipeline: str = "",
        client_kwargs: typing.Optional[dict] = None,
        password_file: typing.Optional[str] = None,
        on_exhausted: str = DEFAULT_ON_EXHAUSTED,
    ):
        super().__init__()
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        self._common = _common_args(redis_url, client_kwargs, password_file, batch_size,
                                    retry_budget_seconds, retry_backoff_seconds, pipeline,
                                    on_exhausted)
        self._own = dict(key_prefix=key_prefix, ttl_seconds=int(ttl_seconds),
                         session_key_fn=session_key_fn, version_fn=version_fn)

    def _fn(self):
        return _WriteSessionStateFn(**self._own, **self._common)


class WriteLiveKpis(_WriteToRedis):
    """Maintains live KPI keys from event dicts, replay-safe; returns the
    ``FailedRecord``s of events that could not be written. See the module
    docstring for each KPI's keys and how to read it. ``batched=True``: each
    element is a list of events (one pipeline round trip per bundle either
    way)."""

    def __init__(
        self,
        redis_url: str,
        key_prefix: str = DEFAULT_KPI_PREFIX,
        active_window_seconds: float = DEFAULT_ACTIVE_WINDOW_S,
        minute_ttl_seconds: int = DEFAULT_MINUTE_TTL_S,
        day_ttl_seconds: int = DEFAULT_DAY_TTL_S,
        conversion_event_types: typing.Iterable[str] = ("conversion",),
        approximate_counts: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
        retry_budget_seconds: float = DEFAULT_RETRY_BUDGET_S,
        retry_backoff_seconds: float = DEFAULT_FIRST_BACKOFF_S,
        pipeline: str = "",
        client_kwargs: typing.Optional[dict] = None,
        batched: bool = False,
        password_file: typing.Optional[str] = None,
        on_exhausted: str = DEFAULT_ON_EXHAUSTED,
    ):
        super().__init__()
        self._common = _common_args(redis_url, client_kwargs, password_file, batch_size,
                                    retry_budget_seconds, retry_backoff_seconds, pipeline,
                                    on_exhausted, batched)
        self._own = dict(key_prefix=key_prefix, active_window_s=active_window_seconds,
                         minute_ttl_s=minute_ttl_seconds, day_ttl_s=day_ttl_seconds,
                         conversion_event_types=tuple(conversion_event_types),
                         approximate_counts=approximate_counts)

    def _fn(self):
        return _WriteLiveKpisFn(**self._own, **self._common)
