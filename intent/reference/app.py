"""WSGI apps of the reference Context and Prediction services (API v1, with bulk routes),
with admin routes for fault injection, a request log, context revisions, the reported
version and a switch that hides the bulk routes."""

from __future__ import annotations

import json
import logging
import math
import random
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from dataclasses import asdict, dataclass
from typing import Any, Literal, NamedTuple
from wsgiref.types import StartResponse, WSGIEnvironment

from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from intent.errors import IntentError
from intent.reference.data import context_for, context_from_data, predictions_for

logger = logging.getLogger(__name__)

_IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
DEFAULT_FAULT_STATUS = 503
MAX_LOG_ENTRIES = 10_000
# Items in one bulk request; a larger batch is a client bug (422), not a slow answer.
MAX_BULK_ITEMS = 1000
_MAX_LATENCY_MS = 600_000.0

Handler = Callable[..., Response]


class InvalidInput(IntentError):
    """A request body or parameter the service rejects with 422, naming the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _number(
    body: dict[str, Any],
    name: str,
    default: float | None,
    *,
    low: float,
    high: float,
    nullable: bool = False,
) -> float | None:
    value = body.get(name, default)
    if value is None and nullable:
        return None
    # bool is an int subclass: reject it explicitly so `true` is not read as 1.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(name, "must be a number" + (" or null" if nullable else ""))
    if not (math.isfinite(value) and low <= value <= high):
        raise InvalidInput(name, f"must be between {low:g} and {high:g}")
    return float(value)


def _integer(
    body: dict[str, Any],
    name: str,
    default: int | None,
    *,
    low: int | None = None,
    high: int | None = None,
    nullable: bool = False,
) -> int | None:
    value = body.get(name, default)
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(name, "must be an integer" + (" or null" if nullable else ""))
    if (low is not None and value < low) or (high is not None and value > high):
        raise InvalidInput(name, f"must be between {low} and {high}")
    return value


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise InvalidInput(name, "must be true or false")
    return value


@dataclass(frozen=True)
class FaultConfig:
    """What to inject into API requests. ``status=None`` means "not set": an error then
    needs ``error_rate > 0`` and is answered with 503."""

    latency_ms: float = 0.0
    # The answer's body sent a byte at a time, this many ms apart: a service that never
    # goes silent for a read timeout, and still takes as long as it likes.
    trickle_ms: float = 0.0
    error_rate: float = 0.0
    status: int | None = None
    down: bool = False
    count: int | None = None
    match: str | None = None
    retry_after: float | None = None
    seed: int = 0
    include_health: bool = False

    @classmethod
    def from_json(cls, body: Any) -> FaultConfig:
        """Validate a PUT /_admin/faults body; raises InvalidInput naming the field."""
        if not isinstance(body, dict):
            raise InvalidInput("body", "must be a JSON object")
        for name in body:
            if name not in cls.__dataclass_fields__:
                raise InvalidInput(name, "unknown fault field")
        match = body.get("match")
        if match is not None and not isinstance(match, str):
            raise InvalidInput("match", "must be a string or null")
        return cls(
            latency_ms=_number(body, "latency_ms", 0.0, low=0, high=_MAX_LATENCY_MS) or 0.0,
            trickle_ms=_number(body, "trickle_ms", 0.0, low=0, high=_MAX_LATENCY_MS) or 0.0,
            error_rate=_number(body, "error_rate", 0.0, low=0, high=1) or 0.0,
            status=_integer(body, "status", None, low=200, high=599, nullable=True),
            down=_flag(body, "down"),
            count=_integer(body, "count", None, low=0, nullable=True),
            match=match,
            retry_after=_number(body, "retry_after", None, low=0, high=86_400, nullable=True),
            seed=_integer(body, "seed", 0) or 0,
            include_health=_flag(body, "include_health"),
        )

    @property
    def changes_outcome(self) -> bool:
        """Whether a matching request can be answered with an error or dropped."""
        return self.down or self.error_rate > 0 or self.status is not None

    @property
    def effective_status(self) -> int:
        return DEFAULT_FAULT_STATUS if self.status is None else self.status


class FaultDecision(NamedTuple):
    """What the app does to one request: wait ``latency`` s, then pass, error or drop; an
    answer's body sent a byte each ``trickle`` s."""

    latency: float
    action: Literal["pass", "error", "drop"]
    status: int
    retry_after: float | None
    trickle: float = 0.0


