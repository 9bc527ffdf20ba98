"""Rate limits shared by every worker process, on ``limits``' moving window in Redis.

A moving window admits at most ``amount`` hits in *any* period of ``seconds``, not just
in aligned windows (a fixed window lets twice the limit through around a boundary).
Each hit is one Lua script on Redis (``limits``' ``acquire_moving_window``); a refusal
costs one more read, to name the moment a hit will be admitted again.

While Redis cannot be reached, each process counts its hits in memory against its share
of every limit (``INTENT_RATE_LIMIT_FALLBACK_SHARE``), saying so once per interval: calls
go on to the breaker (which has its own in-memory fallback) instead of failing on the
limiter, and a fleet of up to 1 / share processes stays within the limit.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import redis
from limits import RateLimitItem, RateLimitItemPerSecond
from limits.errors import StorageError
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from intent import tracing
from intent.connections import rate_limit_storage
from intent.errors import RateLimitExceeded, ServiceUnavailableError
from intent.keys import Keys
from intent.settings import Settings

log = logging.getLogger("intent.ratelimit")

INTAKE = "intake"  # analyses per client_id
GET_CONTEXT = "get_context"
ANALYZE_CONTEXT = "analyze_context"
PREDICT = "predict"


@dataclass(frozen=True)
class LimitStatus:
    name: str
    identifier: str  # "" for a fleet-wide limit
    amount: int
    seconds: int
    current: int
    reset_at: float
    scope: str = "fleet"  # "fleet": one count for every caller; "client": one per client_id


class SharedRateLimit:
    """One named limit: ``amount`` hits per ``seconds``, fleet-wide, or ``per_client``
    (one count per identifier, e.g. the client_id)."""

    def __init__(
        self,
        name: str,
        amount: int,
        seconds: int,
        limiter: MovingWindowRateLimiter,
        fallback: Fallback | None = None,
        per_client: bool = False,
    ):
        self.name = name
        self.per_client = per_client
        self.item: RateLimitItem = RateLimitItemPerSecond(amount, seconds, namespace=name)
        self._limiter = limiter
        self._fallback = fallback
        share = fallback.share if fallback is not None else 1.0
        self.fallback_item: RateLimitItem = RateLimitItemPerSecond(
            max(1, math.floor(amount * share)), seconds, namespace=name
        )

    @property
    def amount(self) -> int:
        return int(self.item.amount)

    @property
    def seconds(self) -> int:
        return int(self.item.get_expiry())

    def hit(self, identifier: str = "") -> None:
        """Count one hit, or raise :class:`RateLimitExceeded` naming when to come back."""
        try:
            limiter, item = self._limiter, self.item
            if limiter.hit(item, identifier):
                return
            stats = limiter.get_window_stats(item, identifier)
        except StorageError as exc:
            if self._fallback is None or not _unreachable(exc):
                raise ServiceUnavailableError("redis", f"rate limit {self.name}: {exc}") from exc
            self._fallback.went_down(exc)
            limiter, item = self._fallback.limiter, self.fallback_item
            if limiter.hit(item, identifier):
                return
            stats = limiter.get_window_stats(item, identifier)
        retry_after = max(0.001, stats.reset_time - time.time())
        label = self._label(identifier)
        tracing.event("ratelimit.rejected", limit=label, retry_after=round(retry_after, 3))
        raise RateLimitExceeded(label, retry_after)

    def get_current_rate(self, identifier: str = "") -> int:
        """Hits in the window that ends now."""
        return self.status(identifier).current

    def status(self, identifier: str = "") -> LimitStatus:
        """The shared count: ``identifier``'s for a per-client limit, the fleet's for the
        others, whatever is asked (raises ServiceUnavailableError when Redis cannot be
        reached)."""
        identifier = identifier if self.per_client else ""
        try:
            stats = self._limiter.get_window_stats(self.item, identifier)
        except StorageError as exc:
            raise ServiceUnavailableError("redis", f"rate limit {self.name}: {exc}") from exc
        current = self.amount - stats.remaining
        return LimitStatus(
            self.name,
            identifier,
            self.amount,
            self.seconds,
            current,
            stats.reset_time,
            "client" if self.per_client else "fleet",
        )

    def reset(self, identifier: str = "") -> None:
        """Empty the window (``identifier``'s, for a per-client limit); a ValueError for
        an identifier given to a fleet-wide limit, which has none."""
        if identifier and not self.per_client:
            raise ValueError(f"{self.name} is fleet-wide: it has no per-client count to reset")
        try:
            self._limiter.clear(self.item, identifier)
        except StorageError as exc:
            raise ServiceUnavailableError("redis", f"rate limit {self.name}: {exc}") from exc

    def _label(self, identifier: str) -> str:
        rate = f"{self.amount}/{self.seconds}s"
        return f"{self.name}[{identifier}] {rate}" if identifier else f"{self.name} {rate}"


def _unreachable(exc: StorageError) -> bool:
    return isinstance(exc.storage_error, redis.ConnectionError | redis.TimeoutError)


class Fallback:
    """This process's in-memory limiter while Redis cannot be reached."""

    def __init__(self, share: float, log_interval: float):
        self.share = share
        self.log_interval = log_interval
        self.limiter = MovingWindowRateLimiter(MemoryStorage())
        self._logged_at = -math.inf
        self._lock = threading.Lock()

    def went_down(self, exc: StorageError) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._logged_at < self.log_interval:
                return
            self._logged_at = now
        log.warning(
            "rate limits: Redis unreachable (%s); this process counts %.0f %% of each limit "
            "in memory until it answers",
            exc.storage_error,
            self.share * 100,
            extra={"error": type(exc.storage_error).__name__, "share": self.share},
        )


class RateLimits:
    """The service's limits: downstream endpoints and intake per client."""

    def __init__(self, settings: Settings, keys: Keys):
        storage = rate_limit_storage(settings, keys.rate_limits)
        limiter = MovingWindowRateLimiter(storage)
        fallback = Fallback(
            settings.rate_limit_fallback_share, settings.rate_limit_fallback_log_interval
        )
        period = settings.downstream_rate_period
        amounts = {
            GET_CONTEXT: (settings.rate_limit_get_context, period),
            ANALYZE_CONTEXT: (settings.rate_limit_analyze_context, period),
            PREDICT: (settings.rate_limit_predict, period),
            INTAKE: (settings.max_requests_per_window, settings.rate_limit_window),
        }
        self.limits: dict[str, SharedRateLimit] = {
            name: SharedRateLimit(name, amount, seconds, limiter, fallback, name == INTAKE)
            for name, (amount, seconds) in amounts.items()
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
