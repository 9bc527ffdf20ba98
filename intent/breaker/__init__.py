"""The shared circuit breaker: pybreaker's API over atomic store steps, with a Redis store
(packaged Lua) shared by the fleet and an in-memory store as its fallback.

This package exports what a breaker's user needs: the breaker and its configuration, its
errors and states, the stores one constructs, the operators' view and the metrics. The
store contract and its wire types (``BreakerStore``, ``Snapshot``, ``Ticket``...) are in
:mod:`intent.breaker.stores`, for code that implements or tests a store.
"""

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
from intent.breaker.policy import CLOSED, HALF_OPEN, OPEN
from intent.breaker.prometheus import BreakerStateCollector, TransitionCounter, register_metrics
from intent.breaker.registry import default_store, store_from_settings
from intent.breaker.stores.base import NoSharedStore, StoreError, StoreUnavailable
from intent.breaker.stores.fallback import FallbackStore
from intent.breaker.stores.memory import MemoryStore
from intent.breaker.stores.redis import RedisStore, breaker_redis_client
from intent.breaker.view import BreakerStatus, CircuitAdmin
from intent.errors import BulkheadFullError, CircuitBreakerError, CircuitOpenError

STATE_CLOSED, STATE_OPEN, STATE_HALF_OPEN = CLOSED, OPEN, HALF_OPEN  # pybreaker's names

__all__ = [
    "CLOSED",
    "HALF_OPEN",
    "OPEN",
    "PERMANENT_ERRORS",
    "STATE_CLOSED",
    "STATE_HALF_OPEN",
    "STATE_OPEN",
    "BreakerStateCollector",
    "BreakerStatus",
    "BulkheadFullError",
    "CircuitAdmin",
    "CircuitBreaker",
    "CircuitBreakerError",
    "CircuitBreakerListener",
    "CircuitConfig",
    "CircuitContext",
    "CircuitOpenError",
    "CircuitState",
    "ExcludeRule",
    "FallbackStore",
    "Listener",
    "MemoryStore",
    "NoSharedStore",
    "RedisStore",
    "StoreError",
    "StoreUnavailable",
    "TransitionCounter",
    "TransitionListener",
    "breaker_redis_client",
    "default_store",
    "register_metrics",
    "store_from_settings",
]
