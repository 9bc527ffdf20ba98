"""``intent admin``: the admin app on Tornado's HTTP server until SIGINT or SIGTERM."""

from __future__ import annotations

import logging
from wsgiref.types import WSGIApplication

from intent.admin.app import MAX_BODY_BYTES
from intent.lifecycle import stop_signals, wait_for
from intent.serving import TornadoWsgiServer

log = logging.getLogger("intent.admin")


def serve(app: WSGIApplication, host: str, port: int) -> None:
    """Serve ``app`` on ``host:port`` until SIGINT or SIGTERM (call from the main thread)."""
    server = TornadoWsgiServer(app, host, port, max_body=MAX_BODY_BYTES)
    with stop_signals() as stop, server:
        log.info("admin endpoint listening on %s", server.url, extra={"url": server.url})
        print(f"admin endpoint: {server.url}", flush=True)
        wait_for(stop)
