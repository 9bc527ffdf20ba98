"""The state on a Redis Cluster (``INTENT_STATE_REDIS_URL=redis+cluster://...``): the URL's
scheme picks the client, every builder keeps its purpose's timeouts on a cluster, and a
cluster that cannot be reached is an outage in the service's terms. Nothing here connects:
the addresses are never listened on (the real cluster: tests/integration/test_state_cluster.py).
"""

from __future__ import annotations

import threading

import pytest
import redis
from limits.storage import RedisClusterStorage
from redis.backoff import NoBackoff

from intent import connections, resp
from intent.connections import CLUSTER, STANDALONE, ClusterClient
from intent.errors import ServiceUnavailableError, SettingsError
from intent.settings import CIRCUIT_REDIS_SOCKET_TIMEOUT, ClusterAddress, Settings, load_settings

STANDALONE_URL = "redis://127.0.0.1:1/0"
CLUSTER_URL = "redis+cluster://127.0.0.1:1,127.0.0.1:2"


@pytest.fixture
def settings() -> Settings:
    return Settings(
        redis_url=STANDALONE_URL,
        state_redis_url=CLUSTER_URL,
        redis_socket_timeout=1.5,
        circuit_redis_socket_timeout=0.125,
    )


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("redis://h:6379/0", STANDALONE),
        ("rediss://h:6380/0", STANDALONE),
        ("unix:///run/redis.sock", STANDALONE),
        ("redis+cluster://h:7000,h:7001", CLUSTER),
        ("rediss+cluster://h:7000", CLUSTER),
        ("REDIS+CLUSTER://h:7000", CLUSTER),
    ],
)
def test_the_scheme_says_what_kind_of_redis_a_url_names(url: str, kind: str) -> None:
    assert connections.topology(url) == kind


def test_a_cluster_url_lists_its_nodes_and_credentials() -> None:
    address = ClusterAddress.parse("rediss+cluster://me:p%40ss@10.0.0.1:7000, node-2:7001/0")
    assert address.nodes == (("10.0.0.1", 7000), ("node-2", 7001))
    assert (address.username, address.password, address.ssl) == ("me", "p@ss", True)
    plain = ClusterAddress.parse("redis+cluster://[::1]:7000")
    assert plain.nodes == (("::1", 7000),)
    assert (plain.username, plain.password, plain.ssl) == (None, None, False)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+cluster://h:7000/1", "database 0 alone"),
        ("redis+cluster://h:7000?ssl_cert_reqs=none", "no options"),
        ("redis+cluster://h", "host:port pairs"),
        ("redis+cluster://h:7000,:7001", "host:port pairs"),
        ("redis+cluster://h:70000", "host:port pairs"),
        ("redis://h:7000", "not a Redis Cluster URL"),
    ],
)
def test_a_bad_cluster_url_is_refused_naming_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(SettingsError, match=says):
        ClusterAddress.parse(url)


def test_the_state_url_defaults_to_the_redis_url() -> None:
    settings = load_settings(redis_url=STANDALONE_URL)
    assert settings.require_state_redis_url() == settings.effective_state_redis_url
    assert settings.effective_state_redis_url == STANDALONE_URL
    assert load_settings().effective_state_redis_url is None


@pytest.mark.parametrize("field", ["redis_url", "broker_url", "result_backend_url"])
def test_celerys_urls_may_not_name_a_cluster(field: str) -> None:
    with pytest.raises(SettingsError, match="INTENT_STATE_REDIS_URL") as refused:
        load_settings(**{field: CLUSTER_URL})
    assert f"INTENT_{field.upper()} names a Redis Cluster" in str(refused.value)


