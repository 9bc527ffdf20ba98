"""A WSGI app on a real socket, in a background thread.

- :class:`WsgiServer`: werkzeug's threaded server keeping connections alive and without an
  access-log line per request; serves the reference services in tests and benchmarks.
- :class:`TornadoWsgiServer`: Tornado's HTTP server, a production server; serves the
  admin endpoint (`intent admin`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from wsgiref.types import WSGIApplication

from werkzeug.exceptions import HTTPException
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wsgi import LimitedStream

from intent.lifecycle import Background

logger = logging.getLogger(__name__)

_LISTEN_BACKLOG = 1024  # benchmarks open many short connections at once


_IDLE_SECONDS = 75.0  # as nginx's keepalive_timeout: an idle kept connection then ends
_DRAIN_LIMIT = 1 << 20  # an unread request body up to this is read off; a longer one closes


class _Connections:
    """The sockets a server's handlers hold open, so that stopping the server ends them: a
    client's kept connection must not go on being answered by a server that stopped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._closed = False

    def add(self, connection: socket.socket) -> None:
        with self._lock:
            if not self._closed:
                self._open.add(connection)
                return
        _shut(connection)  # accepted as the server stopped: its handler starts after it

    def discard(self, connection: socket.socket) -> None:
        with self._lock:
            self._open.discard(connection)

    def close_all(self) -> None:
        with self._lock:
            connections, self._open, self._closed = self._open, set(), True
        for connection in connections:
            _shut(connection)


def _shut(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)


class _QuietHandler(WSGIRequestHandler):
    """Werkzeug's handler, keeping the connection open between requests (HTTP/1.1
    keep-alive, as production servers do) and without the access-log line per request.

    Werkzeug's own ``run_wsgi`` closes every connection after its answer; this one answers
    with a length (or chunked) and, once the answer is out, reads off what the app left of
    the request's body, so the next request on the connection starts where it should."""

    # Set here so werkzeug does not patch the class attribute itself.
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # an answer goes out in one segment, not after an ACK
    timeout = _IDLE_SECONDS  # a connection idle (or a request body stalled) this long ends
    connections: _Connections  # set on the class start() makes for each server

    def setup(self) -> None:
        super().setup()
        self.connections.add(self.connection)

    def finish(self) -> None:
        self.connections.discard(self.connection)
        super().finish()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass

    def log_error(self, format: str, *args: Any) -> None:
        if format.startswith("Request timed out"):
            return  # an idle kept connection ending after _IDLE_SECONDS: not an error
        super().log_error(format, *args)

    def run_wsgi(self) -> None:
        if self.headers.get("Expect", "").lower().strip(" \t") == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.environ = environ = self.make_environ()
        body = self._request_body(environ)
        if self.request_version != "HTTP/1.1":
            self.close_connection = True  # HTTP/1.0 keep-alive is not offered
        answer = _Answer(self)
        try:
            chunks = self.server.app(environ, answer.start_response)
            try:
                for chunk in chunks:
                    answer.write(chunk)
                answer.end()
            finally:
                if hasattr(chunks, "close"):
                    chunks.close()
        except (ConnectionError, TimeoutError):
            raise  # the client went away: werkzeug's handle() ends the connection quietly
        except Exception:
            self.close_connection = True
            if answer.started:
                logger.exception("%s %s: the app failed mid-answer", self.command, self.path)
                return
            logger.exception("%s %s: the app failed", self.command, self.path)
            answer.error()
            return
        if not self.close_connection and not _drained(body):
            self.close_connection = True

    def send_header(self, keyword: str, value: str) -> None:
        # The stdlib's would let an app's "Connection: keep-alive" undo a close decided here
        # (HTTP/1.0, a doubtful length); only a close is taken from the app.
        if keyword.lower() == "connection":
            if "close" not in value.lower():
                return
            self.close_connection = True
        super().send_header(keyword, value)

    def _request_body(self, environ: dict[str, Any]) -> Any:
        """The request's body as a stream that ends where the body ends."""
        declared = self.headers.get_all("Content-Length") or []
        coding = self.headers.get("Transfer-Encoding")
        if environ.get("wsgi.input_terminated"):
            if declared or (coding or "").strip().lower() != "chunked":
                self.close_connection = True  # where this body ends is in doubt
            return environ["wsgi.input"]  # chunked: werkzeug's dechunking stream
        length = 0
        if coding is not None or len(declared) > 1:
            self.close_connection = True  # a coding not understood, or two lengths
        elif declared and declared[0].strip().isascii() and declared[0].strip().isdigit():
            length = int(declared[0])
        elif declared:
            self.close_connection = True  # "-1", "+4", "1_0": not a length
        stream = LimitedStream(self.rfile, length)  # type: ignore[arg-type]
        environ["wsgi.input"] = stream
        environ["wsgi.input_terminated"] = True
        return stream


