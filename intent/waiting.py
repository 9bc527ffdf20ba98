"""Steps waiting to run again, parked in Redis rather than in the broker's delayed messages.

A step that must wait (a retry's backoff, an open breaker, a full downstream limit) parks
its next message here, in the lane of the endpoint it will call, and ends. Releasers (one
in each worker's main process, see ``tasks/release.py``) take what is due and publish it:

- at the pace the lane's shared rate limit admits (a token bucket every releaser shares),
  while the lane's breaker is closed; one trial at a time while it is half-open; nothing
  while it is open: the recovering service is not stampeded;
- a step past its analysis's deadline at once, whatever the breaker says: it expires
  without calling out;
- each under a lease: a releaser that dies or cannot publish lets it go back to waiting.

Nothing waits in a worker's memory (Celery's Redis transport keeps every ETA message in the
worker that fetched it), and no message stays unacknowledged for a wait, so the broker's
visibility timeout only has to cover one run and a dead worker's work returns in about
that time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, TypeVar, cast

import redis

from intent import scripts
from intent.connections import on_cluster, redis_errors
from intent.errors import ServiceUnavailableError
from intent.keys import WAITING_PARTS, Keys

T = TypeVar("T")

FREE, PACED, HELD = "free", "paced", "held"
OTHER = "other"  # the lane of steps that wait for no downstream (Redis was away, say)


@dataclass(frozen=True)
class Lane:
    """Where steps wait for one endpoint: the breaker guarding it (None: no downstream)
    and the fleet-wide pace of releases (per second; 0: unpaced). A pace admits one
    second's worth at once after a quiet spell (at least one)."""

    name: str
    service: str | None = None
    rate: float = 0.0


@dataclass(frozen=True)
class Waiting:
    """One parked step, for operators and ``intent submit``'s timeout message."""

    task_id: str
    lane: str
    reason: str
    due: float
    parked_at: float
    release_by: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Released:
    """What one release call took: the messages to publish, and what is left waiting."""

    lane: str
    messages: list[tuple[str, str]]  # (step id, message)
    waiting: int
    next_due: float | None


