"""The store contract on Redis, shared by the fleet: each primitive is one packaged Lua script
(``intent/lua/breaker``), registered once, with Redis ``TIME`` as the clock."""

from __future__ import annotations

import json
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar, cast

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from intent import resp, scripts
from intent.breaker.config import CircuitConfig
from intent.breaker.stores.base import (
    Action,
    Admission,
    BreakerStore,
    Denial,
    Outcome,
    Report,
    Snapshot,
    StoreError,
    StoreUnavailable,
    Ticket,
    TicketKind,
    Transition,
)
from intent.connections import breaker_client as breaker_redis_client
from intent.forks import after_fork_in_child
from intent.keys import BREAKER_PARTS, Keys
from intent.settings import CIRCUIT_REDIS_SOCKET_TIMEOUT, SENTINEL_MASTER

T = TypeVar("T")

# The primitives' scripts: intent/lua/breaker/NAME.lua, each with the shared prelude (helpers
# and key layout) in front.
SCRIPT_FAMILY = "breaker"
SCRIPT_PRELUDE = "_common"

# Errors that mean "Redis is not there right now" (BusyLoadingError is a ConnectionError;
# a replica promoted mid-failover answers READONLY for a moment).
_UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ReadOnlyError)


@dataclass(frozen=True)
class BreakerKeys:
    """One breaker's keys. All share the hash tag ``{<prefix>cb:NAME}`` (one Cluster slot)."""

    state: str  # hash: state, generation, until, forced, reason, ...; durable (no TTL)
    failures: str  # zset of failure times in the window; TTL failure_window
    calls: str  # hash: window bucket -> calls; TTL failure_window plus two buckets
    leases: str  # zset: slot -> lease expiry of a call or trial; TTL the longest lease
    permits: str  # zset: slot -> lease expiry of a call admitted while failures pend; same
    slow: str  # hash: window bucket -> calls that finished slow; TTL as calls

    @classmethod
    def of(cls, keys: Keys, name: str) -> BreakerKeys:
        return cls(*(keys.breaker_key(name, part) for part in BREAKER_PARTS))

    def as_list(self) -> list[str]:
        return [self.state, self.failures, self.calls, self.leases, self.permits, self.slow]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _seconds(value: float) -> bytes:
    return repr(float(value)).encode()


@lru_cache(maxsize=256)
def _acquire_args(config: CircuitConfig) -> tuple[bytes, ...]:
    """The config part of acquire's arguments, encoded once per config."""
    return (
        str(config.failure_threshold).encode(),
        str(config.min_throughput).encode(),
        _seconds(config.failure_window),
        _seconds(config.recovery_timeout),
        _seconds(config.half_open_timeout),
        str(config.half_open_max_calls).encode(),
        _seconds(config.throttle_wait),
        _seconds(config.slow_call_duration),
        _seconds(config.failure_rate_threshold),
        _seconds(config.slow_call_rate_threshold),
        *_break_args(config),
        str(config.max_concurrent_calls).encode(),
    )


def _break_args(config: CircuitConfig) -> tuple[bytes, ...]:
    return (
        _seconds(config.break_factor),
        _seconds(config.break_max),
        _seconds(config.break_jitter),
    )


@lru_cache(maxsize=256)
def _report_args(config: CircuitConfig) -> tuple[bytes, ...]:
    return (
        str(config.failure_threshold).encode(),
        str(config.min_throughput).encode(),
        _seconds(config.failure_window),
        _seconds(config.recovery_timeout),
        str(config.success_threshold).encode(),
        _seconds(config.half_open_timeout),
        _seconds(config.slow_call_duration),
        _seconds(config.failure_rate_threshold),
        _seconds(config.slow_call_rate_threshold),
        *_break_args(config),
    )


def _number(value: str) -> float | None:
    return float(value) if value else None


def _count(value: str) -> int | None:
    return int(value) if value else None


