"""One breaker store per process: every user of the settings-built store shares it (and so,
while Redis is down, one fallback), and a forked child builds its own."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from intent.breaker import CircuitAdmin, CircuitBreaker, FallbackStore
from intent.breaker.registry import default_store
from intent.runtime import get_runtime, reset_runtime

# Nothing listens on port 1: every Redis call is refused at once, as in an outage.
DOWN = "redis://127.0.0.1:1/0"


@pytest.fixture
def redis_down(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("INTENT_REDIS_URL", DOWN)
    reset_runtime()
    yield
    reset_runtime()


def _fallback_store(store: object) -> FallbackStore:
    assert isinstance(store, FallbackStore)
    return store


def test_every_user_in_a_process_gets_the_same_store_and_fallback_while_redis_is_down(
    redis_down: None,
) -> None:
    standalone = CircuitBreaker("payments")  # given no store: the settings-built one
    runtime = get_runtime()
    pipeline = runtime.breaker("payments")
    assert standalone.call(lambda: "paid") == "paid"  # Redis refused: runs on the fallback
    assert pipeline.call(lambda: "paid") == "paid"

    store = _fallback_store(runtime.breaker_store)
    assert standalone.store is store
    assert pipeline.store is store
    assert default_store() is store
    assert store.degraded
    # One memory of the outage: both users' calls are counted in the same fallback.
    assert store.fallback.snapshot("payments").calls == 2
    # The operators' view is over the same store's shared state, never its fallback.
    assert runtime.circuits.store is store.primary
    assert CircuitAdmin(store).store is store.primary


def test_a_forked_child_gets_a_fresh_store(redis_down: None) -> None:
    breaker = CircuitBreaker("payments")
    assert breaker.call(lambda: "paid") == "paid"
    parent = _fallback_store(default_store())
    assert breaker.store is parent and parent.degraded

    pid = os.fork()
    if pid == 0:  # the child: report by exit code, never return into pytest
        code = 1
        try:
            child = _fallback_store(default_store())
            fresh = child is not parent and child.fallback is not parent.fallback
            if fresh and not child.degraded and child.fallback.names() == []:
                same = breaker.store is child and get_runtime().breaker_store is child
                code = 0 if same and default_store() is child else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert default_store() is parent  # the parent keeps its own