class ServiceState:
    """The mutable state of one reference service, shared by its request threads."""

    def __init__(self, name: str, version: str = "1.0.0", api: str = "v1") -> None:
        self.name = name
        self.version = version
        self.api = api
        self._lock = threading.Lock()
        self._faults = FaultConfig()
        self._remaining: int | None = None
        self._rng = random.Random(0)
        self._log: deque[dict[str, Any]] = deque(maxlen=MAX_LOG_ENTRIES)
        self._revisions: dict[str, int] = {}
        self._bulk_enabled = True

    # -- faults -------------------------------------------------------------------------

    @property
    def faults(self) -> FaultConfig:
        return self._faults

    def set_faults(self, config: FaultConfig) -> dict[str, Any]:
        """Replace the fault configuration (count and RNG start afresh)."""
        with self._lock:
            self._faults = config
            self._remaining = config.count
            self._rng = random.Random(config.seed)
            return self._fault_status()

    def clear_faults(self) -> dict[str, Any]:
        return self.set_faults(FaultConfig())

    def fault_status(self) -> dict[str, Any]:
        with self._lock:
            return self._fault_status()

    def _fault_status(self) -> dict[str, Any]:
        return {**asdict(self._faults), "remaining": self._remaining}

    def decide(self, path: str) -> FaultDecision | None:
        """Decide, atomically, what the faults do to one non-admin request for ``path``."""
        with self._lock:
            f = self._faults
            if path == "/health" and not f.include_health:
                return None
            if f.match is not None and f.match not in path:
                return None
            if self._remaining is not None and self._remaining <= 0:
                return None
            action: Literal["pass", "error", "drop"] = "pass"
            if f.down:
                action = "drop"
            elif f.error_rate > 0:
                # The RNG is only drawn for matching requests: a seed replays exactly.
                if self._rng.random() < f.error_rate:
                    action = "error"
            elif f.status is not None:
                action = "error"
            # `count` counts faulted requests: errors and drops, or, when latency (or a
            # trickle) is the only fault configured, the delayed requests.
            slowed = f.latency_ms > 0 or f.trickle_ms > 0
            faulted = action != "pass" or (slowed and not f.changes_outcome)
            if faulted and self._remaining is not None:
                self._remaining -= 1
            if action == "pass" and not slowed:
                return None
            return FaultDecision(
                f.latency_ms / 1000,
                action,
                f.effective_status,
                f.retry_after,
                f.trickle_ms / 1000,
            )

    # -- request log --------------------------------------------------------------------

    def log_arrival(self, method: str, path: str, arrived: float) -> dict[str, Any]:
        """Append a log entry (status None until answered); returns it for log_status."""
        entry: dict[str, Any] = {"method": method, "path": path, "time": arrived, "status": None}
        with self._lock:
            self._log.append(entry)
        return entry

    def log_status(self, entry: dict[str, Any], status: int | None) -> None:
        with self._lock:
            entry["status"] = status

    def requests(self) -> list[dict[str, Any]]:
        """A copy of the request log, oldest first."""
        with self._lock:
            return [dict(entry) for entry in self._log]

    def clear_requests(self) -> int:
        with self._lock:
            cleared = len(self._log)
            self._log.clear()
            return cleared

    # -- contexts and version -----------------------------------------------------------

    def revision(self, context_id: str) -> int:
        with self._lock:
            return self._revisions.get(context_id, 1)

    def bump(self, context_id: str) -> int:
        """Move a context to its next revision; returns the new revision."""
        with self._lock:
            revision = self._revisions.get(context_id, 1) + 1
            self._revisions[context_id] = revision
            return revision

    def set_version(self, version: str) -> None:
        with self._lock:
            self.version = version

    # -- bulk routes --------------------------------------------------------------------

    @property
    def bulk_enabled(self) -> bool:
        return self._bulk_enabled

    def set_bulk(self, enabled: bool) -> None:
        """Serve the bulk routes, or answer them 404 like a service that has none."""
        with self._lock:
            self._bulk_enabled = enabled


class _JSONRequest(Request):
    # Bodies here are small JSON documents; anything larger is a client bug (413).
    max_content_length = 1024 * 1024


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(payload), status=status, headers=headers, mimetype="application/json"
    )


def _trickled(response: Response, interval: float) -> Response:
    """``response`` with its headers sent at once (its length among them) and its body a
    byte every ``interval`` seconds."""
    body = response.get_data()

    def drip() -> Iterator[bytes]:
        for i in range(len(body)):
            time.sleep(interval)
            yield body[i : i + 1]

    headers = dict(response.headers)
    headers["Content-Length"] = str(len(body))
    return Response(drip(), status=response.status_code, headers=headers, direct_passthrough=True)


def _invalid(exc: InvalidInput) -> Response:
    return _json({"error": exc.message, "field": exc.field}, 422)


def _read_json(request: Request, field: str, *, empty: Any = None) -> Any:
    """The JSON body; ``empty`` when given and the body is blank."""
    raw = request.get_data(cache=False)
    if empty is not None and not raw.strip():
        return empty
    try:
        return json.loads(raw)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both
        raise InvalidInput(field, "request body is not valid JSON") from None


