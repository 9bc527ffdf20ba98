"""The HTTP exchange cut at the step's time limit (intent/httpcut.py), against real HTTP
servers on loopback: a keep-alive one (the standard library's, HTTP/1.1) and one that
answers without a length, its body ending when it closes the connection."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from intent import pools
from intent.clients import ServiceClient
from intent.errors import TimeLimitReached
from intent.httpcut import cut_at_limit

pytestmark = pytest.mark.integration


class KeepAlive(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    connections: set[int] = set()

    def do_GET(self) -> None:
        KeepAlive.connections.add(id(self.connection))
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def keep_alive() -> Iterator[str]:
    KeepAlive.connections = set()
    server = ThreadingHTTPServer(("127.0.0.1", 0), KeepAlive)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def no_length() -> Iterator[str]:
    """Answers with headers at once, then a byte of JSON every 0.1 s, no Content-Length:
    the body ends where the connection does."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n")
            for byte in b'{"ok": true, "padding": "' + b"x" * 200 + b'"}':
                if stop.wait(0.1):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()


def test_a_body_without_a_length_cut_at_the_limit_is_the_time_limit(no_length: str) -> None:
    """The shut socket ends such a body as its server's close would: the client reports
    the step's time limit, not a truncated answer ("not JSON", a permanent error)."""
    client = ServiceClient(no_length, connect_timeout=1, read_timeout=5)
    started = time.monotonic()
    with pools.step_time_limit(0.5), pytest.raises(TimeLimitReached):
        client._request("GET", "/anything", endpoint="anything")
    assert time.monotonic() - started < 3  # the body alone takes over 20 s


def test_a_connection_given_back_to_its_pool_is_not_cut_for_the_exchange_it_served(
    keep_alive: str,
) -> None:
    """urllib3 gives a kept-alive connection back as the body's end is read, before the
    exchange's timer is cancelled; a timer firing then must not shut it: another exchange
    may be using it already."""
    client = ServiceClient(keep_alive, connect_timeout=1, read_timeout=5)
    with pools.step_time_limit(5):
        with cut_at_limit() as cut:
            session = client.session
            assert session.get(f"{keep_alive}/one", timeout=(1, 5)).json() == {"ok": True}
            assert cut.sockets == []  # given back with the body's end
            cut.fire()  # the timer, at that very moment
        assert cut.fired
        # The next exchange on the same kept connection: it was not shut.
        assert session.get(f"{keep_alive}/two", timeout=(1, 5)).json() == {"ok": True}
    assert len(KeepAlive.connections) == 1


def test_every_exchange_is_armed_on_one_cutting_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """A threads worker makes many calls a second: their cuts share the process's one
    cutting thread rather than start a timer thread each, and an exchange that ended is
    not cut when its time comes."""
    from werkzeug.wrappers import Response

    from intent import httpcut
    from intent.serving import WsgiServer

    def answer(environ: Any, start_response: Any) -> Any:
        return Response('{"ok": true}', mimetype="application/json")(environ, start_response)

    with WsgiServer(answer) as server:  # keeps the connection alive
        client = ServiceClient(server.url, connect_timeout=1, read_timeout=5)
        assert client._request("GET", "/warm") == {"ok": True}  # its connection, made
        started: list[str] = []
        start = threading.Thread.start

        def counted(self: threading.Thread) -> None:
            started.append(self.name)
            start(self)

        monkeypatch.setattr(threading.Thread, "start", counted)
        cuts = []
        began = time.monotonic()
        with pools.step_time_limit(1.0):
            for _ in range(30):
                with cut_at_limit() as cut:
                    assert client._request("GET", "/n") == {"ok": True}
                cuts.append(cut)
        assert time.monotonic() - began < 1.0, "the calls outlasted the limit: too slow here"
        assert [name for name in started if name != "intent-http-cut"] == []
        assert started.count("intent-http-cut") <= 1  # at most the first use starts it
        assert httpcut._CUTTER.armed() == 0  # every exchange ended: nothing left to cut
        time.sleep(max(0.0, began + 1.3 - time.monotonic()))  # past every cut's time
        assert not any(cut.fired for cut in cuts)
        assert client._request("GET", "/after") == {"ok": True}  # the kept connection
        client.close()


def test_an_exchange_through_a_proxy_is_cut_at_the_limit(
    no_length: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``trust_env`` and ``HTTP_PROXY``, the exchange runs on the proxy's pool: its
    trickling answer is cut at the step's limit as a direct one is."""
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", no_length)  # the proxy answers, a byte at a time
    monkeypatch.setenv("http_proxy", no_length)
    client = ServiceClient(
        "http://context.internal.example", connect_timeout=1, read_timeout=5, trust_env=True
    )
    started = time.monotonic()
    with pools.step_time_limit(0.5), pytest.raises(TimeLimitReached):
        client._request("GET", "/anything", endpoint="anything")
    assert time.monotonic() - started < 3  # the body alone takes over 20 s
    assert client.session.get_adapter("http://x").proxy_manager  # it went through the proxy


def test_a_cut_that_fails_to_fire_leaves_the_cutting_thread_to_fire_the_others() -> None:
    from intent import httpcut

    class Failing(httpcut.Cut):
        def fire(self) -> None:
            raise RuntimeError("a socket-like object that cannot be shut")

    failing, after = Failing(), httpcut.Cut()
    httpcut._CUTTER.arm(failing, 0.05)
    httpcut._CUTTER.arm(after, 0.2)
    deadline = time.monotonic() + 5
    while not after.fired and time.monotonic() < deadline:
        time.sleep(0.02)
    assert after.fired
    assert httpcut._CUTTER._thread is not None and httpcut._CUTTER._thread.is_alive()


def test_a_forked_child_does_not_fire_its_parents_cuts() -> None:
    """The child shares the parent's sockets: were it to fire the parent's cuts, it would
    shut a connection the parent's next exchange uses."""
    import os

    from intent import httpcut

    ours, theirs = socket.socketpair()
    cut = httpcut.Cut()
    cut.add(ours)
    httpcut._CUTTER.arm(cut, 0.3)
    pid = os.fork()
    if pid == 0:  # the child: its own cut starts its cutting thread; it outlives the parent's
        code = 1
        try:
            own = httpcut.Cut()
            httpcut._CUTTER.arm(own, 0.05)
            time.sleep(0.8)
            code = 0 if own.fired and httpcut._CUTTER.armed() == 0 else 2
        finally:
            os._exit(code)
    cut.end()  # the parent's exchange is over; its connection goes on serving
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    ours.sendall(b"still open")
    assert theirs.recv(64) == b"still open"
    assert not cut.fired
    ours.close()
    theirs.close()
