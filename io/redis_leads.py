"""Redis state for the sales team: priority leads by score, and lead counters.

``WritePriorityLeads`` takes ``marketo_leads`` rows and keeps, per lead, one
small Lua call (replay-safe, versioned by the row's ``updated_at``)::

    HGET  <p>lead_version <lead_id>      stored version newer? -> skip
    HSET  <p>lead_version <lead_id> <version>
    ZADD  <p>priority_leads <score> <lead_id>   if the action is
                                                immediate_sales_follow_up
    ZREM  <p>priority_leads <lead_id>           otherwise (no longer a priority)
    SADD  <p>scored:<YYYY-MM-DD> <lead_id>      day of updated_at (UTC)
    SADD  <p>qualified:<YYYY-MM-DD> <lead_id>   if score > 80
    EXPIRE the two day sets after ``day_ttl_seconds``

Read the sales list with ``ZREVRANGE <p>priority_leads 0 49 WITHSCORES`` and
the counters with ``SCARD`` (sets of ids, so a replay counts a lead once).
Members are lead ids only: no name or email reaches Redis.

Batching, retries and the failed output are those of
``iheard_io.redis_io`` (its batch DoFn is reused: ``iheard_io.sink_base``). Delivery guarantee:
at-least-once, idempotent (an older version never overwrites a newer one).
"""
from __future__ import annotations

import datetime as dt
import typing

from iheard_io.redis_io import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_DAY_TTL_S,
    DEFAULT_ON_EXHAUSTED,
    _common_args,
    _epoch_ms,
    _RedisBatchFn,
    _WriteToRedis,
)
from iheard_io.retry import DEFAULT_FIRST_BACKOFF_S
from iheard_io.retry import DEFAULT_RETRY_BUDGET_S

__all__ = ["WritePriorityLeads", "read_priority_leads", "DEFAULT_LEAD_PREFIX"]

DEFAULT_LEAD_PREFIX = "iheard:marketo:"
PRIORITY_ACTION = "immediate_sales_follow_up"
QUALIFIED_SCORE = 80

# KEYS: version hash, priority zset, scored set, qualified set
# ARGV: lead id, version, score, is_priority (0/1), is_qualified (0/1), ttl s
_LEAD_LUA = """
local stored = redis.call('HGET', KEYS[1], ARGV[1])
if stored and tonumber(stored) > tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[4] == '1' then
  redis.call('ZADD', KEYS[2], tonumber(ARGV[3]), ARGV[1])
else
  redis.call('ZREM', KEYS[2], ARGV[1])
end
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[6]))
if ARGV[5] == '1' then
  redis.call('SADD', KEYS[4], ARGV[1])
  redis.call('EXPIRE', KEYS[4], tonumber(ARGV[6]))
end
return 1
"""


class _WritePriorityLeadsFn(_RedisBatchFn):
    counter_namespace = "WritePriorityLeads"

    def __init__(self, key_prefix, day_ttl_s, **common):
        super().__init__(**common)
        self._p = key_prefix
        self._day_ttl_s = int(day_ttl_s)

    def _queue(self, pipe, row):
        lead_id = row.get("lead_id")
        version = _epoch_ms(row.get("updated_at"))
        score = row.get("lead_quality_score")
        if lead_id is None or version is None or score is None:
            raise ValueError("a lead row needs lead_id, updated_at and lead_quality_score")
        day = dt.datetime.fromtimestamp(version / 1000.0, tz=dt.timezone.utc).strftime("%Y-%m-%d")
        pipe.eval(_LEAD_LUA, 4, f"{self._p}lead_version", f"{self._p}priority_leads",
                  f"{self._p}scored:{day}", f"{self._p}qualified:{day}",
                  str(int(lead_id)), str(int(version)), str(int(score)),
                  "1" if row.get("recommended_action") == PRIORITY_ACTION else "0",
                  "1" if int(score) > QUALIFIED_SCORE else "0", str(self._day_ttl_s))


class WritePriorityLeads(_WriteToRedis):
    """marketo_leads rows -> the priority sorted set and day counters;
    returns ``FailedRecord``s of rows that could not be written."""

    def __init__(self, redis_url: str, key_prefix: str = DEFAULT_LEAD_PREFIX,
                 day_ttl_seconds: int = DEFAULT_DAY_TTL_S,
                 batch_size: int = DEFAULT_BATCH_SIZE,
                 retry_budget_seconds: float = DEFAULT_RETRY_BUDGET_S,
                 retry_backoff_seconds: float = DEFAULT_FIRST_BACKOFF_S, pipeline: str = "marketo",
                 client_kwargs: typing.Optional[dict] = None,
                 on_exhausted: str = DEFAULT_ON_EXHAUSTED):
        super().__init__()
        if day_ttl_seconds <= 0:
            raise ValueError("day_ttl_seconds must be positive")
        self._common = _common_args(redis_url, client_kwargs, None, batch_size,
                                    retry_budget_seconds, retry_backoff_seconds, pipeline,
                                    on_exhausted)
        self._own = dict(key_prefix=key_prefix, day_ttl_s=day_ttl_seconds)

    def _fn(self):
        return _WritePriorityLeadsFn(**self._own, **self._common)


def read_priority_leads(client, key_prefix: str = DEFAULT_LEAD_PREFIX, top: int = 50
                        ) -> typing.List[typing.Tuple[int, int]]:
    """(lead_id, score) of the ``top`` priority leads, best first."""
    return [(int(member), int(score)) for member, score in
            client.zrevrange(f"{key_prefix}priority_leads", 0, top - 1, withscores=True)]
