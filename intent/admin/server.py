"""``intent admin``: the admin app on Tornado's HTTP server until SIGINT or SIGTERM."""

from __future__ import annotations

import logging
from wsgiref.types import WSGIApplication

from intent.serving import TornadoWsgiServer, stop_signals, wait_for

log = logging.getLogger("intent.admin")


def serve(app: WSGIApplication, host: str, port: int) -> None:
    """Serve ``app`` on ``host:port`` until SIGINT or SIGTERM (call from the main thread)."""
    with stop_signals() as stop, TornadoWsgiServer(app, host, port) as server:
        log.info("admin endpoint listening on %s", server.url, extra={"url": server.url})
        print(f"admin endpoint: {server.url}", flush=True)
        wait_for(stop)
