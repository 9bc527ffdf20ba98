"""The reference services' HTTP server (intent/serving.py) over real sockets: connections
kept alive between requests, a request body the app left unread read off before the next
request, answers without a length sent chunked, a failing app, and a stop that ends the
connections it kept open."""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.wrappers import Request, Response

from intent.serving import WsgiServer

pytestmark = pytest.mark.integration


@Request.application  # type: ignore[arg-type]
def app(request: Request) -> Response:
    if request.path == "/echo":
        return Response(request.get_data(), mimetype="application/octet-stream")
    if request.path == "/ignores-body":  # answers without reading what was sent
        return Response("ignored")
    if request.path == "/stream":  # no length: the server sends it chunked

        def parts() -> Iterator[bytes]:
            yield b"one,"
            yield b""
            yield b"two"

        return Response(parts(), direct_passthrough=True)
    if request.path == "/fails":
        raise RuntimeError("the app broke")
    if request.path == "/short":  # declares more than it sends
        return Response(iter([b"abc"]), headers={"Content-Length": "10"}, direct_passthrough=True)
    return Response(f"{request.method} {request.path}")


@pytest.fixture
def server() -> Iterator[WsgiServer]:
    with WsgiServer(app) as running:  # type: ignore[arg-type]
        yield running


def _connection(server: WsgiServer) -> http.client.HTTPConnection:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    connection.connect()
    return connection


def _ask(
    connection: http.client.HTTPConnection, method: str, path: str, body: Any = None
) -> tuple[int, bytes, http.client.HTTPResponse]:
    connection.request(method, path, body=body)
    response = connection.getresponse()
    return response.status, response.read(), response


def _local_port(connection: http.client.HTTPConnection) -> int:
    assert connection.sock is not None
    return int(connection.sock.getsockname()[1])


def _raw_exchange(server: WsgiServer, sent: bytes, half_close: bool = False) -> bytes:
    """``sent`` as raw bytes on a fresh connection (``half_close``: then our side shut for
    writing); everything the server sends until it closes the connection."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(sent)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):  # ends: the server closed its side
            received += chunk
    return received


def test_requests_share_one_connection(server: WsgiServer) -> None:
    connection = _connection(server)
    port = _local_port(connection)
    for i in range(5):
        status, body, response = _ask(connection, "GET", f"/n{i}")
        assert (status, body) == (200, f"GET /n{i}".encode())
        assert response.getheader("Connection") is None
        assert _local_port(connection) == port  # the same socket answered every one
    connection.close()


def test_a_body_the_app_left_unread_does_not_become_the_next_request(
    server: WsgiServer,
) -> None:
    connection = _connection(server)
    port = _local_port(connection)
    smuggled = b"GET /smuggled HTTP/1.1\r\n\r\n"
    status, body, _ = _ask(connection, "POST", "/ignores-body", body=smuggled)
    assert (status, body) == (200, b"ignored")
    status, body, _ = _ask(connection, "POST", "/echo", body=b"payload")
    assert (status, body) == (200, b"payload")
    status, body, _ = _ask(connection, "GET", "/after")
    assert (status, body) == (200, b"GET /after")
    assert _local_port(connection) == port  # on the one connection throughout
    connection.close()


def test_an_answer_without_a_length_is_chunked_and_the_connection_goes_on(
    server: WsgiServer,
) -> None:
    connection = _connection(server)
    port = _local_port(connection)
    status, body, response = _ask(connection, "GET", "/stream")
    assert (status, body) == (200, b"one,two")
    assert response.getheader("Transfer-Encoding") == "chunked"
    assert _ask(connection, "GET", "/next")[:2] == (200, b"GET /next")
    assert _local_port(connection) == port
    connection.close()


def test_head_answers_no_body_and_keeps_the_connection(server: WsgiServer) -> None:
    connection = _connection(server)
    port = _local_port(connection)
    status, body, response = _ask(connection, "HEAD", "/x")
    assert (status, body) == (200, b"")
    assert response.getheader("Content-Length") == str(len("HEAD /x"))
    assert _ask(connection, "GET", "/y")[:2] == (200, b"GET /y")
    assert _local_port(connection) == port
    connection.close()


def test_a_failing_app_answers_500_and_closes(server: WsgiServer) -> None:
    connection = _connection(server)
    status, _, response = _ask(connection, "GET", "/fails")
    assert status == 500
    assert response.getheader("Connection") == "close"
    connection.close()
    assert _ask(_connection(server), "GET", "/ok")[:2] == (200, b"GET /ok")


def test_an_answer_shorter_than_its_length_ends_the_connection(server: WsgiServer) -> None:
    """The client cannot tell where such an answer ends: the server closes rather than
    let the next answer be read as its rest."""
    connection = _connection(server)
    connection.request("GET", "/short")
    response = connection.getresponse()
    with pytest.raises(http.client.IncompleteRead):
        response.read()
    connection.close()


def test_a_client_asking_to_close_is_answered_and_closed(server: WsgiServer) -> None:
    received = _raw_exchange(server, b"GET /bye HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert received.startswith(b"HTTP/1.1 200")
    assert b"Connection: close" in received
    assert received.endswith(b"GET /bye")


def test_stop_ends_the_connections_it_kept_open() -> None:
    """A client's kept connection is not answered by a server that stopped: a test that
    stops a service must see it gone, not served by the old connection's thread."""
    server = WsgiServer(app).start()  # type: ignore[arg-type]
    connection = _connection(server)
    assert _ask(connection, "GET", "/before")[:2] == (200, b"GET /before")
    server.stop()
    started = time.monotonic()
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        _ask(connection, "GET", "/after")
    assert time.monotonic() - started < 5
    connection.close()


