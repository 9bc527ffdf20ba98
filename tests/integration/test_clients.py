"""ServiceClient against a real HTTP server answering crafted responses: what is sent, and
how each kind of answer maps onto the error tree, on both request paths (the session's
adapter directly, and ``Session.request`` when trust_env is on)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.wrappers import Request, Response

from intent.clients import ServiceClient
from intent.embedded import free_port
from intent.errors import ServiceRequestError, ServiceUnavailableError
from intent.serving import WsgiServer

pytestmark = pytest.mark.integration

seen: list[dict[str, Any]] = []


@Request.application  # type: ignore[arg-type]
def crafted(request: Request) -> Response:
    seen.append(
        {
            "method": request.method,
            "path": request.path,
            "accept": request.headers.get("Accept"),
            "content_type": request.headers.get("Content-Type"),
            "body": request.get_data(as_text=True),
        }
    )
    if request.path == "/redirect":
        return Response("", status=302, headers={"Location": "http://elsewhere/x"})
    if request.path == "/busy":
        return Response('{"error": "busy"}', status=503, headers={"Retry-After": "7"})
    if request.path == "/stalls":
        # Headers at once, then the body only after the client's read timeout.
        def body() -> Iterator[bytes]:
            yield b'{"ok": '
            time.sleep(1.5)
            yield b"true}"

        return Response(body(), mimetype="application/json", headers={"Content-Length": "12"})
    if request.path == "/text":
        return Response("plain text", status=200)
    return Response(json.dumps({"ok": True}), mimetype="application/json")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with WsgiServer(crafted) as running:  # type: ignore[arg-type]
        yield running.url


@pytest.fixture(params=[False, True], ids=["adapter", "trust_env"])
def client(request: pytest.FixtureRequest, server: str) -> ServiceClient:
    seen.clear()
    return ServiceClient(server, connect_timeout=2, read_timeout=2, trust_env=request.param)


def test_json_is_posted_and_accept_is_sent(client: ServiceClient) -> None:
    assert client._request("POST", "/api", json={"a": [1, 2]}) == {"ok": True}
    (request,) = seen
    assert request["method"] == "POST"
    assert request["accept"] == "application/json"
    assert request["content_type"] == "application/json"
    assert json.loads(request["body"]) == {"a": [1, 2]}


def test_a_redirect_is_refused_not_followed(client: ServiceClient) -> None:
    with pytest.raises(ServiceRequestError) as raised:
        client._request("GET", "/redirect")
    assert raised.value.status == 302
    assert "redirect to http://elsewhere/x not followed" in str(raised.value)
    assert [r["path"] for r in seen] == ["/redirect"]


def test_503_is_transient_with_its_retry_after(client: ServiceClient) -> None:
    with pytest.raises(ServiceUnavailableError) as raised:
        client._request("GET", "/busy")
    assert raised.value.retry_after == 7.0


def test_a_body_that_stalls_is_a_transient_failure(server: str) -> None:
    for trust_env in (False, True):
        slow = ServiceClient(server, connect_timeout=1, read_timeout=0.5, trust_env=trust_env)
        with pytest.raises(ServiceUnavailableError):
            slow._request("GET", "/stalls")


def test_a_body_that_is_not_json_is_permanent(client: ServiceClient) -> None:
    with pytest.raises(ServiceRequestError, match="not JSON"):
        client._request("GET", "/text")


def test_a_refused_connection_is_transient() -> None:
    for trust_env in (False, True):
        dead = ServiceClient(f"http://127.0.0.1:{free_port()}", trust_env=trust_env)
        with pytest.raises(ServiceUnavailableError, match="connection failed"):
            dead._request("GET", "/api")


def test_reconnect_drops_the_pooled_connections_and_calls_go_on(client: ServiceClient) -> None:
    """The guide's recovery procedure (``service_client.reconnect()``)."""
    assert client._request("GET", "/api") == {"ok": True}
    old = client.session
    old_adapter = old.get_adapter(client.base_url)
    assert len(old_adapter.poolmanager.pools) == 1  # the pooled connection to the server
    client.reconnect()
    assert client.session is not old
    assert len(old_adapter.poolmanager.pools) == 0  # closed: no socket left behind
    # The fresh session is set up as the first was.
    assert client.session.trust_env == old.trust_env
    adapter = client.session.get_adapter(client.base_url)
    assert adapter is not old_adapter and adapter._pool_maxsize == client.pool_size
    assert client.session.headers["Accept"] == "application/json"
    assert client._request("GET", "/api") == {"ok": True}
    assert [r["path"] for r in seen] == ["/api", "/api"]


def closing(environ: dict[str, Any], start_response: Any) -> Any:
    """``crafted``, answering ``Connection: close``: the server ends each connection."""

    def closed(status: str, headers: list[tuple[str, str]], *exc: Any) -> Any:
        return start_response(status, [*headers, ("Connection", "close")], *exc)

    return crafted(environ, closed)


@pytest.mark.parametrize("trust_env", [False, True], ids=["adapter", "trust_env"])
def test_a_server_that_keeps_connections_alive_gets_one_connection_for_every_call(
    trust_env: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pooled session reuses its connection where the server allows it: Tornado's
    server (as the admin endpoint runs) and the reference services' server; where the
    server closes each connection after its answer, each call opens one."""
    import urllib3.connection

    from intent.serving import TornadoWsgiServer

    opened: list[tuple[str, int]] = []
    connect = urllib3.connection.HTTPConnection.connect

    def counted(self: urllib3.connection.HTTPConnection) -> None:
        opened.append((self.host, self.port))
        connect(self)

    monkeypatch.setattr(urllib3.connection.HTTPConnection, "connect", counted)
    with (
        TornadoWsgiServer(crafted) as tornado,  # type: ignore[arg-type]
        WsgiServer(crafted) as keeping,  # type: ignore[arg-type]
        WsgiServer(closing) as ending,
    ):
        for server, connections in ((tornado, 1), (keeping, 1), (ending, 10)):
            opened.clear()
            client = ServiceClient(
                server.url, connect_timeout=2, read_timeout=2, trust_env=trust_env
            )
            for _ in range(10):
                assert client._request("GET", "/api") == {"ok": True}
            assert opened == [("127.0.0.1", server.port)] * connections, server.url
            client.close()
