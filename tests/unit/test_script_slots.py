"""Every Lua script's keys hash to one Redis Cluster slot, as the code builds them.

Each call site runs for real on a client that records the script calls instead of sending
them (``Recorder``): the keys are the ones the code passes, built by ``intent.keys`` with
several prefixes and ids, braces and colons included. A call whose keys span two slots
would be refused by a cluster (CROSSSLOT). A script added under ``intent/lua/`` without a
call site here fails ``test_every_script_is_covered``.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from redis.cluster import key_slot

from intent import scripts
from intent.breaker import CircuitConfig
from intent.breaker.stores.base import Action, Outcome, Ticket, TicketKind
from intent.breaker.stores.redis import SCRIPT_FAMILY, SCRIPT_PRELUDE, RedisStore
from intent.budget import RetryBudget
from intent.detection import PatternDetector, Rules
from intent.events.deadletter import DeadLetters
from intent.events.idempotency import Idempotency
from intent.events.publisher import EventPublisher
from intent.health import COMPONENTS, HealthChecker
from intent.keys import Keys
from intent.models import Event, IntentEvent, PredictionSet
from intent.pipeline import intake
from intent.settings import load_settings
from intent.waiting import FREE, Lane, WaitingRoom

LUA = Path(__file__).resolve().parents[2] / "intent" / "lua"
PREFIXES = ("intent:", "svc.eu-1:", "a:b:")
# Ids as callers may send them: colons, braces (a hash tag's delimiters), both.
IDS = ("ctx-1", "a:b:c", "{x}", "}{", "p}1{", "{", "}")


class Stop(BaseException):
    """Raised by a recorded script call: the call site's keys are known, nothing runs."""


class Recorder:
    """A stand-in client: scripts registered on it record each call's keys, then raise
    :class:`Stop`; a pipeline answers as an empty Redis would."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.replies: dict[str, Any] = {}  # a script named here answers this, not Stop

    def register_script(self, source: str) -> RecordedScript:
        return RecordedScript(self, script_name(source))

    def pipeline(self, transaction: bool = True) -> Recorder:
        return self

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def get(self, key: str) -> None:
        pass

    def hgetall(self, key: str) -> None:
        pass

    def execute(self) -> list[Any]:
        return [None, {}]


class RecordedScript:
    def __init__(self, recorder: Recorder, name: str):
        self.recorder, self.name = recorder, name
        self.sha = "0" * 40

    def __call__(self, keys: list[str], args: list[Any], client: Any = None) -> Any:
        self.recorder.calls.append((self.name, list(keys)))
        if self.name in self.recorder.replies:
            return self.recorder.replies.pop(self.name)
        raise Stop


@functools.cache
def every_script() -> dict[str, str]:
    """Each packaged script's source as Redis runs it, by name (``family/name`` for a
    family's), its prelude in front; the preludes are no scripts of their own."""
    found = {path.stem: scripts.script_source(path.stem) for path in LUA.glob("*.lua")}
    for path in (LUA / SCRIPT_FAMILY).glob("*.lua"):
        if path.stem != SCRIPT_PRELUDE:
            source = scripts.script_source(path.stem, SCRIPT_FAMILY, SCRIPT_PRELUDE)
            found[f"{SCRIPT_FAMILY}/{path.stem}"] = source
    return found


def script_name(source: str) -> str:
    names = [name for name, text in every_script().items() if text == source]
    assert len(names) == 1, "a script that is not one of intent/lua/"
    return names[0]


CONFIG = CircuitConfig()


