"""Serving the reference apps on real sockets (threads in this process), and a small client
of their admin routes for tests and the demo."""

from __future__ import annotations

import logging
from typing import Any

import requests

from intent.lifecycle import Background, stop_signals, wait_for
from intent.reference.app import ServiceState, make_context_app, make_prediction_app
from intent.serving import WsgiServer

logger = logging.getLogger(__name__)

# The reference apps run on the project's threaded werkzeug server.
ReferenceServer = WsgiServer


class ReferenceServices(Background):
    """The Context Service and the Prediction Service, each on its own port."""

    def __init__(
        self, host: str = "127.0.0.1", context_port: int = 0, prediction_port: int = 0
    ) -> None:
        self.context_state = ServiceState("context")
        self.prediction_state = ServiceState("prediction")
        self.context = ReferenceServer(make_context_app(self.context_state), host, context_port)
        self.prediction = ReferenceServer(
            make_prediction_app(self.prediction_state), host, prediction_port
        )

    @property
    def context_url(self) -> str:
        return self.context.url

    @property
    def prediction_url(self) -> str:
        return self.prediction.url

    def start(self) -> ReferenceServices:
        self.context.start()
        try:
            self.prediction.start()
        except BaseException:
            self.context.stop()
            raise
        return self

    def stop(self) -> None:
        self.prediction.stop()
        self.context.stop()


def run_forever(host: str, context_port: int, prediction_port: int) -> None:
    """Serve both services until SIGINT or SIGTERM (call from the main thread)."""
    with stop_signals() as stop, ReferenceServices(host, context_port, prediction_port) as services:
        print(f"context service: {services.context_url}", flush=True)
        print(f"prediction service: {services.prediction_url}", flush=True)
        wait_for(stop)


class ReferenceControl:
    """A client of one reference service's admin routes."""

    def __init__(
        self, base_url: str, timeout: float = 5.0, session: requests.Session | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        response = self.session.request(
            method, self.base_url + path, json=body, timeout=self.timeout
        )
        response.raise_for_status()
        return response.json()

    def set_faults(self, **fields: Any) -> dict[str, Any]:
        """Replace the faults (fields left out take their defaults); returns the config."""
        result: dict[str, Any] = self._call("PUT", "/_admin/faults", fields)
        return result

    def faults(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/_admin/faults")
        return result

    def clear_faults(self) -> None:
        self._call("DELETE", "/_admin/faults")

    def requests_log(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/_admin/requests")
        return result

    def clear_requests(self) -> None:
        self._call("DELETE", "/_admin/requests")

    def bump_context(self, context_id: str) -> int:
        """Move a context to its next revision (Context Service only); returns it."""
        return int(self._call("POST", f"/_admin/contexts/{context_id}/bump")["version"])

    def set_version(self, version: str) -> None:
        self._call("PUT", "/_admin/version", {"version": version})

    def set_bulk(self, enabled: bool) -> None:
        """Serve the bulk routes, or hide them (they answer 404 like unknown routes)."""
        self._call("PUT", "/_admin/bulk", {"enabled": enabled})

    def bulk_enabled(self) -> bool:
        return bool(self._call("GET", "/_admin/bulk")["enabled"])

    def close(self) -> None:
        self.session.close()
