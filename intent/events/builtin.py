"""Handlers every consumer of this service can run: ``intent events consume`` registers them."""

from __future__ import annotations

from intent.cache import ContextCache
from intent.errors import RejectEvent
from intent.events.handler import EventHandler
from intent.models import Event, IntentEvent


class ContextInvalidation:
    """``context_changed`` (from this service or another): forget the cached context, so the
    next analysis fetches it again. Deleting twice is harmless, so no idempotency is needed.

    The cache is handed in (the consumer's process builds it), so the bus needs no
    per-process wiring to load."""

    def __init__(self, cache: ContextCache) -> None:
        self.cache = cache

    def __call__(self, event: Event) -> None:
        context_id = event.data.get("context_id")
        if not isinstance(context_id, str) or not context_id:
            raise RejectEvent("context_changed without a context_id in its data")
        self.cache.invalidate(context_id)


def register_builtin_handlers(handler: EventHandler, cache: ContextCache) -> EventHandler:
    handler.register(IntentEvent.CONTEXT_CHANGED, ContextInvalidation(cache))
    return handler
