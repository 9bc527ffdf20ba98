"""The waiting room's scripts on a real Redis."""

from __future__ import annotations

import pytest
import redis

from intent.keys import Keys
from intent.waiting import Lane, WaitingRoom

pytestmark = pytest.mark.integration


def test_wake_makes_due_only_the_steps_that_wait_for_the_breaker(
    redis_client: redis.Redis,
) -> None:
    room = WaitingRoom(redis_client, Keys(), [Lane("get_context", "context-service", 0.0)])
    now = 1_000_000.0
    room.park(
        "get_context",
        "a.fetch_context",
        "{}",
        due=now + 60,
        reason="open",
        now=now,
        for_breaker=True,
    )
    room.park("get_context", "b.fetch_context", "{}", due=now + 60, reason="retry 1 of 3", now=now)
    room.park(
        "get_context",
        "c.fetch_context",
        "{}",
        due=now + 0.5,
        reason="open",
        now=now,
        for_breaker=True,
    )
    assert room.wake("prediction-service", at=now + 1) == 0  # not its breaker
    assert room.wake("context-service", at=now + 1) == 1  # c is due sooner already
    due = {
        step: room.find(step).due
        for step in ("a.fetch_context", "b.fetch_context", "c.fetch_context")
    }
    assert due == {
        "c.fetch_context": now + 0.5,
        "a.fetch_context": now + 1,
        "b.fetch_context": now + 60,
    }
