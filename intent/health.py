"""Health of everything an analysis needs: the two downstream services (their ``/health``,
and the Context Service's version), Redis, the circuit breakers and the workers.

:class:`HealthChecker` builds a snapshot; the ``intent.health_check`` task stores one every
``INTENT_HEALTH_INTERVAL`` seconds (Redis, with a TTL) and the admin endpoint serves it,
checking anew when the stored one is stale. A component is ``ok``, ``degraded`` (working,
with a breaker open: analyses take fallbacks or wait) or ``down``; the snapshot is ``down``
(HTTP 503) when any component is, and names them in ``failing``. A change of a component's
status is logged once, by whichever checker saw it first.

Workers are found by a probe handed in by the caller (a Celery ping lives in ``tasks/``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis
import requests

from intent.breaker import CircuitAdmin, StoreError
from intent.breaker.policy import HALF_OPEN, OPEN
from intent.clients import ContextServiceClient, Guard, PredictionServiceClient, version_problem
from intent.errors import BulkheadFullError, CircuitOpenError, IntentError
from intent.keys import Keys
from intent.logs import mask_secrets, mask_url
from intent.scripts import register
from intent.settings import Settings

log = logging.getLogger("intent.health")

OK, DEGRADED, DOWN = "ok", "degraded", "down"
COMPONENTS = ("context_service", "prediction_service", "redis", "circuit_breakers", "workers")
_RANK = {OK: 0, DEGRADED: 1, DOWN: 2}
# Breaker states in which calls are refused (analyses fall back or wait).
_REFUSING = frozenset({OPEN, HALF_OPEN})
# What a service's /health may call itself when it is well.
_HEALTHY = frozenset({"ok", "healthy", "up", "pass"})

# How long a stored snapshot that found a component down is served before checking anew.
RECHECK_DOWN_AFTER = 5.0

Component = dict[str, Any]
# Names of the workers that answered a ping within the timeout.
WorkerProbe = Callable[[float], Iterable[str]]


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


class _Unhealthy(IntentError):
    """A /health that answered 5xx: a failure for the service's breaker."""

    def __init__(self, response: requests.Response):
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


def check_service_health(
    url: str,
    timeout: float,
    required_version: str | None = None,
    guard: Guard[requests.Response] | None = None,
) -> Component:
    """``GET {url}/health`` within ``timeout`` seconds (connect and read); with
    ``required_version``, the reported version must be semver-compatible with it. With
    ``guard`` (the service's breaker), the probe is a guarded call: a host that is down
    counts toward its breaker, and an open breaker is reported, not probed."""
    started = time.perf_counter()
    shown = mask_url(url)  # the snapshot is served and logged: no credentials in it

    def probe() -> requests.Response:
        response = requests.get(url.rstrip("/") + "/health", timeout=(timeout, timeout))
        if response.status_code >= 500:
            raise _Unhealthy(response)
        return response

    try:
        response = guard(probe) if guard is not None else probe()
    except _Unhealthy as exc:
        response = exc.response
    except CircuitOpenError as exc:
        until = f" until {exc.until:.3f}" if exc.until is not None else ""
        return {"status": DOWN, "error": f"circuit breaker open{until}: not probed", "url": shown}
    except BulkheadFullError as exc:
        # Every slot is taken by calls in flight: the service is busy, not known to be down.
        return {"status": DEGRADED, "error": f"{exc}: not probed", "url": shown}
    except requests.RequestException as exc:
        return {"status": DOWN, "error": f"{type(exc).__name__}: unreachable", "url": shown}
    component: Component = {
        "url": shown,
        "latency_ms": _ms(started),
        "http_status": response.status_code,
    }
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return {**component, "status": DOWN, "error": "/health did not answer a JSON object"}
    version = str(body.get("version", ""))
    component.update(version=version, api=body.get("api"), reported=body.get("status"))
    reported = body.get("status")
    if response.status_code != 200 or reported not in _HEALTHY | {DEGRADED}:
        return {**component, "status": DOWN, "error": f"reports {reported!r}"}
    if required_version is not None:
        component["required_version"] = required_version
        error = version_problem(version, required_version)
        if error is not None:
            return {**component, "status": DOWN, "error": error}
    return {**component, "status": DEGRADED if reported == DEGRADED else OK}


def check_redis(client: redis.Redis) -> Component:
    started = time.perf_counter()
    try:
        client.ping()
        info: dict[str, Any] = client.info("server")  # type: ignore[assignment]
    except redis.RedisError as exc:
        return {"status": DOWN, "error": mask_secrets(f"{type(exc).__name__}: {exc}")}
    version = info.get("valkey_version") or info.get("redis_version")
    return {"status": OK, "latency_ms": _ms(started), "version": version}


def check_breakers(admin: CircuitAdmin) -> Component:
    """Every breaker's shared state; ``degraded`` while any refuses calls."""
    try:
        statuses = admin.list()
    except StoreError as exc:
        return {"status": DOWN, "error": mask_secrets(f"shared breaker state unreachable: {exc}")}
    breakers = {
        s.name: {
            "state": s.state,
            "forced": s.forced,
            "until": s.until,
            "failures": s.failures,
            "reason": s.reason,
        }
        for s in statuses
    }
    refusing = sorted(name for name, b in breakers.items() if b["state"] in _REFUSING)
    component: Component = {"status": DEGRADED if refusing else OK, "breakers": breakers}
    if refusing:
        component["refusing"] = refusing
    return component


