"""A Redis that cannot be reached is the tree's ServiceUnavailableError("redis") where Redis
is called (cache, detector, waiting room), not something the task layer translates."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis

from intent.cache import ContextCache
from intent.connections import data_client
from intent.detection import PatternDetector, Rules
from intent.errors import ServiceUnavailableError
from intent.keys import Keys
from intent.models import Context, PredictionSet
from intent.settings import Settings
from intent.waiting import Lane, WaitingRoom, patiently

# Nothing listens on port 1: each call is refused at once (no server, no wait).
DOWN = Settings(redis_url="redis://127.0.0.1:1/0", redis_socket_timeout=0.2)
KEYS = Keys("test:")


@pytest.fixture
def client() -> redis.Redis:
    return data_client(DOWN)


def calls(client: redis.Redis) -> dict[str, Callable[[], Any]]:
    cache = ContextCache(client, KEYS, 60, 600)
    detector = PatternDetector(client, KEYS, Rules(0.6, 0.1), 60)
    room = WaitingRoom(client, KEYS, [Lane("predict", "prediction-service", 1.0)])
    context = Context(context_id="c1", version="1", attributes={}, updated_at="2026-01-01")
    predictions = PredictionSet(pattern_id="p1", predictions=[], model_version="m1")
    return {
        "cache get": lambda: cache.get("c1"),
        "cache put": lambda: cache.put(context),
        "cache invalidate": lambda: cache.invalidate("c1"),
        "last predictions": lambda: detector.last_predictions("c1", "p1"),
        "detect": lambda: detector.detect("r1", "c1", "p1", predictions, "hash"),
        "park": lambda: room.park("predict", "t1", "{}", due=0.0, reason="test"),
        "release": lambda: room.release("predict", "free"),
        "wake": lambda: room.wake("prediction-service"),
        "done": lambda: room.done("predict", ["t1"]),
        "find": lambda: room.find("t1"),
        "depth": lambda: room.depth(),
    }


@pytest.mark.parametrize("name", list(calls(data_client(DOWN))))
def test_each_redis_call_raises_the_trees_transient_error(client: redis.Redis, name: str) -> None:
    with pytest.raises(ServiceUnavailableError) as info:
        calls(client)[name]()
    error = info.value
    assert error.service == "redis" and error.transient
    assert isinstance(error.__cause__, redis.ConnectionError)  # the cause is kept
    assert "ConnectionError" in error.reason


def test_patiently_retries_a_lost_redis_then_raises_the_trees_error() -> None:
    attempts: list[float] = []
    slept: list[float] = []

    def lost() -> None:
        attempts.append(1)
        raise redis.TimeoutError("no reply")

    with pytest.raises(ServiceUnavailableError, match="parking a step: TimeoutError"):
        patiently(lost, 0.35, "parking a step", sleep=slept.append)
    assert slept == [0.1, 0.2] and len(attempts) == 3


def test_patiently_returns_once_redis_is_back() -> None:
    replies = iter([redis.ConnectionError("restarting"), 7])

    def flaky() -> int:
        reply = next(replies)
        if isinstance(reply, Exception):
            raise reply
        return reply

    assert patiently(flaky, 5.0, sleep=lambda _: None) == 7


def test_an_error_that_is_not_an_outage_is_not_dressed_as_one() -> None:
    def wrong() -> None:
        raise redis.ResponseError("WRONGTYPE")

    with pytest.raises(redis.ResponseError):
        patiently(wrong, 5.0, sleep=lambda _: None)