def _call_sites(keys: Keys, one: str, other: str) -> Iterator[Callable[[Recorder], Any]]:
    """Each way the service calls a script, with ``one``/``other`` as its ids."""
    prefix = keys.prefix
    settings = load_settings(key_prefix=prefix, redis_url="redis://127.0.0.1:1/0")
    rt = SimpleNamespace(keys=keys, settings=settings)

    def runtime(client: Recorder) -> Any:
        rt.redis = client
        return rt

    yield lambda c: intake.claim_request(runtime(c), one, other)
    yield lambda c: intake.give_back(runtime(c), one, other)
    predictions = PredictionSet(pattern_id=other, predictions=[], model_version="m1")
    yield lambda c: PatternDetector(c, keys, Rules(0.6, 0.1), 60).detect(  # type: ignore[arg-type]
        other, one, other, predictions, "hash"
    )
    event = Event(
        id=f"evt_{one}",
        type=IntentEvent.CONTEXT_CHANGED,
        pattern_id=other,
        data={"context_id": one},
        timestamp="2025-01-01T00:00:00.000Z",
        request_id=other,
    )
    second = event.model_copy(update={"id": f"evt_{other}"})
    yield lambda c: EventPublisher(c, keys, 100, 60).publish([event, second])  # type: ignore[arg-type]
    yield lambda c: Idempotency(c, keys, ttl=60, lease=5.0).run(event, print, group=one)  # type: ignore[arg-type]

    def failing(c: Recorder) -> None:  # claimed, the action fails: the claim is given back
        c.replies["idempotency_claim"] = [1, 0]
        Idempotency(c, keys, ttl=60, lease=5.0).run(event, _fail, group=one, name=other)  # type: ignore[arg-type]

    yield failing
    yield lambda c: DeadLetters(c, keys, 100).add(one, "1-0", {"id": event.id})  # type: ignore[arg-type]
    yield lambda c: DeadLetters(c, keys, 100).requeue("1-0")  # type: ignore[arg-type]
    # The same scripts on a partition above 0 (INTENT_EVENT_PARTITIONS): its own keys.
    yield lambda c: EventPublisher(c, keys, 100, 60, partitions=4).publish(  # type: ignore[arg-type]
        [
            event,
            second,
            *(
                event.model_copy(update={"id": f"evt_{i}", "data": {"context_id": f"c{i}"}})
                for i in range(8)
            ),
        ]
    )
    yield lambda c: DeadLetters(c, keys, 100, partitions=4).add(  # type: ignore[arg-type]
        one, "1-0", {"id": event.id}, partition=3
    )
    yield lambda c: DeadLetters(c, keys, 100, partitions=4).requeue("1-0", partition=3)  # type: ignore[arg-type]
    yield lambda c: RetryBudget(c, keys, 30, 20, 1, 10).spend(one)  # type: ignore[arg-type]

    def room(c: Recorder) -> WaitingRoom:
        lanes = [Lane(one, other, 1.0), Lane(other, one, 1.0)]
        return WaitingRoom(c, keys, lanes, lease=60, batch=10)  # type: ignore[arg-type]

    yield lambda c: room(c).park(one, other, "{}", due=1.0, reason="retry", release_by=2.0)
    yield lambda c: room(c).release_all({one: (FREE, None), other: (FREE, None)})
    yield lambda c: room(c).done(one, [other])
    yield lambda c: room(c).wake(other)
    yield lambda c: HealthChecker(settings, c, keys, None, None)._store(  # type: ignore[arg-type]
        {component: {"status": "ok"} for component in COMPONENTS}
    )

    def store(c: Recorder) -> RedisStore:
        return RedisStore(c, prefix)  # type: ignore[arg-type]

    ticket = Ticket(1, TicketKind.CALL, 0, "x")
    yield lambda c: store(c).acquire(one, other, CONFIG)
    yield lambda c: store(c).acquire(one, other, CONFIG, probe=True)
    yield lambda c: store(c).report(one, other, ticket, Outcome.FAILURE, CONFIG)
    yield lambda c: store(c).snapshot(one)
    yield lambda c: store(c).transition(one, Action.RESET, "r")


def _fail(event: Event) -> None:
    raise RuntimeError("the handler failed")


def recorded_calls() -> list[tuple[str, str, list[str]]]:
    """(script, where, keys) of every call site, for every prefix and pair of ids."""
    calls: list[tuple[str, str, list[str]]] = []
    for prefix, (one, other) in itertools.product(PREFIXES, itertools.permutations(IDS, 2)):
        for site in _call_sites(Keys(prefix), one, other):
            recorder = Recorder()
            with pytest.raises(Stop):
                site(recorder)
            assert recorder.calls, "the call site called no script"
            calls += [(name, f"{prefix!r} {one!r} {other!r}", k) for name, k in recorder.calls]
    return calls


Calls = list[tuple[str, str, list[str]]]


@pytest.fixture(scope="module")
def calls() -> Calls:
    return recorded_calls()


def test_every_scripts_keys_hash_to_one_slot(calls: Calls) -> None:
    spread = [
        (name, where, keys, sorted({key_slot(key.encode()) for key in keys}))
        for name, where, keys in calls
        if len({key_slot(key.encode()) for key in keys}) > 1
    ]
    assert spread == []


def test_every_script_is_covered(calls: Calls) -> None:
    called = {name for name, _, _ in calls}
    assert sorted(set(every_script()) - called) == []


def test_a_call_with_keys_of_two_slots_would_be_seen(calls: Calls) -> None:
    # The control: keys without a shared tag land in different slots here.
    keys = Keys()
    assert key_slot(keys.events_stream.encode()) != key_slot(keys.dead_tasks.encode())
    assert len({key_slot(k.encode()) for _, _, ks in calls for k in ks}) > 1