def check_workers(probe: WorkerProbe, timeout: float) -> Component:
    try:
        names = sorted(probe(timeout))
    except Exception as exc:  # a broker that is down, say: the component is down
        error = mask_secrets(f"{type(exc).__name__}: {exc}")
        return {"status": DOWN, "error": error, "answered": []}
    if not names:
        return {
            "status": DOWN,
            "error": f"no worker answered a ping in {timeout} s",
            "answered": [],
        }
    return {"status": OK, "answered": names, "count": len(names)}


def overall(snapshot: dict[str, Any]) -> str:
    return max((snapshot[c]["status"] for c in COMPONENTS), key=_RANK.__getitem__)


class HealthChecker:
    """Checks every component, stores the snapshot and logs status changes."""

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        keys: Keys,
        workers: WorkerProbe,
        breaker_admin: CircuitAdmin,
        guard_for: Callable[[str], Guard[Any]] | None = None,
    ):
        self.settings = settings
        # Each service's breaker guards its probe (health probes are downstream calls too):
        # give its ``probe`` (CircuitBreaker.probe), so an answer counts for nothing.
        self.guard_for = guard_for
        self.redis = client
        self.keys = keys
        self.workers = workers
        # The shared store itself: health must show the fleet's breakers, not a fallback.
        self.breaker_admin = breaker_admin
        self._record = register(client, "health_record")

    @property
    def ttl(self) -> float:
        """How long a stored snapshot lives: a few intervals, so a missed run or two is
        survived but a stopped beat is noticed."""
        return 3 * self.settings.health_interval

    @property
    def stale_after(self) -> float:
        return 2 * self.settings.health_interval

    def check(self) -> dict[str, Any]:
        """A fresh snapshot (not stored)."""
        s = self.settings
        timeout = s.health_timeout

        def guard(service: str) -> Guard[Any] | None:
            return self.guard_for(service) if self.guard_for is not None else None

        checks: dict[str, Callable[[], Component]] = {
            "context_service": lambda: check_service_health(
                s.context_service_url,
                timeout,
                s.required_context_service_version,
                guard(ContextServiceClient.service),
            ),
            "prediction_service": lambda: check_service_health(
                s.prediction_service_url, timeout, guard=guard(PredictionServiceClient.service)
            ),
            "redis": lambda: check_redis(self.redis),
            "circuit_breakers": lambda: check_breakers(self.breaker_admin),
            "workers": lambda: check_workers(self.workers, timeout),
        }
        # All at once: a check takes as long as its slowest probe, not the sum of them
        # (a worker ping always waits its whole timeout).
        with ThreadPoolExecutor(len(checks), thread_name_prefix="health") as pool:
            futures = {name: pool.submit(check) for name, check in checks.items()}
            snapshot: dict[str, Any] = {name: f.result() for name, f in futures.items()}
        status = overall(snapshot)
        failing = [c for c in COMPONENTS if snapshot[c]["status"] == DOWN]
        return {
            "status": status,
            "failing": failing,
            "checked_at": time.time(),
            "checked_by": f"{socket.gethostname()}:{os.getpid()}",
            **snapshot,
        }

    def run(self) -> dict[str, Any]:
        """Check, store the snapshot (when Redis is up) and log each changed status."""
        snapshot = self.check()
        if snapshot["redis"]["status"] == OK:
            self._store(snapshot)
        else:
            log.error("health: Redis is down, snapshot not stored", extra={"health": "redis"})
        return snapshot

    def _store(self, snapshot: dict[str, Any]) -> None:
        pairs: list[str] = []
        for component in COMPONENTS:
            pairs += [component, snapshot[component]["status"]]
        try:
            changes = self._record(
                keys=[self.keys.health_snapshot, self.keys.health_status],
                args=[json.dumps(snapshot), int(self.ttl * 1000), *pairs],
            )
        except redis.RedisError as exc:
            log.error("health: could not store the snapshot: %s", exc)
            return
        for component, old in zip(changes[::2], changes[1::2], strict=True):
            name = component.decode() if isinstance(component, bytes) else str(component)
            before = (old.decode() if isinstance(old, bytes) else str(old)) or "unknown"
            detail = snapshot[name]
            level = logging.INFO if detail["status"] == OK else logging.WARNING
            log.log(
                level,
                "health: %s %s -> %s%s",
                name,
                before,
                detail["status"],
                f" ({detail['error']})" if detail.get("error") else "",
                extra={"component": name, "old_status": before, "new_status": detail["status"]},
            )

    def stored(self) -> dict[str, Any] | None:
        """The stored snapshot, or None when there is none or Redis is unreachable."""
        try:
            raw = self.redis.get(self.keys.health_snapshot)
        except redis.RedisError:
            return None
        if raw is None:
            return None
        snapshot: dict[str, Any] = json.loads(raw)  # type: ignore[arg-type]
        return snapshot

    def current(self) -> dict[str, Any]:
        """The stored snapshot while it is fresh, else a new check (stored). A snapshot
        that found something down is fresh only for a few seconds, so a recovery (or a
        worker that has just started) shows without waiting for the next periodic check."""
        snapshot = self.stored()
        if snapshot is not None:
            fresh_for = self.stale_after if snapshot["status"] != DOWN else RECHECK_DOWN_AFTER
            if time.time() - snapshot["checked_at"] <= min(fresh_for, self.stale_after):
                return snapshot
        return self.run()
