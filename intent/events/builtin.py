"""Handlers every consumer of this service can run: ``intent events consume`` registers them."""

from __future__ import annotations

from intent.events.handler import EventHandler, RejectEvent
from intent.models import Event, IntentEvent


def invalidate_context(event: Event) -> None:
    """``context_changed`` (from this service or another): forget the cached context, so the
    next analysis fetches it again. Deleting twice is harmless, so no idempotency is needed."""
    # Imported when called: the per-process wiring builds the bus's publisher, so the bus
    # must not need the wiring to load.
    from intent.runtime import get_runtime

    context_id = event.data.get("context_id")
    if not isinstance(context_id, str) or not context_id:
        raise RejectEvent("context_changed without a context_id in its data")
    get_runtime().context_cache.invalidate(context_id)


def register_builtin_handlers(handler: EventHandler) -> EventHandler:
    handler.register(IntentEvent.CONTEXT_CHANGED, invalidate_context)
    return handler
