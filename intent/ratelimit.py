"""Rate limits shared by every worker process, on ``limits``' moving window in Redis.

A moving window admits at most ``amount`` hits in *any* period of ``seconds``, not just
in aligned windows (a fixed window lets twice the limit through around a boundary).
Each hit is one Lua script on Redis (``limits``' ``acquire_moving_window``); a refusal
costs one more read, to name the moment a hit will be admitted again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from intent.errors import RateLimitExceeded
from intent.keys import Keys
from intent.settings import Settings

INTAKE = "intake"  # analyses per client_id
GET_CONTEXT = "get_context"
ANALYZE_CONTEXT = "analyze_context"
PREDICT = "predict"


@dataclass(frozen=True)
class LimitStatus:
    name: str
    identifier: str
    amount: int
    seconds: int
    current: int
    reset_at: float


class SharedRateLimit:
    """One named limit: ``amount`` hits per ``seconds``, per identifier (e.g. client_id)."""

    def __init__(self, name: str, amount: int, seconds: int, limiter: MovingWindowRateLimiter):
        self.name = name
        self.item: RateLimitItem = RateLimitItemPerSecond(amount, seconds, namespace=name)
        self._limiter = limiter

    @property
    def amount(self) -> int:
        return int(self.item.amount)

    @property
    def seconds(self) -> int:
        return int(self.item.get_expiry())

    def hit(self, identifier: str = "") -> None:
        """Count one hit, or raise :class:`RateLimitExceeded` naming when to come back."""
        if self._limiter.hit(self.item, identifier):
            return
        stats = self._limiter.get_window_stats(self.item, identifier)
        retry_after = max(0.001, stats.reset_time - time.time())
        raise RateLimitExceeded(self._label(identifier), retry_after)

    def get_current_rate(self, identifier: str = "") -> int:
        """Hits in the window that ends now."""
        return self.amount - self._limiter.get_window_stats(self.item, identifier).remaining

    def status(self, identifier: str = "") -> LimitStatus:
        stats = self._limiter.get_window_stats(self.item, identifier)
        current = self.amount - stats.remaining
        return LimitStatus(
            self.name, identifier, self.amount, self.seconds, current, stats.reset_time
        )

    def reset(self, identifier: str = "") -> None:
        self._limiter.clear(self.item, identifier)

    def _label(self, identifier: str) -> str:
        rate = f"{self.amount}/{self.seconds}s"
        return f"{self.name}[{identifier}] {rate}" if identifier else f"{self.name} {rate}"


class RateLimits:
    """The service's limits: downstream endpoints and intake per client."""

    def __init__(self, settings: Settings, keys: Keys):
        storage = RedisStorage(
            settings.require_redis_url(),
            key_prefix=keys.rate_limits,
            socket_timeout=settings.redis_socket_timeout,
            socket_connect_timeout=settings.redis_socket_timeout,
        )
        limiter = MovingWindowRateLimiter(storage)
        period = settings.downstream_rate_period
        self.limits: dict[str, SharedRateLimit] = {
            GET_CONTEXT: SharedRateLimit(
                GET_CONTEXT, settings.rate_limit_get_context, period, limiter
            ),
            ANALYZE_CONTEXT: SharedRateLimit(
                ANALYZE_CONTEXT, settings.rate_limit_analyze_context, period, limiter
            ),
            PREDICT: SharedRateLimit(PREDICT, settings.rate_limit_predict, period, limiter),
            INTAKE: SharedRateLimit(
                INTAKE, settings.max_requests_per_window, settings.rate_limit_window, limiter
            ),
        }

    def __getitem__(self, name: str) -> SharedRateLimit:
        try:
            return self.limits[name]
        except KeyError:
            raise KeyError(f"no rate limit named {name!r}; known: {sorted(self.limits)}") from None

    def __iter__(self) -> Iterator[SharedRateLimit]:
        return iter(self.limits.values())

    def hit(self, name: str, identifier: str = "") -> None:
        self[name].hit(identifier)
