"""Raw RESP (intent/resp.py) against a real server: what the breaker's EVALSHA path and the
consumer's pipelined reads rely on of redis-py's connections."""

from __future__ import annotations

import pytest
import redis

from intent import resp
from intent.embedded import EmbeddedRedis
from intent.settings import get_settings

SCRIPT = "return {KEYS[1], ARGV[1], redis.call('INCRBY', KEYS[1], ARGV[1])}"


def key(name: str) -> str:
    return f"{get_settings().key_prefix}resp-test:{name}"  # removed by the redis_client fixture


def evalsha(sha: str, keys: list[str], *args: object) -> bytes:
    return resp.evalsha_head(sha, keys, len(args)) + b"".join(
        resp.bulk(resp.encode(arg)) for arg in args
    )


def test_an_outside_connection_runs_a_script_as_the_client_would(
    redis_client: redis.Redis,
) -> None:
    sha = redis_client.script_load(SCRIPT)
    pool = resp.plain_pool(redis_client)
    assert pool is not None
    connection = resp.RawConnection.outside(pool)
    try:
        connection.send(evalsha(sha, [key("n")], 5))
        assert connection.read() == [key("n"), "5", 5]  # decoded as the client decodes
        connection.send(evalsha(sha, [key("n")], 2))
        assert connection.read() == [key("n"), "2", 7]
    finally:
        connection.disconnect()
    assert redis_client.get(key("n")) == "7"


def test_an_error_reply_leaves_the_connection_in_step(redis_client: redis.Redis) -> None:
    pool = resp.plain_pool(redis_client)
    assert pool is not None
    connection = resp.RawConnection.outside(pool)
    try:
        connection.send(evalsha("0" * 40, [key("n")], 1))
        with pytest.raises(redis.exceptions.NoScriptError):  # a ResponseError, read whole
            connection.read()
        connection.send(resp.request("PING"))
        assert connection.read() == "PONG"  # raw: no response callbacks
    finally:
        connection.disconnect()


def test_pipelined_commands_on_a_checked_out_connection_answer_in_order(
    redis_client: redis.Redis,
) -> None:
    stream = key("stream")
    redis_client.xgroup_create(stream, "g", id="0", mkstream=True)
    first = redis_client.xadd(stream, {"n": "1"})
    pool = resp.plain_pool(redis_client)
    assert pool is not None
    connection = resp.RawConnection.checked_out(pool)
    read = ("XREADGROUP", "GROUP", "g", "c", "COUNT", 10, "BLOCK", 100, "STREAMS", stream, ">")
    connection.send_commands([read])
    assert connection.read() == [[stream, [[first, ["n", "1"]]]]]  # RESP2, uncooked
    second = redis_client.xadd(stream, {"n": "2"})
    # The previous batch's XACK rides with the next read: two replies, in order.
    connection.send_commands([("XACK", stream, "g", first), read])
    assert connection.read() == 1
    assert connection.read() == [[stream, [[second, ["n", "2"]]]]]
    connection.check_in(pool)
    assert redis_client.xpending(stream, "g")["pending"] == 1  # the second, not yet acked


def test_a_connection_to_a_restarted_server_fails_then_a_new_one_works() -> None:
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url, socket_timeout=2)
        pool = resp.plain_pool(client)
        assert pool is not None
        stale = resp.RawConnection.outside(pool)
        stale.send(resp.request("PING"))
        assert stale.read() == b"PONG"
        server.stop()
        server.start()
        with pytest.raises(redis.ConnectionError):  # the old socket is gone
            stale.send(resp.request("PING"))
            stale.read()
        stale.disconnect()
        fresh = resp.RawConnection.outside(pool)
        fresh.send(resp.request("PING"))
        assert fresh.read() == b"PONG"
        fresh.disconnect()
        client.close()
