"""The process's breaker store: built from the settings (Redis with the in-memory fallback),
one per process for each configuration, and a fresh one in a forked child.

Every user of the settings-built store (a breaker given no store, the runtime's breakers,
the operators' view) asks here, so while Redis is down the process runs on one fallback,
with one memory of the outage, not one per user.
"""

from __future__ import annotations

import threading

from intent.breaker.stores.base import BreakerStore, NoSharedStore
from intent.breaker.stores.fallback import FallbackStore
from intent.breaker.stores.redis import RedisStore
from intent.forks import ForkLocal
from intent.settings import Settings, get_settings

# What a store is built from: settings that agree on these share one store.
_StoreKey = tuple[str, str, float, float, float, str]


class _ProcessStores:
    """One process's stores, by what they were built from."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stores: dict[_StoreKey, BreakerStore] = {}


# A forked child starts afresh: it never uses its parent's stores (their sockets) or their
# lock (maybe held at the fork).
_processes: ForkLocal[_ProcessStores] = ForkLocal(_ProcessStores)


def store_from_settings(settings: Settings) -> FallbackStore:
    """A new store: the state's Redis (``state_redis_url``, default ``redis_url``) with the
    in-memory fallback. Without a URL, no store: a breaker private to one process is asked
    for by name (``store=MemoryStore()``)."""
    url = settings.effective_state_redis_url
    if not url:
        raise NoSharedStore(
            "no shared store for the circuit breaker: set INTENT_REDIS_URL, so that every "
            "process shares its state, or pass store=MemoryStore() for a breaker private "
            "to this process"
        )
    primary = RedisStore.from_url(
        url,
        prefix=settings.key_prefix,
        socket_timeout=settings.circuit_redis_socket_timeout,
        sentinel_master=settings.sentinel_master,
    )
    return FallbackStore(
        primary,
        probe_interval=settings.circuit_redis_probe_interval,
        warn_interval=settings.circuit_fallback_log_interval,
    )


def default_store(settings: Settings | None = None) -> BreakerStore:
    """This process's store for ``settings`` (default: the process's settings), built on
    first use; breakers given no store use it."""
    settings = settings or get_settings()
    key: _StoreKey = (
        settings.effective_state_redis_url or "",
        settings.key_prefix,
        settings.circuit_redis_socket_timeout,
        settings.circuit_redis_probe_interval,
        settings.circuit_fallback_log_interval,
        settings.sentinel_master,
    )
    mine = _this_process()
    with mine.lock:
        store = mine.stores.get(key)
        if store is None:
            store = mine.stores[key] = store_from_settings(settings)
        return store


def forget_stores() -> None:
    """The next ``default_store`` builds a new store (tests that change the environment)."""
    mine = _this_process()
    with mine.lock:
        mine.stores.clear()


def _this_process() -> _ProcessStores:
    return _processes.get()
