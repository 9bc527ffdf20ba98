"""HTTP clients of the Context and Prediction services, mapping failures onto the error tree.

One pooled ``requests.Session`` per client per process (see :func:`service_clients`):
Sessions are not fork-safe, so a prefork child builds its own on first use.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter

from intent.errors import ServiceRequestError, ServiceUnavailableError
from intent.settings import Settings

log = logging.getLogger("intent.clients")

T = TypeVar("T")
# A guard wraps each HTTP call (the circuit breaker plugs in here): guard(send) -> result.
Guard = Callable[[Callable[[], T]], T]


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
    ):
        self.trust_env = trust_env
        self.base_url = base_url.rstrip("/")
        self.timeout = (connect_timeout, read_timeout)
        self.pool_size = pool_size
        self.guard = guard
        self.session = self._new_session()

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        # trust_env makes requests read proxy variables and .netrc from the environment on
        # every request (about 1 ms each); service-to-service calls rarely want that.
        session.trust_env = self.trust_env
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=self.pool_size, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers["Accept"] = "application/json"
        return session

    def reconnect(self) -> None:
        """Drop pooled connections and start a fresh session."""
        self.session.close()
        self.session = self._new_session()

    def close(self) -> None:
        self.session.close()

    def _request(self, method: str, path: str, json: Any = None) -> dict[str, Any]:
        def send() -> dict[str, Any]:
            return self._send(method, path, json)

        if self.guard is None:
            return send()
        result: dict[str, Any] = self.guard(send)
        return result

    def _send(self, method: str, path: str, json: Any) -> dict[str, Any]:
        url = self.base_url + path
        started = time.perf_counter()
        try:
            response = self.session.request(method, url, json=json, timeout=self.timeout)
        except requests.Timeout as exc:
            raise ServiceUnavailableError(
                self.service, f"timeout on {method} {path}: {type(exc).__name__}"
            ) from exc
        except requests.RequestException as exc:
            # Connection refused/reset, DNS, protocol errors: the service may come back.
            raise ServiceUnavailableError(
                self.service, f"connection failed on {method} {path}: {type(exc).__name__}"
            ) from exc
        status = response.status_code
        log.debug(
            "downstream request",
            extra={
                "service": self.service,
                "endpoint": path,
                "method": method,
                "status": status,
                "duration": time.perf_counter() - started,
            },
        )
        if status >= 500 or status == 429:
            raise ServiceUnavailableError(
                self.service,
                f"HTTP {status} on {method} {path}: {_detail(response)}",
                retry_after=_retry_after(response),
            )
        if status >= 400:
            raise ServiceRequestError(self.service, status, f"{method} {path}: {_detail(response)}")
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

    def health(self) -> dict[str, Any]:
        return self._send("GET", "/health", None)


class ContextServiceClient(ServiceClient):
    service = "context-service"

    def __init__(self, base_url: str, api_version: str = "v1", **kwargs: Any):
        super().__init__(base_url, **kwargs)
        self.api = f"/api/{api_version}"

    def get_context(self, context_id: str) -> dict[str, Any]:
        return self._request("GET", f"{self.api}/context/{quote(context_id, safe='')}")

    def analyze_context(self, data: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", f"{self.api}/context", json={"data": data})


class PredictionServiceClient(ServiceClient):
    service = "prediction-service"

    def get_predictions(self, pattern_id: str, context: dict[str, Any]) -> dict[str, Any]:
        return self._request(
            "POST", "/api/v1/predict", json={"pattern_id": pattern_id, "context": context}
        )


class ServiceClients:
    """The pair of clients one process uses; ``guard_for(service)`` wraps each call."""

    def __init__(self, settings: Settings, guard_for: Callable[[str], Guard[Any]] | None = None):
        def guard(service: str) -> Guard[Any] | None:
            return guard_for(service) if guard_for else None

        self.context = ContextServiceClient(
            settings.context_service_url,
            api_version=settings.context_api_version,
            connect_timeout=settings.context_connect_timeout,
            read_timeout=settings.context_read_timeout,
            pool_size=settings.http_pool_size,
            trust_env=settings.http_trust_env,
            guard=guard(ContextServiceClient.service),
        )
        self.prediction = PredictionServiceClient(
            settings.prediction_service_url,
            connect_timeout=settings.prediction_connect_timeout,
            read_timeout=settings.prediction_read_timeout,
            pool_size=settings.http_pool_size,
            trust_env=settings.http_trust_env,
            guard=guard(PredictionServiceClient.service),
        )

    def close(self) -> None:
        self.context.close()
        self.prediction.close()
