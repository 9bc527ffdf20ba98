"""The shared circuit breaker: pybreaker's API over atomic store steps, with a Redis store
(packaged Lua) shared by the fleet and an in-memory store as its fallback."""

from intent.breaker.admin import BreakerStatus, CircuitAdmin
from intent.breaker.breaker import (
    PERMANENT_ERRORS,
    CircuitBreaker,
    CircuitBreakerListener,
    CircuitState,
    ExcludeRule,
    Listener,
    TransitionListener,
)
from intent.breaker.config import CircuitConfig, CircuitContext
from intent.breaker.factory import default_store, store_from_settings
from intent.breaker.fallback import FallbackStore
from intent.breaker.memory_store import MemoryStore
from intent.breaker.policy import CLOSED, HALF_OPEN, OPEN
from intent.breaker.prometheus import BreakerStateCollector, TransitionCounter, register_metrics
from intent.breaker.redis_store import RedisStore, breaker_redis_client
from intent.breaker.store import (
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
from intent.errors import CircuitBreakerError, CircuitOpenError

STATE_CLOSED, STATE_OPEN, STATE_HALF_OPEN = CLOSED, OPEN, HALF_OPEN  # pybreaker's names

__all__ = [
    "CLOSED",
    "HALF_OPEN",
    "OPEN",
    "PERMANENT_ERRORS",
    "STATE_CLOSED",
    "STATE_HALF_OPEN",
    "STATE_OPEN",
    "Action",
    "Admission",
    "BreakerStateCollector",
    "BreakerStatus",
    "BreakerStore",
    "CircuitAdmin",
    "CircuitBreaker",
    "CircuitBreakerError",
    "CircuitBreakerListener",
    "CircuitConfig",
    "CircuitContext",
    "CircuitOpenError",
    "CircuitState",
    "Denial",
    "ExcludeRule",
    "FallbackStore",
    "Listener",
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
    "TransitionCounter",
    "TransitionListener",
    "breaker_redis_client",
    "default_store",
    "register_metrics",
    "store_from_settings",
]