class _ScriptRunner:
    """EVALSHA over the store's own idle connections.

    redis-py's per-command path (pool checkout with a readiness poll, retry wrapper,
    observability hooks) costs more CPU than the round trip itself on a small machine, and
    under the threads pool the GIL serialises that CPU across every call. Connections wait in
    a deque (pop and append are atomic: no lock); one that fails is dropped; a forked child
    starts with none, never writing to its parent's sockets.
    """

    def __init__(self, client: redis.Redis, pool: redis.ConnectionPool):
        self._client = client
        self._pool = pool
        self._idle: deque[resp.RawConnection] = deque()
        after_fork_in_child(self, _forget_connections)

    def evalsha(self, script: Script, request: bytes) -> Any:
        try:
            return self._send(request)
        except NoScriptError:  # a restarted or flushed server: load it, once
            self._client.script_load(script.script)
            return self._send(request)

    def _send(self, request: bytes) -> Any:
        try:
            connection, reused = self._idle.pop(), True
        except IndexError:
            connection, reused = resp.RawConnection.outside(self._pool), False
        try:
            return self._exchange(connection, request)
        except redis.ConnectionError:
            # After a server restart every idle connection is stale: drop them all, and try
            # once on a fresh one rather than report an outage that is already over.
            self.close()
            if not reused:
                raise
        return self._exchange(resp.RawConnection.outside(self._pool), request)

    def _exchange(self, connection: resp.RawConnection, request: bytes) -> Any:
        try:
            connection.send(request)
            reply = connection.read()
        except redis.ResponseError:
            self._idle.append(connection)  # the whole error reply was read: still usable
            raise
        except BaseException:
            connection.disconnect()
            raise
        self._idle.append(connection)
        return reply

    def close(self) -> None:
        while self._idle:
            try:
                self._idle.pop().disconnect()
            except IndexError:  # another thread took the last one
                break


def _decode(reply: Any) -> tuple[Snapshot, Transition | None, list[str]]:
    """The common reply of every script (see ``_common.lua``), and the script's own fields."""
    fields: list[str] = json.loads(reply)
    snapshot = Snapshot(
        state=fields[0],
        generation=int(fields[1]),
        now=float(fields[2]),
        until=_number(fields[3]),
        opened_at=_number(fields[4]),
        forced=fields[5] or None,
        reason=fields[6],
        suspect=fields[7] == "1",
        failures=_count(fields[8]),
        calls=_count(fields[9]),
        in_flight=_count(fields[10]),
        trips=int(fields[14]),
        bulkhead=_count(fields[15]),
    )
    transition = None
    if fields[11]:
        transition = Transition(fields[11], fields[12], fields[13], snapshot.generation)
    return snapshot, transition, fields[16:]


