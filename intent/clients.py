"""HTTP clients of the Context and Prediction services, mapping failures onto the error tree.

One pooled ``requests.Session`` per client per process (see :func:`service_clients`):
Sessions are not fork-safe, so a prefork child builds its own on first use.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

import requests

from intent import pools, tracing
from intent.errors import (
    BulkheadFullError,
    CircuitBreakerError,
    IncompatibleServiceError,
    ProbeWaits,
    ServiceError,
    ServiceRequestError,
    ServiceUnavailableError,
)
from intent.httpcut import CutAdapter, cut_at_limit
from intent.logs import mask_secrets
from intent.models import CONTEXT_SERVICE, PREDICTION_SERVICE
from intent.settings import Settings

log = logging.getLogger("intent.clients")

T = TypeVar("T")
# Told of every request: service, endpoint, status (or error kind), seconds.
Observe = Callable[[str, str, int | str, float], None]
# A guard wraps each HTTP call (the circuit breaker plugs in here): guard(send) -> result.
Guard = Callable[[Callable[[], T]], T]


class Fault(Protocol):
    """What a resilience drill injects into one call (``intent.drills.Drill``): an HTTP
    error status, a timeout, or latency alone (seconds, added before an error too)."""

    @property
    def kind(self) -> str: ...  # status, timeout, latency
    @property
    def status(self) -> int | None: ...
    @property
    def latency(self) -> float: ...
    def describe(self) -> str: ...


# Asked before each call inside the guard: the fault to inject into it, or None.
Inject = Callable[[str], Fault | None]
# One answer of a bulk call: the item's JSON object, or the error that item met.
BulkItem = dict[str, Any] | ServiceError
# A timeout with this little of the step's time left was the step's time limit.
_LIMIT_SLACK = 0.05
# How a service says it has no such route: 404, or 405 when another route has the path.
_NO_BULK_STATUSES = frozenset({404, 405})


def _retry_after(response: requests.Response) -> float | None:
    """Seconds from a Retry-After header, in either of its forms (delta or HTTP date)."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def compatible(reported: str, required: str) -> bool:
    """Semver compatibility: same major version, and not older than ``required``."""

    def parts(version: str) -> tuple[int, int, int] | None:
        core = version.strip().lstrip("v").split("-", 1)[0].split("+", 1)[0]
        numbers = core.split(".")
        if not 1 <= len(numbers) <= 3 or not all(n.isdigit() for n in numbers):
            return None
        major, minor, patch = (*map(int, numbers), 0, 0)[:3]
        return major, minor, patch

    have, need = parts(reported), parts(required)
    return have is not None and need is not None and have[0] == need[0] and have >= need


def version_problem(reported: str, required: str) -> str | None:
    """The verdict on a service's /health ``version``: why it cannot serve ``required``, or
    None when it can. The one wording, for the clients' refusal and the health snapshot."""
    if compatible(reported, required):
        return None
    return (
        f"incompatible version {reported or '(none)'}: requires {required} (same major, not older)"
    )