def test_every_builder_makes_a_cluster_client_with_its_timeouts(settings: Settings) -> None:
    data = connections.data_client(settings)
    assert isinstance(data, ClusterClient)
    kwargs = data.get_connection_kwargs()
    assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == 1.5
    assert not kwargs.get("decode_responses")
    assert [node.name for node in kwargs["startup_nodes"]] == ["127.0.0.1:1", "127.0.0.1:2"]
    assert kwargs["require_full_coverage"] is False
    assert kwargs["load_balancing_strategy"] is None  # reads on the masters

    stream = connections.stream_client(settings, block=5.0).get_connection_kwargs()
    assert stream["socket_timeout"] == 6.5
    assert (stream["decode_responses"], stream["encoding_errors"]) == (True, "surrogateescape")

    breaker = connections.breaker_client(settings.require_state_redis_url())
    assert isinstance(breaker, ClusterClient)
    kwargs = breaker.get_connection_kwargs()
    assert kwargs["socket_timeout"] == CIRCUIT_REDIS_SOCKET_TIMEOUT
    assert kwargs["retry"]._retries == 0 and isinstance(kwargs["retry"]._backoff, NoBackoff)

    # The standalone URL still makes a plain client.
    assert type(connections.data_client(settings, STANDALONE_URL)) is redis.Redis


def test_the_rate_limit_storage_is_limits_cluster_storage_on_the_cluster_client(
    settings: Settings,
) -> None:
    storage = connections.rate_limit_storage(settings, "intent:rl:")  # limits' own would connect
    assert isinstance(storage, RedisClusterStorage)
    assert isinstance(storage.storage, ClusterClient)
    assert (storage.key_prefix, storage.wrap_exceptions) == ("intent:rl:", True)
    assert storage.storage.get_connection_kwargs()["socket_timeout"] == 1.5


def test_raw_resp_is_never_sent_on_a_cluster_client(settings: Settings) -> None:
    client = connections.stream_client(settings, block=1.0)
    assert resp.plain_pool(client) is None
    assert resp.socket_timeout(client) == 2.5  # the consumer still checks it
    assert connections.on_cluster(client)
    assert not connections.on_cluster(redis.Redis.from_url(STANDALONE_URL))


def test_scripts_register_on_a_cluster_client_without_connecting(settings: Settings) -> None:
    client = connections.data_client(settings)
    script = client.register_script("return 1")
    assert script.sha == "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"
    client.close()  # nothing to close: it never connected


def test_an_unreachable_cluster_is_an_outage(settings: Settings) -> None:
    client = connections.breaker_client(settings.require_state_redis_url())
    with pytest.raises(redis.ConnectionError, match="Redis Cluster unavailable"):
        client.get("k")
    with pytest.raises(ServiceUnavailableError), connections.redis_errors("reading"):
        client.get("k")
    outage = pytest.raises(redis.ConnectionError, match="Redis Cluster unavailable")
    with outage, client.pipeline(transaction=False) as pipe:
        pipe.get("k")
        pipe.execute()


def test_threads_using_it_first_at_once_each_meet_the_outage(settings: Settings) -> None:
    # While one thread makes the client, the others wait for it: none sees it half made.
    client = connections.breaker_client(settings.require_state_redis_url())
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def first_use() -> None:
        barrier.wait()
        try:
            client.get("k")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(errors) == 8
    assert all(isinstance(exc, redis.ConnectionError) for exc in errors), errors


def test_a_misuse_of_a_cluster_stays_a_bug_not_an_outage() -> None:
    from redis.exceptions import ClusterDownError, RedisClusterException, SlotNotCoveredError

    for outage in (ClusterDownError("CLUSTERDOWN"), SlotNotCoveredError("slot 7 not covered")):
        with pytest.raises(redis.ConnectionError), connections._cluster_outages():
            raise outage
    with pytest.raises(RedisClusterException, match="same slot"), connections._cluster_outages():
        raise RedisClusterException("keys in request don't hash to the same slot")


def test_a_bad_state_cluster_url_is_refused_at_start_by_its_name() -> None:
    with pytest.raises(SettingsError, match=r"INTENT_STATE_REDIS_URL: .*database 0 alone"):
        load_settings(redis_url=STANDALONE_URL, state_redis_url="redis+cluster://h:7000/2")