def _drained(body: Any) -> bool:
    """Read off up to :data:`_DRAIN_LIMIT` bytes the app left of a request's body; False
    when more is left, or the body cannot be read to its end (a client gone, a malformed
    chunk): the connection then closes."""
    left = _DRAIN_LIMIT
    try:
        while left > 0:
            data = body.read(min(left, 65536))
            if not data:
                return True
            left -= len(data)
        return not body.read(1)
    except (OSError, ValueError, HTTPException):  # ClientDisconnected is an HTTPException
        return False


class _Answer:
    """One response on a kept-alive connection: its status and headers go out with the
    first chunk of the body; without a Content-Length the body is sent chunked."""

    def __init__(self, handler: _QuietHandler) -> None:
        self.handler = handler
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.started = False
        self.chunked = False
        self.bodiless = False
        self.length: int | None = None
        self.sent = 0

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None and self.started:
            raise exc_info[1].with_traceback(exc_info[2])
        self.status, self.headers = status, headers
        return self.write

    def write(self, data: bytes) -> None:
        if not self.started:
            self._send_head(data)
        elif self.bodiless or not data:
            return  # HEAD, 1xx, 204, 304: what an app yields is not sent
        elif self.chunked:
            self.handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            if self.length is not None and self.sent + len(data) > self.length:
                data = data[: self.length - self.sent]  # more than it said: the rest is not
                self.handler.close_connection = True  # sent, nor read as the next answer
            self.sent += len(data)
            if data:
                self.handler.wfile.write(data)

    def end(self) -> None:
        if not self.started:
            self._send_head(b"")
        if self.chunked:
            self.handler.wfile.write(b"0\r\n\r\n")
        elif self.length is not None and self.sent != self.length:
            self.handler.close_connection = True  # the client cannot tell where it ends

    def error(self) -> None:
        self.handler._headers_buffer = []  # type: ignore[attr-defined]  # a head half-made
        body = b"Internal Server Error"
        self.status = "500 INTERNAL SERVER ERROR"
        self.headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        self.write(body)
        self.end()

    def _send_head(self, data: bytes) -> None:
        assert self.status is not None, "write() before start_response"
        handler = self.handler
        code_text, _, reason = self.status.partition(" ")
        code = int(code_text)
        handler.send_response(code, reason)
        declared = None
        for key, value in self.headers:
            handler.send_header(key, value)
            if key.lower() == "content-length":
                declared = value
        self.bodiless = handler.command == "HEAD" or 100 <= code < 200 or code in (204, 304)
        if self.bodiless:
            pass  # a length, if given, is the GET's: nothing follows the head
        elif declared is not None:
            self.length = int(declared)
        elif handler.request_version != "HTTP/1.1":
            pass  # an HTTP/1.0 client knows no chunks: the body ends with the connection
        else:
            self.chunked = True
            handler.send_header("Transfer-Encoding", "chunked")
        if handler.close_connection:
            handler.send_header("Connection", "close")
        handler.end_headers()
        self.started = True
        self.write(data)


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
        self._connections = _Connections()

    def start(self) -> WsgiServer:
        """Bind (port 0: a free port), serve in the background; sets ``port`` and ``url``."""
        if self._server is not None:
            return self
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # Bind here rather than in werkzeug: its server prints and calls sys.exit(1) when
        # the port is taken, where a library should raise OSError.
        self._connections = connections = _Connections()  # a restart's: not the stopped one's
        listener = socket.create_server(
            (self.host, self.port), family=family, backlog=_LISTEN_BACKLOG
        )
        try:
            server = make_server(
                self.host,
                self.port,
                self.app,
                threaded=True,
                request_handler=type("_Handler", (_QuietHandler,), {"connections": connections}),
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
        """Stop accepting, close the listening socket, end the connections kept open and
        wait for the serving thread."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        self._connections.close_all()
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
