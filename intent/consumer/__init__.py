"""The consuming side of the event bus: handlers by type, a consumer-group runner with
retries, dead letters and takeover, and the operators' dead-letter and replay tools."""

from intent.consumer.builtin import invalidate_context, register_builtin_handlers
from intent.consumer.config import ConsumerConfig, UnknownTypePolicy, default_consumer_name
from intent.consumer.deadletter import DeadLetter, DeadLetters
from intent.consumer.handler import (
    Delivery,
    EventHandler,
    Handler,
    RejectEvent,
    RetryLater,
    current_delivery,
)
from intent.consumer.replay import ReplayError, ReplayResult, replay
from intent.consumer.runner import ConsumerStats, EventConsumer

__all__ = [
    "ConsumerConfig",
    "ConsumerStats",
    "DeadLetter",
    "DeadLetters",
    "Delivery",
    "EventConsumer",
    "EventHandler",
    "Handler",
    "RejectEvent",
    "ReplayError",
    "ReplayResult",
    "RetryLater",
    "UnknownTypePolicy",
    "current_delivery",
    "default_consumer_name",
    "invalidate_context",
    "register_builtin_handlers",
    "replay",
]