class WaitingRoom:
    """The lanes' parked steps in Redis; every change is one script over one lane's keys."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        lanes: Iterable[Lane],
        *,
        lease: float = 60.0,
        batch: int = 100,
    ):
        self.client = client
        self.keys = keys
        self.lanes: dict[str, Lane] = {lane.name: lane for lane in lanes}
        self.lanes.setdefault(OTHER, Lane(OTHER))
        self.lease = lease  # must outlast a publish's retries
        self.batch = batch
        self._park = scripts.register(client, "wait_park")
        self._release = scripts.register(client, "wait_release")
        self._done = scripts.register(client, "wait_done")
        self._wake = scripts.register(client, "wait_wake")

    def lane(self, name: str) -> Lane:
        return self.lanes.get(name) or self.lanes[OTHER]

    def _keys(self, lane: str, *parts: str) -> list[str]:
        return [self.keys.waiting(lane, part) for part in parts]

    def park(
        self,
        lane: str,
        task_id: str,
        message: str,
        *,
        due: float,
        reason: str,
        release_by: float | None = None,
        now: float | None = None,
        patience: float = 0.0,
        for_breaker: bool = False,
    ) -> int:
        """Keep ``message`` until ``due`` (epoch seconds), and until ``release_by`` at the
        latest whatever its lane's breaker says (its analysis's deadline, or the end of its
        deferral budget); returns how many wait in the lane. A step that waits
        ``for_breaker`` is due at once when an operator resets or closes it (:meth:`wake`).

        A Redis that cannot be reached is tried again for up to ``patience`` seconds (a
        restart), then ``ServiceUnavailableError("redis")`` is raised."""
        name = self.lane(lane).name
        entry = {
            "message": message,
            "reason": reason,
            "due": due,
            "parked_at": time.time() if now is None else now,
            "release_by": release_by,
            "breaker": for_breaker,
        }
        keys = self._keys(name, "due", "entries", "leased", "deadlines")
        by = "" if release_by is None else repr(release_by)
        args = [task_id, repr(due), by, json.dumps(entry)]
        return int(patiently(lambda: self._park(keys=keys, args=args), patience, "parking a step"))

    def release(self, lane: str, mode: str, rate: float | None = None) -> Released:
        """Take what may run now in ``lane``: ``mode`` FREE (all that is due), PACED (at
        ``rate`` per second fleet-wide, default the lane's; a breaker's trial calls while it
        is half-open), HELD (none but those past their deadline or deferral budget)."""
        (released,) = self.release_all({lane: (mode, rate)})
        return released

    @redis_errors("releasing waiting steps")
    def release_all(self, modes: Mapping[str, tuple[str, float | None]]) -> list[Released]:
        """:meth:`release` for several lanes in one round trip."""
        # One round trip for every lane; a cluster client runs no script in a pipeline (the
        # lanes are in different slots anyway): there, a call per lane.
        together = not on_cluster(self.client)
        with self.client.pipeline(transaction=False) as pipe:
            names, replies = [], []
            for lane, (mode, rate) in modes.items():
                spec = self.lane(lane)
                rate = spec.rate if rate is None else rate
                if mode == PACED and rate <= 0:
                    mode = FREE
                keys = self._keys(spec.name, *WAITING_PARTS[:4], "pace")
                burst = max(1.0, rate)
                args: list[str | int] = [
                    mode,
                    self.batch,
                    repr(rate),
                    repr(burst),
                    repr(self.lease),
                ]
                names.append(spec.name)
                if together:
                    self._release(keys=keys, args=args, client=pipe)
                else:
                    replies.append(self._release(keys=keys, args=args))
            if together:
                replies = pipe.execute()
        return [_released(name, reply) for name, reply in zip(names, replies, strict=True)]

    @redis_errors("waking the steps that wait for a breaker")
    def wake(self, service: str, at: float | None = None) -> int:
        """Make due ``at`` (default: now) the steps that wait for ``service``'s breaker and
        are due later, in every lane it guards (an operator reset or closed it); returns
        how many."""
        when = repr(time.time() if at is None else at)
        woken = 0
        for lane in self.lanes.values():
            if lane.service == service:
                keys = self._keys(lane.name, "due", "entries")
                woken += int(self._wake(keys=keys, args=[when]))
        return woken

    @redis_errors("forgetting published steps")
    def done(self, lane: str, task_ids: Iterable[str]) -> int:
        """Forget published steps (not those parked again meanwhile)."""
        ids = list(task_ids)
        if not ids:
            return 0
        keys = self._keys(self.lane(lane).name, "entries", "leased", "deadlines")
        return int(self._done(keys=keys, args=ids))

    @redis_errors("finding a waiting step")
    def find(self, task_id: str) -> Waiting | None:
        """The step ``task_id`` if it is parked, in whichever lane."""
        for name in self.lanes:
            raw = self.client.hget(self.keys.waiting(name, "entries"), task_id)
            if raw is not None:
                entry: Mapping[str, Any] = json.loads(_text(raw))
                due = cast(
                    "float | None", self.client.zscore(self.keys.waiting(name, "due"), task_id)
                )
                return Waiting(
                    task_id=task_id,
                    lane=name,
                    reason=str(entry["reason"]),
                    due=float(entry["due"] if due is None else due),
                    parked_at=float(entry["parked_at"]),
                    release_by=entry.get("release_by"),
                )
        return None

    @redis_errors("counting waiting steps")
    def depth(self) -> dict[str, int]:
        """Steps waiting (or leased to a releaser) in each lane."""
        with self.client.pipeline(transaction=False) as pipe:
            for name in self.lanes:
                pipe.hlen(self.keys.waiting(name, "entries"))
            counts = pipe.execute()
        return {name: int(count) for name, count in zip(self.lanes, counts, strict=True)}


def _released(lane: str, reply: Any) -> Released:
    first, waiting, *flat = (_text(part) for part in reply)
    messages = [(flat[i], json.loads(flat[i + 1])["message"]) for i in range(0, len(flat) - 1, 2)]
    return Released(lane, messages, int(waiting), float(first) if first else None)


def patiently(
    operation: Callable[[], T],
    patience: float,
    what: str = "a waiting-room change",
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``operation()``, tried again while Redis cannot be reached, for up to ``patience``
    seconds (waits of 0.1 s doubling to 2 s): a restart costs a delay, not the work. Then
    ``ServiceUnavailableError("redis")``, saying ``what`` was being done."""
    deadline = time.monotonic() + patience
    wait = 0.1
    while True:
        try:
            with redis_errors(what):
                return operation()
        except ServiceUnavailableError:
            if time.monotonic() + wait > deadline:
                raise
            sleep(wait)
            wait = min(2.0, wait * 2)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
