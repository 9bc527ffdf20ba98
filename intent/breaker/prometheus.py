"""The breakers' Prometheus metrics: the pipeline's, and a team's own registry's.

``register_metrics(registry, store)`` adds to any ``prometheus_client`` registry the
fleet's breaker state, read from the shared store at each scrape (every breaker the store
has seen), and returns a listener that counts the transitions this process performs; give
it to each breaker::

    from prometheus_client import REGISTRY
    counter = register_metrics(REGISTRY, store, breakers=["payments"])
    breaker = CircuitBreaker("payments", store=store, listeners=[counter])

The families are declared here once (``intent.metrics`` lists them with the pipeline's).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from intent.breaker.admin import CircuitAdmin
from intent.breaker.stores.base import BreakerStore, StoreError

log = logging.getLogger("intent.metrics")

BREAKER_STATES = ("closed", "open", "half-open")
TRANSITIONS = (
    ("closed", "open"),
    ("open", "half-open"),
    ("half-open", "closed"),
    ("half-open", "open"),
    ("open", "closed"),
    ("closed", "half-open"),
)


@dataclass(frozen=True)
class Family:
    """One metric family as Prometheus shows it (``name`` without a ``_total`` suffix for a
    counter); ``collected``: read from the shared state at each scrape, not recorded."""

    name: str
    kind: str  # counter, histogram, gauge
    labels: tuple[str, ...]
    help: str
    collected: bool = False

    @property
    def exposed(self) -> str:
        """The name a query uses (a counter's ``_total``; a histogram's base name)."""
        return f"{self.name}_total" if self.kind == "counter" else self.name


TRANSITIONS_FAMILY = Family(
    "intent_circuit_breaker_transitions",
    "counter",
    ("breaker", "from_state", "to_state"),
    "Breaker state changes, counted once fleet-wide, by the process that performed each "
    "(a worker, the CLI, the admin endpoint).",
)
STATE = Family(
    "intent_circuit_breaker_state",
    "gauge",
    ("breaker", "state"),
    "1 for the breaker's current state, fleet-wide (read from the shared store).",
    collected=True,
)
WINDOW_FAILURES = Family(
    "intent_circuit_breaker_window_failures",
    "gauge",
    ("breaker",),
    "Failures in the breaker's current window.",
    collected=True,
)
WINDOW_CALLS = Family(
    "intent_circuit_breaker_window_calls",
    "gauge",
    ("breaker",),
    "Calls in the breaker's current window.",
    collected=True,
)
STORE_UP = Family(
    "intent_circuit_breaker_store_up",
    "gauge",
    (),
    "Whether the shared breaker state could be read.",
    collected=True,
)


def gauge(family: Family) -> GaugeMetricFamily:
    return GaugeMetricFamily(family.name, family.help, labels=list(family.labels))


class BreakerStateCollector:
    """The breakers' state as the shared store holds it: ``intent_circuit_breaker_state``
    is 1 for the current state, 0 for the others, for every breaker the store has seen."""

    def __init__(self, admin: Any):
        # A CircuitAdmin, or a callable returning one (read at each scrape).
        self._admin = admin

    def collect(self) -> Iterator[Metric]:
        up = gauge(STORE_UP)
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
        state, failures, calls = gauge(STATE), gauge(WINDOW_FAILURES), gauge(WINDOW_CALLS)
        for status in statuses:
            for name in BREAKER_STATES:
                state.add_metric([status.name, name], 1 if status.state == name else 0)
            failures.add_metric([status.name], status.failures)
            calls.add_metric([status.name], status.calls)
        yield from (state, failures, calls)


class TransitionCounter:
    """A breaker listener counting the transitions its process performs, in a registry."""

    def __init__(self, registry: CollectorRegistry, breakers: Iterable[str] = ()):
        family = TRANSITIONS_FAMILY
        self.counter = Counter(family.name, family.help, family.labels, registry=registry)
        for name in breakers:  # known label values at 0, so a rate is defined at once
            for old, new in TRANSITIONS:
                self.counter.labels(name, old, new)

    def before_call(self, cb: Any, func: Any, *args: Any, **kwargs: Any) -> None:
        """Calls are not counted here."""

    def failure(self, cb: Any, exc: BaseException) -> None:
        """Failures are not counted here."""

    def success(self, cb: Any) -> None:
        """Successes are not counted here."""

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        old, new = str(old_state), str(new_state)
        if old != new:
            self.counter.labels(cb.name, old, new).inc()


def register_metrics(
    registry: CollectorRegistry, store: BreakerStore, breakers: Iterable[str] = ()
) -> TransitionCounter:
    """The breakers' families in ``registry``: the state of every breaker in ``store``
    (collected at each scrape), and the returned listener's transition counter."""
    registry.register(BreakerStateCollector(CircuitAdmin(store)))
    return TransitionCounter(registry, breakers)
