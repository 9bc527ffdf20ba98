"""Resilience drills: client-side fault injection into the calls to a downstream service.

A drill names a service, the share of its calls to hit (``rate``, 0..1) and what a hit
does: an HTTP error ``status`` (e.g. 503), a ``timeout`` (the error a real timeout
raises), or ``latency`` alone (seconds added before the real request; added before the
error too when given with a status or a timeout). The client applies it inside the
breaker's guard, so the breaker, the retries and the fallbacks meet an injected fault
exactly as a real one (intent/clients.py); the fault is marked as injected in the log,
the metrics and the trace.

A drill is one JSON value per service in Redis (``Keys.drill``) whose TTL ends at the
drill's expiry: it stops by itself, fleet-wide, and no drill outlives
``INTENT_DRILL_MAX_SECONDS``. Each process reads it at most once per
``INTENT_DRILL_REFRESH`` (:class:`DrillSource`), so a call costs no Redis round trip of its
own; while Redis cannot be read there is no drill (never one kept past what was read).
Operators start and stop drills through the admin endpoint or ``intent drills``
(:class:`DrillStore`).
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Annotated, Any, cast

import pydantic
import redis
from pydantic import Field

from intent import codec, validation
from intent.errors import ValidationError
from intent.keys import Keys
from intent.models import SERVICES, DrillKind

log = logging.getLogger("intent.drills")

# The most latency a drill may add to one call: beyond this a drill stalls workers rather
# than exercising anything (a real timeout comes sooner).
MAX_LATENCY = 60.0
# An operator's drill is a handful of small fields.
LIMITS = codec.Limits(max_bytes=4096, max_depth=2, max_string=1024)

Seconds = Annotated[float, Field(allow_inf_nan=False)]


class DrillRequest(pydantic.BaseModel):
    """A drill as an operator asks for it (the admin's ``PUT`` body, ``intent drills
    start``): strict (no field it does not know, no ``true`` for a number, no string for
    one)."""

    model_config = pydantic.ConfigDict(extra="forbid", strict=True, frozen=True)

    rate: Annotated[float, Field(ge=0, le=1)]
    kind: DrillKind
    # The transient failures the resilience policies handle: a 4xx is a permanent refusal
    # (an analysis fails on it, and a bulk route answered 404 is not asked again).
    status: Annotated[int, Field(ge=429, le=599)] | None = None
    latency: Annotated[Seconds, Field(ge=0, le=MAX_LATENCY)] = 0.0
    duration: Annotated[Seconds, Field(gt=0)]
    reason: Annotated[str, Field(max_length=200)] = ""

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> DrillRequest:
        # Named "field: message", as the request models do (intent.validation).
        if self.kind == "status" and (self.status is None or 429 < self.status < 500):
            raise ValueError("status: a status drill needs 429 or a status 500..599")
        if self.kind != "status" and self.status is not None:
            raise ValueError(f"status: only a status drill takes one, not a {self.kind} drill")
        if self.kind == "latency" and self.latency == 0:
            raise ValueError("latency: a latency drill needs seconds above 0")
        return self


@dataclass(frozen=True)
class Drill:
    """One service's drill; ``expires_at`` and ``started_at`` are epoch seconds."""

    service: str
    rate: float
    kind: str  # one of DRILL_KINDS
    expires_at: float
    started_at: float
    status: int | None = None  # the HTTP status of a "status" drill
    latency: float = 0.0  # seconds added to each call it hits
    reason: str = ""

    @classmethod
    def parse(
        cls,
        service: str,
        body: Any,
        now: float,
        max_seconds: float,
        max_latency: float = MAX_LATENCY,
    ) -> Drill:
        """A drill from an operator's request (:class:`DrillRequest`) starting ``now``;
        raises ValidationError naming the first bad field."""
        if service not in SERVICES:
            raise ValidationError("service", f"unknown service {service!r}: one of {SERVICES}")
        asked = validation.parse_model(DrillRequest, body, what="drill", limits=LIMITS)
        if asked.duration > max_seconds:
            raise ValidationError(
                "duration", f"must be at most {max_seconds:g} s (INTENT_DRILL_MAX_SECONDS)"
            )
        if asked.latency >= max_latency:
            raise ValidationError(
                "latency",
                f"must be below {max_latency:g} s: with the slowest call it must end within "
                "a call's lease in the breaker (INTENT_CIRCUIT_HALF_OPEN_TIMEOUT)",
            )
        return cls(
            service,
            asked.rate,
            asked.kind,
            expires_at=now + asked.duration,
            started_at=now,
            status=asked.status,
            latency=asked.latency,
            reason=asked.reason,
        )

    @classmethod
    def loads(cls, raw: str | bytes) -> Drill:
        """A drill as :meth:`dumps` stored it; ValueError when it is not one."""
        try:
            return cls(**json.loads(raw))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"not a stored drill: {exc}") from exc

    def dumps(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        remaining = self.expires_at - (time.time() if now is None else now)
        return {**asdict(self), "remaining": round(max(0.0, remaining), 3)}

    def describe(self) -> str:
        """e.g. ``50% HTTP 503 +0.5 s``: what each call it hits meets."""
        outcome = {"status": f"HTTP {self.status}", "timeout": "timeout"}.get(self.kind, "")
        added = f"+{self.latency:g} s" if self.latency else ""
        return " ".join(part for part in (f"{self.rate:.0%}", outcome, added) if part)

    def hits(self, draw: float) -> bool:
        """Whether a call drawing ``draw`` (uniform in [0, 1)) is hit."""
        return draw < self.rate


class DrillStore:
    """The drills in Redis: what operators start, list and stop, and workers read."""

    def __init__(
        self, client: redis.Redis, keys: Keys, max_seconds: float, max_latency: float = MAX_LATENCY
    ):
        self.client = client
        self.keys = keys
        self.max_seconds = max_seconds
        self.max_latency = max_latency

    def get(self, service: str) -> Drill | None:
        """The service's drill; None when there is none (or it cannot be read as one).
        Redis errors raise."""
        raw = cast("str | bytes | None", self.client.get(self.keys.drill(service)))
        return None if raw is None else self._decoded(service, raw)

    def list(self) -> list[Drill]:
        """The drills running, one per service at most."""
        # A GET per service in one round trip, not MGET: on a Redis Cluster their keys are
        # in different slots, which one MGET may not span.
        with self.client.pipeline(transaction=False) as pipe:
            for service in SERVICES:
                pipe.get(self.keys.drill(service))
            raws = cast("list[str | bytes | None]", pipe.execute())
        found = [self._decoded(s, raw) for s, raw in zip(SERVICES, raws, strict=True) if raw]
        return [drill for drill in found if drill is not None]

    def start(self, service: str, body: Any, now: float | None = None) -> Drill:
        """Validate an operator's request (ValidationError) and run it from now, in place
        of the service's drill if one runs; the key lapses when the drill expires."""
        at = time.time() if now is None else now
        drill = Drill.parse(service, body, at, self.max_seconds, self.max_latency)
        expiry_ms = math.ceil(drill.expires_at * 1000)
        self.client.set(self.keys.drill(service), drill.dumps(), pxat=expiry_ms)
        log.warning(
            "drill started on %s: %s for %g s",
            service,
            drill.describe(),
            drill.expires_at - drill.started_at,
            extra={"service": service, "drill": drill.describe(), "reason": drill.reason},
        )
        return drill

    def stop(self, service: str) -> bool:
        """End the service's drill now; False when none was running."""
        stopped = bool(self.client.delete(self.keys.drill(service)))
        if stopped:
            log.warning("drill stopped on %s", service, extra={"service": service})
        return stopped

    def _decoded(self, service: str, raw: str | bytes) -> Drill | None:
        try:
            return Drill.loads(raw)
        except ValueError as exc:  # never inject what cannot be read as a drill
            log.warning("ignoring the stored drill of %s: %s", service, exc)
            return None


class DrillSource:
    """What each call to a service meets, from a per-process cache of its drill.

    ``read(service)`` (e.g. :meth:`DrillStore.get`) is asked at most once per ``refresh``
    seconds of ``clock`` per service; a drill past its expiry by ``wall`` is over even
    while cached; a read that fails is no drill until the next refresh. ``counted(service,
    kind)`` is told of each fault this source decides to inject (the metrics)."""

    def __init__(
        self,
        read: Callable[[str], Drill | None],
        refresh: float,
        counted: Callable[[str, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        draw: Callable[[], float] = random.random,
    ):
        self._read = read
        self.refresh = refresh
        self._counted = counted
        self._clock = clock
        self._wall = wall
        self._draw = draw
        # service -> (read at, by clock; the drill read).
        self._cache: dict[str, tuple[float, Drill | None]] = {}
        # One thread reads at a time: while it refreshes, the others answer from the entry
        # they have (a first read they wait for), so a process reads once per refresh.
        self._reading = threading.Lock()
        self._unreadable = False

    def current(self, service: str) -> Drill | None:
        """The service's drill as this process knows it (None: no drill)."""
        now = self._clock()
        cached = self._cache.get(service)
        if (cached is None or now - cached[0] >= self.refresh) and self._reading.acquire(
            blocking=cached is None
        ):
            try:
                cached = self._cache.get(service)  # another thread's, read meanwhile
                if cached is None or now - cached[0] >= self.refresh:
                    cached = self._cache[service] = (now, self._fetch(service))
            finally:
                self._reading.release()
        assert cached is not None  # read above, by this thread or the one it waited for
        drill = cached[1]
        if drill is not None and drill.expires_at <= self._wall():
            return None
        return drill

    def __call__(self, service: str) -> Drill | None:
        """The drill when it hits this call to ``service``, else None."""
        drill = self.current(service)
        if drill is None or not drill.hits(self._draw()):
            return None
        if self._counted is not None:
            self._counted(service, drill.kind)
        return drill

    def _fetch(self, service: str) -> Drill | None:
        try:
            drill = self._read(service)
        except redis.RedisError as exc:
            if not self._unreadable:  # once per outage, not once per refresh
                log.warning("drills cannot be read (%s): no drill meanwhile", type(exc).__name__)
            self._unreadable = True
            return None
        self._unreadable = False
        return drill
