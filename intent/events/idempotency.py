"""At most once per event id and consumer group: a handler wrapper over Redis marks with a TTL.

Claim, then confirm. Before the handler runs, its event's mark is claimed with a lease (a
key holding this run's token, expiring after ``lease`` seconds); when the handler returns
the mark becomes ``done`` for ``ttl`` seconds, and later deliveries of the event id skip the
handler. A handler that raises gives its claim back, so the retry may run at once. A
process that dies mid-handler leaves a claim that lapses after the lease; until then a
redelivery finds the event in progress and is deferred (:class:`EventInProgress`, looked
at again every ``poll`` seconds, not counted as a failed delivery), never acknowledged, so
the event is not lost if the claimant never finishes.

A plain "SET NX after success" would let two consumers run the same event at once (a slow
consumer's entry taken over, or the event published twice) and both act; the lease stops
that while keeping a crash recoverable.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import uuid
from collections.abc import Callable
from typing import TypeVar, overload

import redis

from intent import scripts
from intent.connections import data_client
from intent.errors import RetryLater
from intent.events.handler import current_delivery
from intent.forks import ForkLocal
from intent.keys import Keys
from intent.models import Event
from intent.settings import Settings, get_settings

logger = logging.getLogger("intent.events")

Action = Callable[[Event], object]
A = TypeVar("A", bound=Action)

DONE = "done"


class EventInProgress(RetryLater):
    """Another run holds the event's claim: deliver it again once that claim may be over."""

    def __init__(self, event_id: str, delay: float):
        super().__init__(delay, f"event {event_id} is being handled by another run")
        self.event_id = event_id


# One client per Redis URL in each process, whatever number of wrapped handlers asks.
_clients: ForkLocal[dict[str, redis.Redis]] = ForkLocal(dict)


class Idempotency:
    """Runs handlers at most once per event id within a consumer group.

    ``group`` defaults to the group of the delivery being handled
    (:func:`intent.events.current_delivery`), so one wrapped handler serves any group.
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        ttl: int,
        lease: float,
        group: str | None = None,
        poll: float = 1.0,
    ):
        self.client = client
        self.poll = poll  # how often a run that found the event in progress looks again
        self.keys = keys
        self.ttl = ttl
        self.lease = lease
        self.group = group
        self._claim = scripts.register(client, "idempotency_claim")
        self._release = scripts.register(client, "release_if_owner")

    @classmethod
    def from_settings(
        cls, settings: Settings | None = None, group: str | None = None
    ) -> Idempotency:
        """Marks on the Redis ``settings`` name (default: this process's settings), kept
        ``INTENT_EVENT_DEDUP_TTL``, with a lease of ``INTENT_CONSUMER_CLAIM_IDLE`` (a handler
        running longer is taken over anyway)."""
        settings = settings or get_settings()
        url = settings.require_state_redis_url()
        clients = _clients.get()
        client = clients.get(url) or clients.setdefault(url, data_client(settings))
        return cls(
            client,
            Keys(settings.key_prefix),
            ttl=settings.event_dedup_ttl,
            lease=settings.consumer_claim_idle,
            group=group,
        )

    @classmethod
    def from_runtime(cls, group: str | None = None) -> Idempotency:
        """The guide's name: :meth:`from_settings` for this process's settings."""
        return cls.from_settings(group=group)

    def key(self, event_id: str, *, group: str | None = None, name: str | None = None) -> str:
        """The mark of one event in one group (``name`` separates handlers of one type)."""
        group = group or self.group
        if group is None:
            delivery = current_delivery()
            if delivery is None:
                raise ValueError("no consumer group: pass group=, or call from a consumer")
            group = delivery.group
        return self.keys.event_handled(group, f"{event_id}:{name}" if name else event_id)

    def run(
        self,
        event: Event,
        action: Action,
        *,
        name: str | None = None,
        group: str | None = None,
    ) -> bool:
        """Run ``action(event)`` unless this event id is done; True if it ran.

        Raises :class:`EventInProgress` while another run holds the claim, and whatever the
        action raises (the claim is given back first).
        """
        key = self.key(event.id, group=group, name=name)
        token = f"run:{uuid.uuid4().hex}"
        state, pttl = self._claim(keys=[key], args=[token, max(1, int(self.lease * 1000))])
        if state == 0:
            logger.debug(
                "event already handled, skipping", extra={"event_id": event.id, "key": key}
            )
            return False
        if state == 2:
            # Look again when the claim lapses at the latest: its holder usually finishes
            # well before, and a deferral costs no delivery.
            raise EventInProgress(event.id, min(max(int(pttl), 1) / 1000, self.poll))
        try:
            action(event)
        except BaseException:
            with contextlib.suppress(redis.RedisError):  # else the claim lapses with its lease
                self._release(keys=[key], args=[token])
            raise
        # Unconditional: even if our lease lapsed and another run claimed the event, the
        # action did happen, and "done" stops any further run.
        self.client.set(key, DONE, ex=self.ttl)
        return True

    @overload
    def once(self, fn: A, *, name: str | None = None) -> A: ...

    @overload
    def once(self, fn: None = None, *, name: str | None = None) -> Callable[[A], A]: ...

    def once(self, fn: A | None = None, *, name: str | None = None) -> A | Callable[[A], A]:
        """Decorator: the handler runs at most once per event id and group.

        ``@idempotency.once`` or ``@idempotency.once(name="billing")``; give a name when
        several wrapped handlers share an event type, so each has its own mark.
        """

        def decorate(handler: A) -> A:
            @functools.wraps(handler)
            def wrapper(event: Event) -> None:
                self.run(event, handler, name=name)

            return wrapper  # type: ignore[return-value]

        return decorate(fn) if fn is not None else decorate

    def is_done(self, event_id: str, *, group: str | None = None, name: str | None = None) -> bool:
        value = self.client.get(self.key(event_id, group=group, name=name))
        return value in (DONE, DONE.encode())

    def forget(self, event_id: str, *, group: str | None = None, name: str | None = None) -> bool:
        """Drop an event's mark (an operator re-running it on purpose)."""
        return bool(self.client.delete(self.key(event_id, group=group, name=name)))
