"""The admin endpoint's routes, as a WSGI app (werkzeug routing).

- ``GET /health``: the health snapshot (200, or 503 when a component is down), checked
  anew when the stored one is stale;
- ``GET /admin/circuits``; ``POST /admin/circuits/{name}/reset|open|close``;
- ``GET /admin/ratelimits[?id=CLIENT]``; ``POST /admin/ratelimits/{name}/reset[?id=]``;
- ``GET /admin/drills``; ``PUT /admin/drills/{service}`` (a JSON drill: intent/drills.py),
  ``DELETE /admin/drills/{service}``;
- ``GET /metrics``: Prometheus text format (every worker process's metrics);
- ``GET /schemas/{name}.json``: the JSON Schemas of requests, results and errors
  (``GET /schemas`` lists them).

Every ``POST``, ``PUT`` and ``DELETE`` needs ``Authorization: Bearer <INTENT_ADMIN_TOKEN>``;
with no token configured, they are refused (403), never open.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import Any
from wsgiref.types import StartResponse, WSGIEnvironment

import redis
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from intent import codec, schemas
from intent.breaker import CircuitAdmin, StoreError
from intent.budget import RetryBudget
from intent.clients import ContextServiceClient, PredictionServiceClient
from intent.drills import DrillStore
from intent.errors import ServiceUnavailableError, ValidationError
from intent.health import DOWN, HealthChecker
from intent.logs import mask_secrets
from intent.ratelimit import RateLimits

log = logging.getLogger("intent.admin")

SERVICES = (ContextServiceClient.service, PredictionServiceClient.service)
# The routes that change the shared state: each needs the bearer token.
MUTATING = frozenset({"POST", "PUT", "DELETE", "PATCH"})
# The only bodies the admin takes are a reason or a drill: anything much larger is refused
# (413) by the server before it is read, and before any authentication work.
MAX_BODY_BYTES = 16384
BODY_LIMITS = codec.Limits(max_bytes=MAX_BODY_BYTES, max_depth=4, max_string=MAX_BODY_BYTES)
Metrics = Callable[[], tuple[bytes, str]]


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(payload, indent=2), status=status, headers=headers, mimetype="application/json"
    )


def _error(message: str, status: int, headers: dict[str, str] | None = None) -> Response:
    return _json({"error": message}, status, headers)


class AdminApp:
    """Routes over the shared state; ``token`` guards every mutating route."""

    def __init__(
        self,
        health: HealthChecker,
        circuits: CircuitAdmin,
        rate_limits: RateLimits,
        metrics: Metrics,
        token: str | None,
        waiting: Callable[[], dict[str, int]] | None = None,
        drills: DrillStore | None = None,
        retry_budget: RetryBudget | None = None,
    ):
        self.waiting = waiting  # steps parked per lane (intent/waiting.py)
        self.drills = drills  # the resilience drills (intent/drills.py); None: no routes
        self.retry_budget = retry_budget  # the services' fleet-wide retry budgets
        self.health = health
        self.circuits = circuits
        self.rate_limits = rate_limits
        self.metrics = metrics
        self._token = token.encode() if token else None
        self.url_map = Map(
            [
                Rule("/health", methods=["GET"], endpoint="health"),
                Rule("/metrics", methods=["GET"], endpoint="metrics"),
                Rule("/schemas", methods=["GET"], endpoint="schemas"),
                Rule("/schemas/<name>.json", methods=["GET"], endpoint="schema"),
                Rule("/admin/circuits", methods=["GET"], endpoint="circuits"),
                Rule(
                    "/admin/circuits/<name>/<any(reset, open, close):action>",
                    methods=["POST"],
                    endpoint="circuit_action",
                ),
                Rule("/admin/ratelimits", methods=["GET"], endpoint="ratelimits"),
                Rule("/admin/budgets", methods=["GET"], endpoint="budgets"),
                Rule(
                    "/admin/ratelimits/<name>/reset", methods=["POST"], endpoint="ratelimit_reset"
                ),
                Rule("/admin/drills", methods=["GET"], endpoint="drills"),
                Rule("/admin/drills/<service>", methods=["PUT"], endpoint="drill_start"),
                Rule("/admin/drills/<service>", methods=["DELETE"], endpoint="drill_stop"),
            ]
        )

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        return self.dispatch(Request(environ))(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        adapter = self.url_map.bind_to_environ(request.environ)
        try:
            endpoint, values = adapter.match()
        except HTTPException as exc:
            return _error(exc.description or exc.name, exc.code or 500)
        if request.method in MUTATING:
            refused = self._refuse(request)
            if refused is not None:
                return refused
        handler: Callable[..., Response] = getattr(self, f"_{endpoint}")
        try:
            return handler(request, **values)
        except StoreError as exc:
            return _error(mask_secrets(f"the shared breaker state is unreachable: {exc}"), 503)
        except redis.RedisError as exc:
            return _error(f"Redis is unreachable: {type(exc).__name__}", 503)
        except Exception as exc:  # an operator gets an answer, the log gets the traceback
            if isinstance(exc, ServiceUnavailableError) and exc.service == "redis":
                # Named by redis-py's error underneath, as a raw one is above.
                return _error(f"Redis is unreachable: {type(exc.__cause__ or exc).__name__}", 503)
            log.exception("admin %s %s failed", request.method, request.path)
            return _error(mask_secrets(f"{type(exc).__name__}: {exc}"), 500)

    def _refuse(self, request: Request) -> Response | None:
        if self._token is None:
            return _error("mutating admin routes are disabled: set INTENT_ADMIN_TOKEN", 403)
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), self._token):
            return _error(
                "a valid bearer token is required",
                401,
                {"WWW-Authenticate": 'Bearer realm="intent-admin"'},
            )
        return None

    # -- routes ---------------------------------------------------------------------
    def _health(self, request: Request) -> Response:
        snapshot = self.health.current()
        return _json(snapshot, 503 if snapshot["status"] == DOWN else 200)

    def _metrics(self, request: Request) -> Response:
        body, content_type = self.metrics()
        return Response(body, content_type=content_type)

    def _schemas(self, request: Request) -> Response:
        return _json({name: f"/schemas/{name}.json" for name in schemas.NAMES})

    def _schema(self, request: Request, name: str) -> Response:
        if name not in schemas.NAMES:
            return _error(f"no schema {name!r}: one of {', '.join(schemas.NAMES)}", 404)
        return Response(schemas.text(name), mimetype="application/schema+json")

    def _circuits(self, request: Request) -> Response:
        body: dict[str, Any] = {"circuits": [s.as_dict() for s in self.circuits.list()]}
        if self.waiting is not None:
            body["waiting"] = self.waiting()
        return _json(body)

    def _circuit_action(self, request: Request, name: str, action: str) -> Response:
        known = set(self.circuits.names()) | set(SERVICES)
        if name not in known:
            return _error(f"no circuit breaker {name!r}; known: {', '.join(sorted(known))}", 404)
        try:
            raw = request.get_data(cache=False) if request.content_length else b"{}"
            body = codec.loads(raw or b"{}", BODY_LIMITS, "body")
        except ValidationError as exc:
            return _error(f"{exc.field}: {exc.message}", 422)
        if not isinstance(body, dict):
            return _error('body: must be a JSON object such as {"reason": "..."}', 422)
        reason = body.get("reason")
        if reason is not None and not isinstance(reason, str):
            return _error("reason: must be a string", 422)
        reason = (reason or f"{action} via admin endpoint")[:200]
        if action == "reset":
            status = self.circuits.reset(name, reason)
        elif action == "open":
            status = self.circuits.force_open(name, reason)
        else:
            status = self.circuits.force_closed(name, reason)
        return _json(status.as_dict())

    def _budgets(self, request: Request) -> Response:
        if self.retry_budget is None:
            return _error("no retry budget is wired into this endpoint", 404)
        budget = self.retry_budget
        return _json({"budgets": [budget.status(service).as_dict() for service in SERVICES]})

    def _ratelimits(self, request: Request) -> Response:
        identifier = request.args.get("id", "")
        statuses = [limit.status(identifier) for limit in self.rate_limits]
        return _json({"ratelimits": [asdict(s) for s in statuses]})

    def _ratelimit_reset(self, request: Request, name: str) -> Response:
        try:
            limit = self.rate_limits[name]
        except KeyError:
            known = ", ".join(limit.name for limit in self.rate_limits)
            return _error(f"no rate limit {name!r}; known: {known}", 404)
        identifier = request.args.get("id", "")
        try:
            limit.reset(identifier)
        except ValueError as exc:
            return _error(str(exc), 400)
        log.warning(
            "rate limit %s reset for %r via admin endpoint",
            name,
            identifier,
            extra={"limit": name, "identifier": identifier},
        )
        return _json(asdict(limit.status(identifier)))

    # -- resilience drills ------------------------------------------------------------
    def _drill_store(self, service: str | None = None) -> DrillStore | Response:
        """The drills, or the answer when there are none here or no such service."""
        if self.drills is None:
            return _error("resilience drills are not configured on this endpoint", 404)
        if service is not None and service not in SERVICES:
            return _error(f"no service {service!r}; known: {', '.join(SERVICES)}", 404)
        return self.drills

    def _drills(self, request: Request) -> Response:
        store = self._drill_store()
        if isinstance(store, Response):
            return store
        return _json({"drills": [drill.as_dict() for drill in store.list()]})

    def _drill_start(self, request: Request, service: str) -> Response:
        store = self._drill_store(service)
        if isinstance(store, Response):
            return store
        try:
            raw = request.get_data(cache=False) if request.content_length else b""
            if not raw:
                raise ValidationError("drill", 'a JSON body is required, e.g. {"rate": 0.2, ...}')
            drill = store.start(service, codec.loads(raw, BODY_LIMITS, "drill"))
        except ValidationError as exc:
            return _error(f"{exc.field}: {exc.message}", 400)
        return _json(drill.as_dict())

    def _drill_stop(self, request: Request, service: str) -> Response:
        store = self._drill_store(service)
        if isinstance(store, Response):
            return store
        return _json({"service": service, "stopped": store.stop(service)})