def raw(environ: dict[str, Any], start_response: Any) -> Any:
    """A plain WSGI app (no werkzeug Response to tidy its answer up)."""
    path = environ["PATH_INFO"]
    if path == "/long":  # yields more than its declared length
        start_response("200 OK", [("Content-Length", "5")])
        return [b"hello", b" and more"]
    if path == "/keep":  # says keep-alive, though the server decided to close
        start_response("200 OK", [("Content-Length", "2"), ("Connection", "keep-alive")])
        return [b"ok"]
    start_response("200 OK", [("Content-Length", "5")])
    return [b"hello"]  # HEAD too: the server must not send it


@pytest.fixture
def raw_server() -> Iterator[WsgiServer]:
    with WsgiServer(raw) as running:
        yield running


def test_a_head_answer_sends_no_body_even_if_the_app_yields_one(raw_server: WsgiServer) -> None:
    """Were it sent, the next answer on the connection would start with it."""
    received = _raw_exchange(
        raw_server,
        b"HEAD /x HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    head, _, rest = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 5" in head
    assert rest.startswith(b"HTTP/1.1 200"), rest[:40]  # the GET's answer, nothing before it
    assert rest.endswith(b"\r\n\r\nhello")


def test_an_answer_longer_than_its_length_is_cut_to_it_and_the_connection_ends(
    raw_server: WsgiServer,
) -> None:
    two = b"GET /long HTTP/1.1\r\nHost: x\r\n\r\nGET /x HTTP/1.1\r\nHost: x\r\n\r\n"
    received = _raw_exchange(raw_server, two)
    head, _, body = received.partition(b"\r\n\r\n")
    assert body == b"hello"  # nothing of the surplus, and no second answer on the connection
    assert head.startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("length", ["-1", "+4", "1_0", "4, 4"])
def test_a_request_whose_length_is_not_a_length_is_answered_and_the_connection_closed(
    raw_server: WsgiServer, length: str
) -> None:
    """The body of such a request must not be read as the next request (smuggling)."""
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    received = _raw_exchange(
        raw_server,
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: %s\r\n\r\n%s"
        % (length.encode(), smuggled),
    )
    assert received.count(b"HTTP/1.1 ") == 1, received
    assert b"Connection: close" in received


def test_an_http_1_0_client_is_closed_whatever_the_app_says(raw_server: WsgiServer) -> None:
    received = _raw_exchange(raw_server, b"GET /keep HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert b"Connection: close" in received
    assert received.endswith(b"ok")


def test_a_body_broken_off_mid_way_ends_the_connection_quietly(
    server: WsgiServer, capfd: pytest.CaptureFixture[str]
) -> None:
    """The app answers without reading the body; reading off the rest meets the client's
    end: the connection closes, with no traceback from the server."""
    cut_short = b"POST /ignores-body HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nshort"
    received = _raw_exchange(server, cut_short, half_close=True)
    assert received.startswith(b"HTTP/1.1 200")
    time.sleep(0.2)
    assert "Traceback" not in capfd.readouterr().err


def test_a_connection_accepted_as_the_server_stops_is_ended() -> None:
    """Its handler registers it after stop() ended the others: it is shut then."""
    from intent.serving import _Connections

    connections = _Connections()
    connections.close_all()
    ours, theirs = socket.socketpair()
    connections.add(ours)
    theirs.settimeout(2)
    assert theirs.recv(16) == b""  # shut at once
    ours.close()
    theirs.close()


def test_a_server_started_again_serves_again() -> None:
    server = WsgiServer(app).start()  # type: ignore[arg-type]
    port = server.port
    server.stop()
    server.port = port
    server.start()
    try:
        assert _ask(_connection(server), "GET", "/again")[:2] == (200, b"GET /again")
    finally:
        server.stop()