class RedisStore(BreakerStore):
    """Breaker state in Redis. Connection failures surface as :class:`StoreUnavailable`."""

    def __init__(self, client: redis.Redis, prefix: str = Keys.prefix):
        self.origin = f"redis:{uuid.uuid4().hex[:8]}"
        self.client = client
        self._keys = Keys(prefix)
        self._acquire = self._script("acquire")
        self._report = self._script("report")
        self._snapshot = self._script("snapshot")
        self._transition = self._script("transition")
        # Names this process has put in the registry (a forked child starts afresh).
        self._registered: set[str] = set()
        self._lock = threading.Lock()
        after_fork_in_child(self, _forget_registered)
        self._key_lists: dict[str, list[str]] = {}
        # acquire's request, all but the slot, per breaker and config
        self._acquire_frames: dict[tuple[str, CircuitConfig], tuple[bytes, bytes]] = {}
        pool = resp.plain_pool(client)
        # Clients without a plain connection pool (Redis Cluster) go through redis-py.
        self._runner = _ScriptRunner(client, pool) if pool is not None else None

    @classmethod
    def from_url(
        cls,
        url: str,
        prefix: str = Keys.prefix,
        socket_timeout: float = CIRCUIT_REDIS_SOCKET_TIMEOUT,
        sentinel_master: str = SENTINEL_MASTER,
    ) -> RedisStore:
        return cls(breaker_redis_client(url, socket_timeout, sentinel_master), prefix)

    def _script(self, name: str) -> Script:
        return scripts.register(self.client, name, SCRIPT_FAMILY, SCRIPT_PRELUDE)

    def keys(self, name: str) -> BreakerKeys:
        return BreakerKeys.of(self._keys, name)

    # -- the contract ----------------------------------------------------------------
    def acquire(
        self,
        name: str,
        slot: str,
        config: CircuitConfig,
        probe: bool = False,
        slow: Ticket | None = None,
    ) -> Admission:
        previous = b""
        if slow is not None and slow.origin == self.origin:  # a ticket of another store: no
            previous = f"{slow.generation}:{slow.bucket}".encode()
        if probe:  # rare (a version check, a health probe): the plain path
            reply = self._call(self._acquire, name, [slot, previous, *_acquire_args(config), b"1"])
        elif self._runner is None:
            reply = self._call(self._acquire, name, [slot, previous, *_acquire_args(config)])
        else:
            frame = self._acquire_frames.get((name, config))
            if frame is None:
                args = _acquire_args(config)
                head = resp.evalsha_head(self._acquire.sha, self._key_list(name), 2 + len(args))
                frame = self._acquire_frames[(name, config)] = (
                    head,
                    b"".join(resp.bulk(arg) for arg in args),
                )
            head, tail = frame
            runner = self._runner
            request = head + resp.bulk(slot.encode()) + resp.bulk(previous) + tail
            reply = self._guard(lambda: runner.evalsha(self._acquire, request))
        snapshot, transition, (verdict, what, until, bucket, fresh) = _decode(reply)
        if fresh == "1" or name not in self._registered:
            self._register(name, again=fresh == "1")
        if verdict == "ticket":
            ticket = Ticket(snapshot.generation, TicketKind(what), int(bucket), self.origin)
            return Admission(snapshot, ticket=ticket, transition=transition)
        return Admission(snapshot, denial=Denial(what), until=_number(until), transition=transition)

    def report(
        self, name: str, slot: str, ticket: Ticket, outcome: Outcome, config: CircuitConfig
    ) -> Report:
        args = [
            slot,
            ticket.generation,
            outcome.value,
            ticket.bucket,
            b"1" if ticket.slow else b"0",
            *_report_args(config),
        ]
        snapshot, transition, (applied,) = _decode(self._call(self._report, name, args))
        return Report(snapshot, applied=applied == "1", transition=transition)

    def snapshot(self, name: str, config: CircuitConfig | None = None) -> Snapshot:
        window = repr(float(config.failure_window)) if config else ""
        snapshot, _, _ = _decode(self._call(self._snapshot, name, [window]))
        return snapshot

    def transition(
        self, name: str, action: Action, reason: str, config: CircuitConfig | None = None
    ) -> Report:
        window = repr(float(config.failure_window)) if config else ""
        recovery = repr(float(config.recovery_timeout)) if config else ""
        args = [action.value, reason, window, recovery]
        snapshot, transition, _ = _decode(self._call(self._transition, name, args))
        self._register(name, again=False)
        return Report(snapshot, applied=True, transition=transition)

    def names(self) -> list[str]:
        members = self._guard(lambda: self.client.smembers(self._keys.breaker_registry))
        return sorted(_text(member) for member in cast("set[bytes | str]", members))

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
        self.client.close()

    # -- plumbing --------------------------------------------------------------------
    def _key_list(self, name: str) -> list[str]:
        keys = self._key_lists.get(name)
        if keys is None:
            keys = self._key_lists[name] = self.keys(name).as_list()
        return keys

    def _call(self, script: Script, name: str, args: list[Any]) -> Any:
        keys = self._key_list(name)
        runner = self._runner
        if runner is None:
            return self._guard(lambda: script(keys=keys, args=args))
        request = resp.evalsha_head(script.sha, keys, len(args)) + b"".join(
            resp.bulk(resp.encode(arg)) for arg in args
        )
        return self._guard(lambda: runner.evalsha(script, request))

    def _register(self, name: str, again: bool) -> None:
        """Add the name to the operators' registry once per process (and again when Redis
        lost the breaker's state, e.g. after a restart). The registry is another slot."""
        with self._lock:
            if name in self._registered and not again:
                return
        self._guard(lambda: self.client.sadd(self._keys.breaker_registry, name))
        with self._lock:
            self._registered.add(name)

    @staticmethod
    def _guard(operation: Callable[[], T]) -> T:
        try:
            return operation()
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"redis unreachable: {exc}") from exc
        except redis.RedisError as exc:
            raise StoreError(f"redis error: {exc}") from exc


def _forget_connections(runner: _ScriptRunner) -> None:
    runner._idle = deque()  # the parent's sockets: never written to from a child


def _forget_registered(store: RedisStore) -> None:
    store._registered, store._lock = set(), threading.Lock()
