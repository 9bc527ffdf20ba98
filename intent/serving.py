"""A WSGI app on a real socket: werkzeug's threaded server in a daemon thread, without an
access-log line per request. Serves the reference services and the admin endpoint."""

from __future__ import annotations

import socket
import threading
from types import TracebackType
from wsgiref.types import WSGIApplication

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

_LISTEN_BACKLOG = 1024  # benchmarks open many short connections at once


class _QuietHandler(WSGIRequestHandler):
    """Werkzeug's handler without the access-log line per request."""

    # Set here so werkzeug does not patch the class attribute itself.
    protocol_version = "HTTP/1.1"

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):  # noqa: S104 - a wildcard bind is reached via loopback
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class WsgiServer:
    """One WSGI app served by werkzeug's threaded server in a daemon thread."""

    def __init__(self, app: WSGIApplication, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.url = ""
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> WsgiServer:
        """Bind (port 0: a free port), serve in the background; sets ``port`` and ``url``."""
        if self._server is not None:
            return self
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # Bind here rather than in werkzeug: its server prints and calls sys.exit(1) when
        # the port is taken, where a library should raise OSError.
        listener = socket.create_server(
            (self.host, self.port), family=family, backlog=_LISTEN_BACKLOG
        )
        try:
            server = make_server(
                self.host,
                self.port,
                self.app,
                threaded=True,
                request_handler=_QuietHandler,
                fd=listener.fileno(),
            )
        finally:
            listener.close()  # the server holds its own duplicate of the descriptor
        self._server = server
        self.port = server.port
        self.url = f"http://{_url_host(self.host)}:{self.port}"
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"http-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, close the listening socket and wait for the serving thread."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> WsgiServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
