"""Per-client rate limiting: a token bucket per client key.

Each client may make ``rate_per_s`` requests a second on average and up to
``burst`` at once. A bucket starts full; every request takes one token;
tokens come back at ``rate_per_s`` up to ``burst``::

    burst=3, rate=1/s:  t=0.0 ok ok ok 429 | t=1.0 ok 429 | t=3.0 ok ok 429 ...

Buckets are kept for at most ``max_clients`` keys (least recently seen
dropped first), so a flood of distinct addresses cannot grow memory without
bound; a dropped client simply starts again with a full bucket.
"""
from __future__ import annotations

import collections
import time
import typing

__all__ = ["TokenBuckets"]


class TokenBuckets:
    def __init__(self, rate_per_s: float, burst: int, max_clients: int = 100_000,
                 clock: typing.Callable[[], float] = time.monotonic):
        if rate_per_s <= 0:
            raise ValueError(f"rate_per_s must be > 0, got {rate_per_s}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        if max_clients < 1:
            raise ValueError(f"max_clients must be >= 1, got {max_clients}")
        self.rate_per_s = float(rate_per_s)
        self.burst = int(burst)
        self._max_clients = max_clients
        self._clock = clock
        # key -> (tokens, time of last update)
        self._buckets: "collections.OrderedDict[str, typing.Tuple[float, float]]" = collections.OrderedDict()

    def allow(self, key: str) -> bool:
        """Takes a token for ``key``; False when its bucket is empty."""
        now = self._clock()
        tokens, last = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate_per_s)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self._max_clients:
            self._buckets.popitem(last=False)
        return allowed

    def retry_after_s(self, key: str) -> float:
        """Seconds until ``key`` has a token again (0 when it has one)."""
        tokens, last = self._buckets.get(key, (float(self.burst), self._clock()))
        tokens = min(float(self.burst), tokens + (self._clock() - last) * self.rate_per_s)
        return max(0.0, (1.0 - tokens) / self.rate_per_s)

    def __len__(self) -> int:
        return len(self._buckets)