def _format_seconds(value: float) -> str:
    return format(value, ".3f").rstrip("0").rstrip(".")


def _check_identifier(value: Any, field: str) -> str:
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        raise InvalidInput(
            field, "must be 1-128 characters of A-Z a-z 0-9 . _ - starting with a letter or digit"
        )
    return value


class ServiceApp:
    """One service: routes, fault injection and request logging around the handlers."""

    def __init__(
        self, state: ServiceState, rules: list[Rule], handlers: dict[str, Handler]
    ) -> None:
        self.state = state
        admin_rules = [
            Rule("/_admin/faults", methods=["GET", "PUT", "DELETE"], endpoint="admin_faults"),
            Rule("/_admin/requests", methods=["GET", "DELETE"], endpoint="admin_requests"),
            Rule("/_admin/version", methods=["GET", "PUT"], endpoint="admin_version"),
            Rule("/_admin/bulk", methods=["GET", "PUT"], endpoint="admin_bulk"),
            Rule("/health", methods=["GET"], endpoint="health"),
        ]
        self.url_map = Map([*admin_rules, *rules])
        self.handlers: dict[str, Handler] = {
            "admin_faults": self._admin_faults,
            "admin_requests": self._admin_requests,
            "admin_version": self._admin_version,
            "admin_bulk": self._admin_bulk,
            "health": self._health,
            **handlers,
        }

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = _JSONRequest(environ)
        return self.dispatch(request)(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        path = request.path
        if path == "/_admin" or path.startswith("/_admin/"):
            return self._route(request)  # admin: never faulted, never logged
        entry = self.state.log_arrival(request.method, path, time.time())
        decision = self.state.decide(path)
        if decision is None:
            response = self._route(request)
        else:
            if decision.latency > 0:
                time.sleep(decision.latency)
            if decision.action == "drop":
                self.state.log_status(entry, None)
                return self._drop(request)
            if decision.action == "error":
                headers = {}
                if decision.retry_after is not None:
                    headers["Retry-After"] = _format_seconds(decision.retry_after)
                response = _json({"error": "injected fault"}, decision.status, headers)
            else:
                response = self._route(request)
            if decision.trickle > 0:
                response = _trickled(response, decision.trickle)
        self.state.log_status(entry, response.status_code)
        return response

    def _route(self, request: Request) -> Response:
        adapter = self.url_map.bind_to_environ(request.environ)
        try:
            endpoint, args = adapter.match()
            return self.handlers[str(endpoint)](request, **args)
        except InvalidInput as exc:
            return _invalid(exc)
        except MethodNotAllowed as exc:
            allow = ", ".join(sorted(exc.valid_methods or ()))
            return _json({"error": "method not allowed", "allow": allow}, 405, {"Allow": allow})
        except HTTPException as exc:
            # The name ("Not Found"), not werkzeug's HTML-oriented description.
            return _json({"error": exc.name.lower(), "path": request.path}, exc.code or 500)
        except Exception:
            logger.exception("reference service %s failed on %s", self.state.name, request.path)
            return _json({"error": "internal error"}, 500)

    @staticmethod
    def _drop(request: Request) -> Response:
        """Cut the connection without an answer: the client sees a connection error."""
        sock = request.environ.get("werkzeug.socket")
        if not isinstance(sock, socket.socket):
            # Not under werkzeug's server (e.g. a test client): nothing to cut.
            return _json({"error": "service down"}, 503)
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with suppress(OSError):
            sock.close()
        # Writing this fails with a broken pipe, which werkzeug treats as a dropped client.
        return Response(b"", status=500)

    # -- shared handlers ----------------------------------------------------------------

    def _health(self, request: Request) -> Response:
        state = self.state
        return _json(
            {"status": "ok", "version": state.version, "api": state.api, "service": state.name}
        )

    def _admin_faults(self, request: Request) -> Response:
        if request.method == "GET":
            return _json(self.state.fault_status())
        if request.method == "DELETE":
            return _json(self.state.clear_faults())
        # An empty PUT is a PUT of all defaults, i.e. no faults.
        body = _read_json(request, "body", empty={})
        return _json(self.state.set_faults(FaultConfig.from_json(body)))

    def _admin_requests(self, request: Request) -> Response:
        if request.method == "DELETE":
            return _json({"cleared": self.state.clear_requests()})
        return _json(self.state.requests())

    def _admin_version(self, request: Request) -> Response:
        if request.method == "PUT":
            body = _read_json(request, "version")
            version = body.get("version") if isinstance(body, dict) else None
            if not isinstance(version, str) or not 0 < len(version) <= 64:
                raise InvalidInput("version", "must be a non-empty string")
            self.state.set_version(version)
        return _json({"version": self.state.version})

    def _admin_bulk(self, request: Request) -> Response:
        if request.method == "PUT":
            body = _read_json(request, "enabled")
            enabled = body.get("enabled") if isinstance(body, dict) else None
            if not isinstance(enabled, bool):
                raise InvalidInput("enabled", "must be true or false")
            self.state.set_bulk(enabled)
        return _json({"enabled": self.state.bulk_enabled})


def _require_bulk(state: ServiceState) -> None:
    # Disabled, a bulk route answers exactly as an unknown route does.
    if not state.bulk_enabled:
        raise NotFound()


def _bulk_list(body: Any, name: str) -> list[Any]:
    """The list of items under ``name`` in a bulk request body (1..MAX_BULK_ITEMS)."""
    items = body.get(name) if isinstance(body, dict) else None
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BULK_ITEMS:
        raise InvalidInput(name, f"must be a list of 1 to {MAX_BULK_ITEMS} items")
    return items


def _item_error(status: int, detail: str, field: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"status": status, "detail": detail}
    if field is not None:
        error["field"] = field
    return error


def make_context_app(state: ServiceState) -> ServiceApp:
    """The Context Service: GET /api/v1/context/<id>, POST /api/v1/context, and
    POST /api/v1/context/batch (many ids, one answer per id, in order)."""

    def get_context(request: Request, context_id: str) -> Response:
        _check_identifier(context_id, "context_id")
        # A reserved prefix, so tests and the demo can ask for a context that is absent.
        if context_id.startswith("missing"):
            return _json({"error": "context not found", "context_id": context_id}, 404)
        return _json(context_for(context_id, state.revision(context_id)))

    def one_of_batch(context_id: Any) -> dict[str, Any]:
        try:
            _check_identifier(context_id, "context_id")
        except InvalidInput as exc:
            return {"context_id": context_id, "error": _item_error(422, exc.message, exc.field)}
        if context_id.startswith("missing"):
            return {"context_id": context_id, "error": _item_error(404, "context not found")}
        return context_for(context_id, state.revision(context_id))

    def get_contexts(request: Request) -> Response:
        _require_bulk(state)
        context_ids = _bulk_list(_read_json(request, "context_ids"), "context_ids")
        return _json({"contexts": [one_of_batch(context_id) for context_id in context_ids]})

    def analyze_context(request: Request) -> Response:
        body = _read_json(request, "data")
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict) or not data:
            raise InvalidInput("data", "must be a non-empty JSON object")
        return _json(context_from_data(data))

    def bump(request: Request, context_id: str) -> Response:
        _check_identifier(context_id, "context_id")
        return _json({"context_id": context_id, "version": state.bump(context_id)})

    rules = [
        Rule("/api/v1/context/batch", methods=["POST"], endpoint="get_contexts"),
        Rule("/api/v1/context/<context_id>", methods=["GET"], endpoint="get_context"),
        Rule("/api/v1/context", methods=["POST"], endpoint="analyze_context"),
        Rule("/_admin/contexts/<context_id>/bump", methods=["POST"], endpoint="bump"),
    ]
    handlers: dict[str, Handler] = {
        "get_context": get_context,
        "get_contexts": get_contexts,
        "analyze_context": analyze_context,
        "bump": bump,
    }
    return ServiceApp(state, rules, handlers)