def _detail(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason
    if isinstance(body, dict):
        return str(body.get("error") or body.get("detail") or body)[:200]
    return str(body)[:200]


class ServiceClient:
    """A JSON-over-HTTP client with timeouts, pooling and error mapping."""

    service = "service"

    def __init__(
        self,
        base_url: str,
        connect_timeout: float = 5.0,
        read_timeout: float = 10.0,
        pool_size: int = 10,
        guard: Guard[Any] | None = None,
        trust_env: bool = False,
        limiter: Callable[[str], None] | None = None,
        observe: Observe | None = None,
        probe_guard: Guard[Any] | None = None,
        drill: Inject | None = None,
    ):
        # Order of every call: the shared rate limit (by endpoint name), then the guard
        # (circuit breaker), then a drill's fault if one hits it, then HTTP. A limit
        # refusal never reaches the breaker; an injected fault does, as a real one.
        self.limiter = limiter
        self.drill = drill  # service -> the fault to inject into this call, or None
        self.observe = observe  # each request's service, endpoint, status, seconds (metrics)
        self.trust_env = trust_env
        self.base_url = base_url.rstrip("/")
        self.timeout = (connect_timeout, read_timeout)
        self.pool_size = pool_size
        self.guard = guard
        # Guards GET /health (CircuitBreaker.probe: never a trial, an answer counts for
        # nothing); the plain guard when not given.
        self.probe_guard = probe_guard or guard
        self.session = self._new_session()

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        # trust_env makes requests read proxy variables and .netrc from the environment on
        # every request (about 1 ms each); service-to-service calls rarely want that.
        session.trust_env = self.trust_env
        # Its connections can be cut at the step's time limit (intent.httpcut: threads).
        adapter = CutAdapter(pool_connections=1, pool_maxsize=self.pool_size, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers["Accept"] = "application/json"
        return session

    def _exchange(
        self, method: str, url: str, json: Any, traced: tracing.HttpSpan
    ) -> requests.Response:
        """One HTTP exchange on the session's pooled connections.

        Without trust_env the request goes straight to the session's adapter:
        ``Session.request`` would merge cookies, environment settings and hooks and look
        for redirects on every call (about 0.1 ms each, measured), none of which a JSON
        API client uses; redirects are refused in :meth:`_send` instead of followed.
        ``traced`` is the request's span: its headers carry the trace to the service."""
        if self.trust_env:
            return self.session.request(
                method,
                url,
                json=json,
                headers=traced.headers or None,
                timeout=self._capped_timeout(),
                allow_redirects=False,
            )
        headers = self.session.headers
        timeout = self._capped_timeout()
        if traced.headers:
            headers = requests.structures.CaseInsensitiveDict({**headers, **traced.headers})
        prepared = requests.PreparedRequest()
        prepared.prepare(method=method, url=url, headers=headers, json=json)
        response = self.session.get_adapter(url).send(prepared, timeout=timeout)
        # Read the body here, as Session.send does: a body that stalls or breaks off is a
        # timeout or connection error of this exchange, mapped like any other.
        response.content  # noqa: B018
        return response

    def _capped_timeout(self) -> tuple[float, float]:
        """The connect and read timeouts, each cut to the running step's time left
        (``intent.pools``: where the pool cannot interrupt a task at its time limit)."""
        connect, read = self.timeout
        # Never 0, which a socket takes as "do not block" rather than as a timeout.
        return max(0.001, pools.capped(connect)[0]), max(0.001, pools.capped(read)[0])

    def reconnect(self) -> None:
        """Drop pooled connections and start a fresh session: the integration guide's
        recovery procedure ``service_client.reconnect()`` (kept for operators, tested)."""
        self.session.close()
        self.session = self._new_session()

    def close(self) -> None:
        self.session.close()

    def _request(
        self,
        method: str,
        path: str,
        json: Any = None,
        endpoint: str = "",
        label: str = "",
        probe: bool = False,
    ) -> dict[str, Any]:
        """One guarded call. ``endpoint`` names the rate limit it counts against;
        ``label`` (default: the endpoint) names it in metrics and logs; a ``probe`` goes
        through the probe guard."""
        # A step out of time calls nothing, not even its rate limit.
        pools.check(f"{self.service} {method} {path}")
        if self.limiter is not None and endpoint:
            self.limiter(endpoint)

        def send() -> dict[str, Any]:
            name = label or endpoint or path
            # Inside the guard: a call the breaker refuses sends nothing, and has no span.
            with tracing.http_span(self.service, method, self.base_url + path, name) as traced:
                fault = self.drill(self.service) if self.drill is not None else None
                if fault is not None:
                    return self._injected(fault, method, path, json, name, traced)
                return self._send(method, path, json, name, traced)

        guard = self.probe_guard if probe else self.guard
        if guard is None:
            return send()
        result: dict[str, Any] = guard(send)
        return result

    def _injected(
        self,
        fault: Fault,
        method: str,
        path: str,
        json: Any,
        endpoint: str,
        traced: tracing.HttpSpan,
    ) -> dict[str, Any]:
        """A drill's fault: its latency, then its error in place of the request, or the
        real request (latency alone). Marked as injected in the span, the log and the
        error's message."""
        drill = fault.describe()
        traced.injected(fault.kind, drill)
        fields: dict[str, Any] = {"service": self.service, "endpoint": endpoint}
        fields.update(method=method, path=path, injected=True, kind=fault.kind, drill=drill)
        log.info("%s %s %s: drill injected %s", self.service, method, path, drill, extra=fields)
        if fault.latency > 0:  # within the step's time left (intent.pools)
            pools.sleep(fault.latency, f"{self.service} {method} {path} (drill latency)")
        why = f"injected by a drill ({drill})"
        if fault.kind == "timeout":
            traced.status("timeout")
            raise self._timeout_error(method, path, why)
        if fault.kind == "status" and fault.status is not None:
            traced.status(fault.status)
            raise self._status_error(fault.status, f"{method} {path}: {why}")
        return self._send(method, path, json, endpoint, traced)

    def _limit_reached(
        self, method: str, path: str, endpoint: str, traced: tracing.HttpSpan, started: float
    ) -> Exception:
        """The error of a call the step's time limit ended, counted as a timeout."""
        traced.status("timeout")
        self._observe(method, path, endpoint, "timeout", started)
        return pools.reached(f"{self.service} {method} {path}")

    def _timeout_error(self, method: str, path: str, why: str) -> ServiceUnavailableError:
        return ServiceUnavailableError(self.service, f"timeout on {method} {path}: {why}")

    def _status_error(
        self, status: int, text: str, retry_after: float | None = None
    ) -> ServiceError:
        """The error of an HTTP error status (400..599): transient for 5xx and 429."""
        if status >= 500 or status == 429:
            return ServiceUnavailableError(
                self.service, f"HTTP {status} on {text}", retry_after=retry_after
            )
        return ServiceRequestError(self.service, status, text)

    def _send(
        self, method: str, path: str, json: Any, endpoint: str, traced: tracing.HttpSpan
    ) -> dict[str, Any]:
        url = self.base_url + path
        started = time.perf_counter()
        try:
            with cut_at_limit() as cut:
                response = self._exchange(method, url, json, traced)
                cut_short = cut.end()
        except requests.Timeout as exc:
            left = pools.remaining()
            if cut.fired or (left is not None and left <= _LIMIT_SLACK):
                # Cut to the step's time left, which ran out: the step's time limit ended
                # it (a failure of the service all the same, as a call that hangs past the
                # limit is on prefork).
                raise self._limit_reached(method, path, endpoint, traced, started) from exc
            traced.status("timeout")
            self._observe(method, path, endpoint, "timeout", started)
            raise self._timeout_error(method, path, type(exc).__name__) from exc
        except requests.RequestException as exc:
            if cut.fired:  # its socket shut at the step's time limit, mid-answer
                raise self._limit_reached(method, path, endpoint, traced, started) from exc
            # Connection refused/reset, DNS, protocol errors: the service may come back.
            traced.status("connection_error")
            self._observe(method, path, endpoint, "connection_error", started)
            raise ServiceUnavailableError(
                self.service, f"connection failed on {method} {path}: {type(exc).__name__}"
            ) from exc
        if cut_short:  # read to an end, but its socket shut at the step's time limit
            raise self._limit_reached(method, path, endpoint, traced, started)
        status = response.status_code
        traced.status(status)
        self._observe(method, path, endpoint, status, started)
        if 300 <= status < 400:
            location = mask_secrets(response.headers.get("Location", "(no Location)"))
            raise ServiceRequestError(
                self.service, status, f"{method} {path}: redirect to {location} not followed"
            )
        if status >= 400:
            text = f"{method} {path}: {_detail(response)}"
            raise self._status_error(status, text, _retry_after(response))
        try:
            body = response.json()
        except ValueError:
            raise ServiceRequestError(
                self.service, status, f"{method} {path}: response is not JSON"
            ) from None
        if not isinstance(body, dict):
            raise ServiceRequestError(
                self.service, status, f"{method} {path}: response is not a JSON object"
            )
        return body

    def _observe(
        self, method: str, path: str, endpoint: str, status: int | str, started: float
    ) -> None:
        """Count and log one request: ``endpoint`` is its logical name (bounded label
        values), ``status`` the HTTP status or the error kind."""
        duration = time.perf_counter() - started
        if self.observe is not None:
            self.observe(self.service, endpoint, status, duration)
        # An answered request at DEBUG, one that failed at INFO (its retry or fallback says
        # what became of it at WARNING).
        level = logging.DEBUG if isinstance(status, int) and status < 400 else logging.INFO
        if log.isEnabledFor(level):
            fields: dict[str, Any] = {"service": self.service, "endpoint": endpoint}
            fields.update(method=method, path=path, status=status, duration=round(duration, 6))
            text = "%s %s %s -> %s in %.1f ms"
            log.log(level, text, self.service, method, path, status, duration * 1000, extra=fields)

    def health(self) -> dict[str, Any]:
        """``GET /health``, through the probe guard (never rate limited)."""
        return self._request("GET", "/health", label="health", probe=True)

    # -- bulk calls -------------------------------------------------------------------

    # Set on an instance once its service answered that a bulk route does not exist.
    _bulk_missing: frozenset[str] = frozenset()

    def _bulk(
        self,
        path: str,
        body: dict[str, Any],
        answers: str,
        count: int,
        endpoint: str,
        singles: Sequence[Callable[[], dict[str, Any]]],
    ) -> list[BulkItem]:
        """POST ``body`` to the bulk route ``path`` and return its ``answers`` list, one per
        item, in order; without a bulk route (or for a body too large for it), make the
        ``singles`` calls instead. Transient failures of the call itself raise."""
        if path not in self._bulk_missing:
            try:
                answer = self._request(
                    "POST", path, json=body, endpoint=endpoint, label=f"{endpoint}_batch"
                )
            except ServiceRequestError as exc:
                if exc.status == 413:  # this batch is too large for it: one by one this time
                    log.info("%s refused a bulk body as too large; single calls", self.service)
                elif exc.status in _NO_BULK_STATUSES:
                    self._bulk_missing = self._bulk_missing | {path}
                    log.warning(
                        "%s has no bulk route POST %s (HTTP %d): using single calls",
                        self.service,
                        path,
                        exc.status,
                    )
                else:
                    raise
            else:
                return self._bulk_items(path, answer, answers, count)
        return [self._single(call) for call in singles]

    @staticmethod
    def _single(call: Callable[[], dict[str, Any]]) -> BulkItem:
        """One call of a fallen-back batch: a permanent refusal is that item's answer."""
        try:
            return call()
        except ServiceRequestError as exc:
            return exc

    def _bulk_items(
        self, path: str, answer: dict[str, Any], answers: str, count: int
    ) -> list[BulkItem]:
        items = answer.get(answers)
        if not isinstance(items, list) or len(items) != count:
            raise ServiceRequestError(
                self.service, 200, f"POST {path}: expected a list of {count} {answers}"
            )
        return [self._bulk_item(path, index, item) for index, item in enumerate(items)]

    def _bulk_item(self, path: str, index: int, item: Any) -> BulkItem:
        if not isinstance(item, dict):
            return ServiceRequestError(self.service, 200, f"POST {path}[{index}]: not an object")
        error = item.get("error")
        if error is None:
            return item
        status = error.get("status") if isinstance(error, dict) else None
        detail = error.get("detail") if isinstance(error, dict) else error
        field = error.get("field") if isinstance(error, dict) else None
        if field:
            detail = f"{field}: {detail}"
        text = f"POST {path}[{index}]: {detail}"[:300]
        if not isinstance(status, int) or isinstance(status, bool):
            return ServiceRequestError(self.service, 200, f"{text} (an error without a status)")
        if status >= 500 or status == 429:
            # The service could not answer this item now; asking again may help.
            return ServiceUnavailableError(self.service, f"HTTP {status} on {text}")
        return ServiceRequestError(self.service, status, text)


class ContextServiceClient(ServiceClient):
    service = CONTEXT_SERVICE

    def __init__(
        self,
        base_url: str,
        api_version: str = "v1",
        required_version: str | None = None,
        version_check_interval: float = 60.0,
        **kwargs: Any,
    ):
        super().__init__(base_url, **kwargs)
        self.api = f"/api/{api_version}"
        self.required_version = required_version
        self.version_check_interval = version_check_interval
        self._version_checked_at: float | None = None
        # The last verdict (version_problem): None while compatible, or never verified.
        self._version_problem: str | None = None

    def get_context(self, context_id: str) -> dict[str, Any]:
        path = f"{self.api}/context/{quote(context_id, safe='')}"
        return self._verified(lambda: self._request("GET", path, endpoint="get_context"))

    def analyze_context(self, data: dict[str, Any]) -> dict[str, Any]:
        path, body = f"{self.api}/context", {"data": data}
        return self._verified(
            lambda: self._request("POST", path, json=body, endpoint="analyze_context")
        )

    def _verified(self, call: Callable[[], T]) -> T:
        """``call`` on a compatible service. Where the version could not be probed (the
        breaker was half-open: the call is its trial), it is probed once the trial has
        closed the breaker, before the answer is used: a host back from the dead may run
        another release."""
        unverified = self.ensure_compatible()
        answer = call()
        if unverified:
            self.ensure_compatible()
        return answer

    def get_contexts(self, context_ids: Sequence[str]) -> list[BulkItem]:
        """The contexts of ``context_ids`` in one bulk call (single calls when the service
        has no bulk route): per id, its context or its error (e.g. 404), in order."""
        ids = list(context_ids)
        if not ids:
            self.ensure_compatible()
            return []
        singles = [lambda context_id=context_id: self.get_context(context_id) for context_id in ids]
        items = self._verified(
            lambda: self._bulk(
                f"{self.api}/context/batch",
                {"context_ids": ids},
                "contexts",
                len(ids),
                "get_context",
                singles,
            )
        )
        for index, (context_id, item) in enumerate(zip(ids, items, strict=True)):
            if isinstance(item, dict) and item.get("context_id") != context_id:
                # Answers are matched to ids by position: a shuffled answer is not the API.
                items[index] = ServiceRequestError(
                    self.service, 200, f"bulk answer {index} is not context {context_id}"
                )
        return items

    def ensure_compatible(self) -> bool:
        """Refuse to call a service whose /health version is not compatible with the
        required one. The probe is a guarded call like any other (a dead host counts toward
        its breaker, an open breaker is not probed) and its verdict holds for
        ``version_check_interval`` seconds, a failed probe's too: the attempt that probed
        fails with the probe's error, and the later ones call the API (through the breaker)
        on the last verdict known, rather than probe on every attempt. Returns True when a
        due probe had to give way to a half-open breaker's trial (not verified)."""
        if self.required_version is None:
            return False
        unverified = False
        now = time.monotonic()
        checked = self._version_checked_at
        if checked is None or now - checked >= self.version_check_interval:
            try:
                body = self.health()
            except ProbeWaits:
                # Half-open: the API call is the trial, on the last verdict known (a probe
                # that waited for it would wait for ever); probed once the breaker closes.
                body, unverified = None, True
            except (CircuitBreakerError, BulkheadFullError):
                raise  # not probed (refused, or no slot): the next admitted attempt probes
            except ServiceError:
                self._version_checked_at = now  # remembered: probed again after the interval
                raise
            if body is not None:
                reported = str(body.get("version", ""))
                self._version_problem = version_problem(reported, self.required_version)
                self._version_checked_at = now
        if self._version_problem is not None:
            raise IncompatibleServiceError(self.service, self._version_problem)
        return unverified


class PredictionServiceClient(ServiceClient):
    service = PREDICTION_SERVICE

    def get_predictions(self, pattern_id: str, context: dict[str, Any]) -> dict[str, Any]:
        return self._request(
            "POST",
            "/api/v1/predict",
            json={"pattern_id": pattern_id, "context": context},
            endpoint="predict",
        )

    def get_predictions_batch(
        self, requests: Sequence[tuple[str, dict[str, Any]]]
    ) -> list[BulkItem]:
        """Predictions for each ``(pattern_id, context)`` in one bulk call (single calls when
        the service has no bulk route): per request, its prediction set or its error."""
        pairs = list(requests)
        if not pairs:
            return []
        singles = [
            lambda pattern_id=pattern_id, context=context: self.get_predictions(pattern_id, context)
            for pattern_id, context in pairs
        ]
        body = {"requests": [{"pattern_id": p, "context": c} for p, c in pairs]}
        return self._bulk("/api/v1/predict/batch", body, "results", len(pairs), "predict", singles)


class ServiceClients:
    """The pair of clients one process uses; ``guard_for(service)`` wraps each call,
    ``limiter(endpoint)`` counts it against the shared rate limits first, and ``drill``
    (intent.drills.DrillSource) names the fault a resilience drill injects into it."""

    def __init__(
        self,
        settings: Settings,
        guard_for: Callable[[str], Guard[Any]] | None = None,
        limiter: Callable[[str], None] | None = None,
        observe: Observe | None = None,
        probe_for: Callable[[str], Guard[Any]] | None = None,
        drill: Inject | None = None,
    ):
        def guard(service: str) -> Guard[Any] | None:
            return guard_for(service) if guard_for else None

        def probe(service: str) -> Guard[Any] | None:
            return probe_for(service) if probe_for else None

        # Every task of a threads or gevent worker shares this process's sessions: room in
        # each pool for a connection per task, so none is opened and thrown away per call.
        # (One Session per client is shared by them: the calls go straight to its adapter,
        # whose urllib3 pool hands each connection to one caller at a time.)
        pool_size = max(settings.http_pool_size, pools.current().tasks_per_process)

        self.context = ContextServiceClient(
            settings.context_service_url,
            api_version=settings.context_api_version,
            connect_timeout=settings.context_connect_timeout,
            read_timeout=settings.context_read_timeout,
            pool_size=pool_size,
            trust_env=settings.http_trust_env,
            guard=guard(ContextServiceClient.service),
            probe_guard=probe(ContextServiceClient.service),
            limiter=limiter,
            observe=observe,
            drill=drill,
            required_version=settings.required_context_service_version,
            version_check_interval=settings.version_check_interval,
        )
        self.prediction = PredictionServiceClient(
            settings.prediction_service_url,
            connect_timeout=settings.prediction_connect_timeout,
            read_timeout=settings.prediction_read_timeout,
            pool_size=pool_size,
            trust_env=settings.http_trust_env,
            guard=guard(PredictionServiceClient.service),
            probe_guard=probe(PredictionServiceClient.service),
            limiter=limiter,
            observe=observe,
            drill=drill,
        )

    def close(self) -> None:
        self.context.close()
        self.prediction.close()
