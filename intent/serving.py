"""A WSGI app on a real socket, in a background thread.

- :class:`WsgiServer`: werkzeug's threaded server without an access-log line per request
  (a connection per request); serves the reference services in tests and benchmarks.
- :class:`TornadoWsgiServer`: Tornado's HTTP server, a production server; serves the
  admin endpoint (`intent admin`).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from wsgiref.types import WSGIApplication

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from intent.lifecycle import Background

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


class WsgiServer(Background):
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


def _limited_server(container: Any, max_body: int, **kwargs: Any) -> Any:
    """Tornado's HTTP server, answering 413 to a body over ``max_body`` bytes before it is
    read (a declared Content-Length) or as soon as it passes the limit (a chunked body):
    an unauthenticated client cannot make the server buffer it, and the app never sees it.
    """
    from tornado import httputil
    from tornado.httpserver import HTTPServer

    class Limited(httputil.HTTPMessageDelegate):
        def __init__(self, inner: Any, connection: Any):
            self.inner, self.connection = inner, connection
            self.size, self.refused = 0, False

        def headers_received(self, start_line: Any, headers: Any) -> Any:
            declared = headers.get("Content-Length")
            if declared is not None and declared.strip().isdigit() and int(declared) > max_body:
                return self.refuse()
            return self.inner.headers_received(start_line, headers)

        def data_received(self, chunk: bytes) -> Any:
            if self.refused:
                return None
            self.size += len(chunk)
            if self.size > max_body:
                return self.refuse()
            return self.inner.data_received(chunk)

        def finish(self) -> None:
            if not self.refused:
                self.inner.finish()

        def on_connection_close(self) -> None:
            if not self.refused:
                self.inner.on_connection_close()

        def refuse(self) -> None:
            self.refused = True
            body = b'{"error": "the body is larger than %d bytes"}' % max_body
            headers = httputil.HTTPHeaders(
                {
                    "Content-Type": "application/json",
                    "Content-Length": str(len(body)),
                    "Connection": "close",
                }
            )
            start = httputil.ResponseStartLine("HTTP/1.1", 413, "Content Too Large")
            self.connection.write_headers(start, headers, body)
            self.connection.finish()
            self.connection.close()

    class Server(HTTPServer):
        def start_request(self, server_conn: object, request_conn: Any) -> Any:
            return Limited(super().start_request(server_conn, request_conn), request_conn)

    # Tornado's own bound well above ours (it answers 400): ours answers first, with 413.
    return Server(container, max_body_size=2 * max_body + 65536, **kwargs)


class TornadoWsgiServer(Background):
    """One WSGI app on Tornado's HTTP server (keep-alive, a production server), its IO loop
    in a daemon thread and the app on a thread pool. The same interface as WsgiServer.
    A request body over ``max_body`` bytes is answered 413 before it is read."""

    def __init__(
        self,
        app: WSGIApplication,
        host: str = "127.0.0.1",
        port: int = 0,
        threads: int = 8,
        max_body: int = 1 << 20,
    ) -> None:
        self.max_body = max_body
        self.app = app
        self.host = host
        self.port = port
        self.threads = threads
        self.url = ""
        self._loop: Any = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._executor: ThreadPoolExecutor | None = None

    def start(self) -> TornadoWsgiServer:
        """Bind (port 0: a free port), serve in the background; sets ``port`` and ``url``."""
        if self._thread is not None:
            return self
        from tornado.ioloop import IOLoop
        from tornado.netutil import bind_sockets
        from tornado.wsgi import WSGIContainer

        # Bound here, so a taken port raises OSError in the caller.
        sockets = bind_sockets(self.port, self.host, backlog=_LISTEN_BACKLOG)
        self.port = sockets[0].getsockname()[1]
        self.url = f"http://{_url_host(self.host)}:{self.port}"
        self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix=f"http-{self.port}")
        ready = threading.Event()
        failed: list[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(asyncio.new_event_loop())
            try:
                self._loop = IOLoop.current()
                container = WSGIContainer(self.app, executor=self._executor)
                self._server = _limited_server(container, self.max_body, xheaders=False)
                self._server.add_sockets(sockets)
            except BaseException as exc:  # reported to start() below
                failed.append(exc)
                ready.set()
                return
            ready.set()
            self._loop.start()
            self._loop.close(all_fds=True)

        self._thread = threading.Thread(target=serve, name=f"http-{self.port}", daemon=True)
        self._thread.start()
        ready.wait()
        if failed:
            self._thread = None
            raise failed[0]
        return self

    def stop(self) -> None:
        """Stop accepting, close the listening sockets and wait for the loop's thread."""
        thread, self._thread = self._thread, None
        if thread is None:
            return

        def shutdown() -> None:
            self._server.stop()
            self._loop.stop()

        self._loop.add_callback(shutdown)
        thread.join(timeout=5)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