def make_prediction_app(state: ServiceState) -> ServiceApp:
    """The Prediction Service: POST /api/v1/predict, and POST /api/v1/predict/batch (many
    requests, one answer per request, in order)."""

    def answer(body: Any) -> dict[str, Any]:
        """The predictions for one request body; raises InvalidInput naming the field."""
        if not isinstance(body, dict):
            raise InvalidInput("body", "must be a JSON object")
        if "pattern_id" not in body:
            raise InvalidInput("pattern_id", "is required")
        pattern_id = _check_identifier(body["pattern_id"], "pattern_id")
        context = body.get("context")
        if not isinstance(context, dict):
            raise InvalidInput("context", "is required and must be a JSON object")
        return predictions_for(pattern_id, context)

    def predict(request: Request) -> Response:
        return _json(answer(_read_json(request, "body")))

    def one_of_batch(body: Any) -> dict[str, Any]:
        try:
            return answer(body)
        except InvalidInput as exc:
            return {"error": _item_error(422, exc.message, exc.field)}

    def predict_batch(request: Request) -> Response:
        _require_bulk(state)
        bodies = _bulk_list(_read_json(request, "requests"), "requests")
        return _json({"results": [one_of_batch(body) for body in bodies]})

    rules = [
        Rule("/api/v1/predict", methods=["POST"], endpoint="predict"),
        Rule("/api/v1/predict/batch", methods=["POST"], endpoint="predict_batch"),
    ]
    return ServiceApp(state, rules, {"predict": predict, "predict_batch": predict_batch})
