"""The breakers' Prometheus metrics: the pipeline's, and a team's own registry's.

``register_metrics(registry, store)`` adds to any ``prometheus_client`` registry the
fleet's breaker state, read from the shared store at each scrape (every breaker the store
has seen), and returns a listener that counts the transitions this process performs; give
it to each breaker::

    from prometheus_client import REGISTRY
    counter = register_metrics(REGISTRY, store, breakers=["payments"])
    breaker = CircuitBreaker("payments", store=store, listeners=[counter])

The families are declared once, with the pipeline's, in ``intent.metrics`` (which imports
nothing of the breaker); the pipeline's ``/metrics`` reads the state with the same
:class:`BreakerStateCollector`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.metrics_core import Metric

from intent.breaker.breaker import TransitionListener
from intent.breaker.stores.base import BreakerStore, StoreError
from intent.breaker.view import CircuitAdmin
from intent.metrics import (
    BREAKER_STATES,
    STATE,
    STORE_UP,
    TRANSITIONS,
    TRANSITIONS_FAMILY,
    WINDOW_CALLS,
    WINDOW_FAILURES,
)

log = logging.getLogger("intent.metrics")


class BreakerStateCollector:
    """The breakers' state as the shared store holds it: ``intent_circuit_breaker_state``
    is 1 for the current state, 0 for the others, for every breaker the store has seen."""

    def __init__(self, admin: Any):
        # A CircuitAdmin, or a callable returning one (read at each scrape).
        self._admin = admin

    def collect(self) -> Iterator[Metric]:
        up = STORE_UP.gauge()
        try:
            admin = self._admin if isinstance(self._admin, CircuitAdmin) else self._admin()
            statuses = admin.list()
        except StoreError as exc:
            log.warning("metrics: breaker state unreadable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        state, failures, calls = STATE.gauge(), WINDOW_FAILURES.gauge(), WINDOW_CALLS.gauge()
        for status in statuses:
            for name in BREAKER_STATES:
                state.add_metric([status.name, name], 1 if status.state == name else 0)
            failures.add_metric([status.name], status.failures)
            calls.add_metric([status.name], status.calls)
        yield from (state, failures, calls)


class TransitionCounter(TransitionListener):
    """A breaker listener counting the transitions its process performs, in a registry."""

    def __init__(self, registry: CollectorRegistry, breakers: Iterable[str] = ()):
        family = TRANSITIONS_FAMILY
        self.counter = Counter(family.name, family.help, family.labels, registry=registry)
        for name in breakers:  # known label values at 0, so a rate is defined at once
            for old, new in TRANSITIONS:
                self.counter.labels(name, old, new)
        super().__init__(self._count)

    def _count(self, breaker: str, old: str, new: str) -> None:
        self.counter.labels(breaker, old, new).inc()


def register_metrics(
    registry: CollectorRegistry, store: BreakerStore, breakers: Iterable[str] = ()
) -> TransitionCounter:
    """The breakers' families in ``registry``: the state of every breaker in ``store``
    (collected at each scrape), and the returned listener's transition counter."""
    registry.register(BreakerStateCollector(CircuitAdmin(store)))
    return TransitionCounter(registry, breakers)
