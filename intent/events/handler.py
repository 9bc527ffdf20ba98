"""The guide's ``EventHandler``: handlers registered per event type, and dispatch by type.

Handlers are plain callables taking an :class:`Event`. Returning means done (the event is
acknowledged); raising means "deliver it again later"; two exceptions steer that:
:class:`RejectEvent` (dead-letter now, never retry) and :class:`RetryLater` (deliver again
after a given delay, without counting it as a failure).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any, TypeVar

from intent.models import Event, IntentEvent

logger = logging.getLogger("intent.events")

Handler = Callable[[Event], object]
H = TypeVar("H", bound=Handler)


class Delivery:
    """The delivery being handled: which group and consumer, which stream entry, which try.

    The consumer updates one instance in place per event, so read it inside the handler.
    """

    __slots__ = ("consumer", "deliveries", "entry_id", "group")

    def __init__(self, group: str, consumer: str):
        self.group = group
        self.consumer = consumer
        self.entry_id = ""
        self.deliveries = 0

    def __repr__(self) -> str:
        return (
            f"Delivery(group={self.group!r}, consumer={self.consumer!r}, "
            f"entry_id={self.entry_id!r}, deliveries={self.deliveries})"
        )


_current_delivery: ContextVar[Delivery | None] = ContextVar("intent_delivery", default=None)


def current_delivery() -> Delivery | None:
    """The delivery a consumer is handling in this thread (None outside a consumer)."""
    return _current_delivery.get()


class EventHandler:
    """Handlers per :class:`IntentEvent` type, run in registration order."""

    def __init__(self) -> None:
        # Keyed by the type's value: a stream entry's raw ``type`` string finds its handlers.
        self._handlers: dict[str, tuple[Handler, ...]] = {}

    def register(self, event_type: IntentEvent | str, fn: Handler) -> Handler:
        """Run ``fn(event)`` for every event of ``event_type``; returns ``fn``."""
        kind = IntentEvent(event_type)  # ValueError names an unknown type at registration
        self._handlers[kind.value] = (*self._handlers.get(kind.value, ()), fn)
        return fn

    def on(self, event_type: IntentEvent | str) -> Callable[[H], H]:
        """Decorator form of :meth:`register`: ``@handler.on(IntentEvent.CONTEXT_CHANGED)``."""

        def decorate(fn: H) -> H:
            self.register(event_type, fn)
            return fn

        return decorate

    @property
    def by_type(self) -> Mapping[str, tuple[Handler, ...]]:
        """The handlers of each type, by the type's value (what a stream entry carries)."""
        return self._handlers

    def handlers(self, event_type: str) -> tuple[Handler, ...]:
        return self._handlers.get(event_type, ())

    def handles(self, event_type: str) -> bool:
        return event_type in self._handlers

    @property
    def types(self) -> list[IntentEvent]:
        return [IntentEvent(value) for value in self._handlers]

    def handle_event(self, event: Event | Mapping[str, Any]) -> bool:
        """Run the handlers of ``event``'s type (a dict is validated into an Event first).

        False, with a warning, when no handler is registered for its type.
        """
        if not isinstance(event, Event):
            event = Event.model_validate(event)
        handlers = self._handlers.get(event.type)
        if not handlers:
            logger.warning(
                "no handler for event type %s",
                event.type.value,
                extra={"event_id": event.id, "event_type": event.type.value},
            )
            return False
        for fn in handlers:
            fn(event)
        return True
