"""Builds breaker stores from settings, and the process-wide default store."""

from __future__ import annotations

import threading
from typing import Any

from intent.breaker.breaker import CircuitBreaker
from intent.breaker.config import CircuitConfig
from intent.breaker.stores.base import BreakerStore, NoSharedStore
from intent.breaker.stores.fallback import FallbackStore
from intent.breaker.stores.redis import DEFAULT_SOCKET_TIMEOUT, RedisStore

DEFAULT_PROBE_INTERVAL = 5.0
DEFAULT_FALLBACK_LOG_INTERVAL = 30.0

_default: BreakerStore | None = None
_default_lock = threading.Lock()


def store_from_settings(settings: Any) -> BreakerStore:
    """Redis (``redis_url``) with the in-memory fallback. Without a URL, no store: a
    breaker private to one process is asked for by name (``store=MemoryStore()``)."""
    url = getattr(settings, "redis_url", None)
    if not url:
        raise NoSharedStore(
            "no shared store for the circuit breaker: set INTENT_REDIS_URL, so that every "
            "process shares its state, or pass store=MemoryStore() for a breaker private "
            "to this process"
        )
    primary = RedisStore.from_url(
        url,
        prefix=getattr(settings, "key_prefix", "intent:"),
        socket_timeout=getattr(settings, "circuit_redis_socket_timeout", DEFAULT_SOCKET_TIMEOUT),
    )
    return FallbackStore(
        primary,
        probe_interval=getattr(settings, "circuit_redis_probe_interval", DEFAULT_PROBE_INTERVAL),
        warn_interval=getattr(
            settings, "circuit_fallback_log_interval", DEFAULT_FALLBACK_LOG_INTERVAL
        ),
    )


def default_store() -> BreakerStore:
    """The store breakers use when given none, built once per process from the settings."""
    global _default
    with _default_lock:
        if _default is None:
            from intent.settings import get_settings

            _default = store_from_settings(get_settings())
        return _default


def breaker_from_settings(
    name: str, settings: Any = None, store: BreakerStore | None = None, **options: Any
) -> CircuitBreaker:
    """A breaker configured from ``INTENT_CIRCUIT_*`` settings."""
    if settings is None:
        from intent.settings import get_settings

        settings = get_settings()
        store = store or default_store()
    elif store is None:
        store = store_from_settings(settings)
    return CircuitBreaker(name, CircuitConfig.from_settings(settings), store=store, **options)
