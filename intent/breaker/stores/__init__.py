"""The breaker's backends under one interface: ``base`` holds the contract (``BreakerStore``)
and its wire types, ``memory``, ``redis`` and ``fallback`` its implementations. Code that
speaks the contract (a store of its own, a test of one) imports the wire types from here;
breaker users need only ``intent.breaker``."""

from intent.breaker.stores.base import (
    Action,
    Admission,
    BreakerStore,
    Denial,
    NoSharedStore,
    Outcome,
    Report,
    Snapshot,
    StoreError,
    StoreUnavailable,
    Ticket,
    TicketKind,
    Transition,
)
from intent.breaker.stores.fallback import FallbackStore
from intent.breaker.stores.memory import MemoryStore
from intent.breaker.stores.redis import RedisStore, breaker_redis_client

__all__ = [
    "Action",
    "Admission",
    "BreakerStore",
    "Denial",
    "FallbackStore",
    "MemoryStore",
    "NoSharedStore",
    "Outcome",
    "RedisStore",
    "Report",
    "Snapshot",
    "StoreError",
    "StoreUnavailable",
    "Ticket",
    "TicketKind",
    "Transition",
    "breaker_redis_client",
]
