"""``intent admin``: the admin app on Tornado's HTTP server until SIGINT or SIGTERM."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from wsgiref.types import WSGIApplication

from intent.serving import TornadoWsgiServer

log = logging.getLogger("intent.admin")


def serve(app: WSGIApplication, host: str, port: int) -> None:
    """Serve ``app`` on ``host:port`` until SIGINT or SIGTERM (call from the main thread)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with TornadoWsgiServer(app, host, port) as server:
            log.info("admin endpoint listening on %s", server.url, extra={"url": server.url})
            print(f"admin endpoint: {server.url}", flush=True)
            while not stop.wait(0.5):  # a timed wait: the main thread runs the handler
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
