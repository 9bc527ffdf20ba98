"""The breaker as a library: no silent private state, metrics in a team's own registry."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from intent.breaker import (
    CircuitBreaker,
    CircuitConfig,
    CircuitState,
    MemoryStore,
    NoSharedStore,
    TransitionListener,
    register_metrics,
)
from intent.settings import get_settings


@pytest.fixture
def no_redis_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("INTENT_REDIS_URL", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_a_breaker_without_a_shared_store_refuses_to_pretend(no_redis_url: None) -> None:
    breaker = CircuitBreaker("payments")
    with pytest.raises(NoSharedStore) as refused:
        breaker.call(lambda: "paid")
    assert "INTENT_REDIS_URL" in str(refused.value)
    assert "store=MemoryStore()" in str(refused.value)
    # Asked for by name, a private breaker works.
    assert CircuitBreaker("payments", store=MemoryStore()).call(lambda: "paid") == "paid"


def test_the_breakers_metrics_go_to_the_teams_own_registry() -> None:
    registry, store = CollectorRegistry(), MemoryStore()
    counter = register_metrics(registry, store, breakers=["payments"])
    config = CircuitConfig(failure_threshold=2, min_throughput=2)
    breaker = CircuitBreaker("payments", config, store=store, listeners=[counter])
    before = generate_latest(registry).decode()
    # Known label values are there before anything happens.
    assert (
        'intent_circuit_breaker_transitions_total{breaker="payments",from_state="closed",'
        'to_state="open"} 0.0' in before
    )
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(_refused)
    text = generate_latest(registry).decode()
    assert (
        'intent_circuit_breaker_transitions_total{breaker="payments",from_state="closed",'
        'to_state="open"} 1.0' in text
    )
    assert 'intent_circuit_breaker_state{breaker="payments",state="open"} 1.0' in text
    assert 'intent_circuit_breaker_window_failures{breaker="payments"}' in text
    assert "intent_circuit_breaker_store_up 1.0" in text
    # Nothing of the pipeline's own families is in the team's registry.
    assert "intent_analyses_finished" not in text


def test_a_transition_listener_hands_each_state_change_to_its_callable() -> None:
    heard: list[tuple[str, str, str]] = []
    store = MemoryStore()
    config = CircuitConfig(failure_threshold=2, min_throughput=2)
    listener = TransitionListener(lambda *change: heard.append(change))
    breaker = CircuitBreaker("payments", config, store=store, listeners=[listener])
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(_refused)
    assert heard == [("payments", "closed", "open")]
    # A state reported unchanged is no transition.
    listener.state_change(breaker, CircuitState("open"), CircuitState("open"))
    assert heard == [("payments", "closed", "open")]


def _refused() -> None:
    raise ConnectionError("connection refused")
