"""In-process rate limits: token buckets per key, answered with 429 and `Retry-After`.

Two limits (api/auth.py applies both, so every route is covered without a decorator of its own):

- **writes**: requests with a method other than GET/HEAD/OPTIONS, per token (per client address
  with auth off). Writes upload files, start Ray actors and fill the database: a client in a
  loop could exhaust the cluster long before it hurt the web process.
- **token failures**: unknown, revoked or expired tokens, per client address. Once a client has
  spent its allowance, every request of it that presents a token is refused before the lookup,
  until the bucket refills.

A bucket holds `per_minute` tokens and refills continuously (per_minute / 60 each second), so a
client may burst up to the whole minute's allowance and then goes at the steady rate. 0 turns a
limit off. The buckets live in the process: with N replicas a client gets up to N times the
allowance, which still bounds it. Behind a proxy, the client address is the proxy's unless
uvicorn trusts its X-Forwarded-For (FORWARDED_ALLOW_IPS).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from fastapi import HTTPException, Request

from api.settings import Settings

# An attacker with many source addresses (IPv6) must not grow the table without bound: past this
# many keys, full buckets (equivalent to no entry) are forgotten, then the least recently used.
MAX_KEYS = 10_000


class TokenBucket:
    """`per_minute` events per key and minute, in bursts of up to `per_minute`. Thread-safe: sync
    FastAPI dependencies run in a thread pool."""

    def __init__(self, per_minute: int, max_keys: int = MAX_KEYS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.refill_per_s = per_minute / 60.0
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (level, at)
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    def _level(self, key: str, now: float) -> float:
        level, at = self._buckets.get(key, (self.capacity, now))
        return min(self.capacity, level + (now - at) * self.refill_per_s)

    def _wait_s(self, level: float) -> float:
        return 0.0 if level >= 1 else (1 - level) / self.refill_per_s

    def wait_s(self, key: str) -> float:
        """Seconds until `key` may act again (0: now); takes nothing."""
        if not self.enabled:
            return 0.0
        with self._lock:
            return self._wait_s(self._level(key, self._clock()))

    def take(self, key: str) -> float:
        """Spend one token of `key`'s bucket and answer 0, or answer the seconds to wait (spending nothing)."""
        if not self.enabled:
            return 0.0
        with self._lock:
            now = self._clock()
            level = self._level(key, now)
            if level < 1:
                return self._wait_s(level)
            self._buckets[key] = (level - 1, now)
            self._buckets.move_to_end(key)
            self._bound(now)
            return 0.0

    def _bound(self, now: float) -> None:
        if len(self._buckets) <= self.max_keys:
            return
        for key in [k for k in self._buckets if self._level(k, now) >= self.capacity]:
            del self._buckets[key]
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)


def too_many(what: str, wait_s: float) -> HTTPException:
    """429 with `Retry-After` in whole seconds (at least 1)."""
    retry_after = max(1, math.ceil(wait_s))
    return HTTPException(429, detail=f"too many {what}: retry in {retry_after} s",
                         headers={"Retry-After": str(retry_after)})


class RateLimits:
    """The service's buckets, one set per application (kept in `app.state.rate_limits`)."""

    def __init__(self, settings: Settings) -> None:
        self.writes = TokenBucket(settings.write_limit_per_minute)
        self.token_failures = TokenBucket(settings.token_failure_limit_per_minute)

    def check_write(self, key: str) -> None:
        """Count one write of `key` (a token id); 429 once its bucket is empty."""
        wait = self.writes.take(key)
        if wait:
            raise too_many("write requests for this token", wait)

    def check_not_blocked(self, client: str) -> None:
        """429 while `client` has no token failures left: its tokens are not even looked up."""
        wait = self.token_failures.wait_s(client)
        if wait:
            raise too_many("invalid tokens from this client", wait)

    def record_failure(self, client: str) -> None:
        self.token_failures.take(client)


def client_address(request: Request) -> str:
    """The peer's address (uvicorn puts a trusted proxy's X-Forwarded-For here)."""
    return request.client.host if request.client else "unknown"


def rate_limits(request: Request) -> RateLimits:
    return request.app.state.rate_limits
