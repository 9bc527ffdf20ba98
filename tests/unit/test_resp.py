"""The RESP framing of intent/resp.py is what redis-py itself would send (no I/O)."""

from __future__ import annotations

import pytest
import redis
from redis.connection import Connection
from redis.utils import HIREDIS_AVAILABLE

from intent import resp


def packed(*args: object) -> bytes:
    """redis-py's own encoding of one command."""
    return b"".join(Connection().pack_command(*args))


def test_a_request_is_framed_as_redis_py_frames_it() -> None:
    assert resp.request("SET", "k", b"v\r\n", 3) == packed("SET", "k", b"v\r\n", 3)
    assert resp.request("PING") == b"*1\r\n$4\r\nPING\r\n"


def test_an_evalsha_head_and_its_arguments_make_the_whole_command() -> None:
    sha, keys, args = "a" * 40, ["{x}:a", "{x}:b"], [b"1", "two", 3.5]
    frame = resp.evalsha_head(sha, keys, len(args)) + b"".join(
        resp.bulk(resp.encode(a)) for a in args
    )
    assert frame == packed("EVALSHA", sha, 2, *keys, *args)


def test_bulk_and_encode() -> None:
    assert resp.bulk(b"") == b"$0\r\n\r\n"
    assert resp.bulk("é".encode()) == b"$2\r\n\xc3\xa9\r\n"  # a length in bytes
    assert resp.encode(b"raw") == b"raw" and resp.encode(7) == b"7" and resp.encode("s") == b"s"


def test_raw_resp_goes_only_over_a_plain_pool() -> None:
    client = redis.Redis.from_url("redis://127.0.0.1:1/0")
    assert resp.plain_pool(client) is client.connection_pool
    assert resp.plain_pool(object()) is None  # a stand-in: through its commands


def test_an_outside_connection_takes_the_pools_settings_without_connecting() -> None:
    client = redis.Redis.from_url(
        "redis://127.0.0.1:1/0", socket_timeout=0.25, decode_responses=True
    )
    pool = client.connection_pool
    connection = resp.RawConnection.outside(pool)._connection
    assert connection.socket_timeout == 0.25 and connection.port == 1
    assert connection.encoder.decode_responses is True
    assert connection._sock is None  # connects on its first send


def test_replies_are_parsed_in_c() -> None:
    # pyproject's redis[hiredis]: a third of a breaker call's CPU is reply parsing.
    assert HIREDIS_AVAILABLE


def test_socket_timeout_reads_the_pools_connection_settings() -> None:
    import redis as redis_py

    from intent import resp as resp_module

    assert resp_module.socket_timeout(redis_py.Redis(socket_timeout=2.5)) == 2.5
    assert resp_module.socket_timeout(redis_py.Redis()) is None
    assert resp_module.socket_timeout(object()) is None  # no pool: unknown


def test_a_sentinel_managed_connection_asks_its_sentinels_when_it_connects() -> None:
    # Never redis-py's default localhost:6379, nor the address it last had (an old master).
    from redis.backoff import NoBackoff
    from redis.retry import Retry
    from redis.sentinel import MasterNotFoundError, Sentinel

    once = {"socket_timeout": 0.1, "retry": Retry(NoBackoff(), 0)}
    client = Sentinel([("127.0.0.1", 1)], sentinel_kwargs=once).master_for("m", **once)
    raw = resp.RawConnection.outside(client.connection_pool)
    with pytest.raises(MasterNotFoundError):
        raw.send(resp.request("PING"))
    with pytest.raises(MasterNotFoundError):
        raw.send_commands([("PING",)])


class _Demoted(Connection):
    """A connection whose server ended a blocked read: it was demoted to a replica."""

    disconnects = 0

    def read_response(self, *args: object, **kwargs: object) -> object:
        raise redis.ResponseError(
            "UNBLOCKED force unblock from blocking operation, instance state changed "
            "(master -> replica?)"
        )

    def disconnect(self, *args: object) -> None:
        self.disconnects += 1


def test_a_read_ended_by_a_demotion_is_a_connection_error_and_drops_the_connection() -> None:
    connection = _Demoted()
    with pytest.raises(redis.ConnectionError, match="no longer the master"):
        resp.RawConnection(connection).read()
    assert connection.disconnects == 1


def test_any_other_error_reply_stays_one() -> None:
    class _Wrong(_Demoted):
        def read_response(self, *args: object, **kwargs: object) -> object:
            raise redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind")

    connection = _Wrong()
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        resp.RawConnection(connection).read()
    assert connection.disconnects == 0
