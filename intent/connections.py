"""Redis as the service meets it: one builder per purpose, each with its timeouts, and
Redis's errors in the project's own terms.

Every Redis client of the service is built here, so each purpose's timeouts are written
once (their values are settings, see ``intent.settings``):

- ``data_client``: the state, cache, waiting room and publisher (``INTENT_REDIS_SOCKET_TIMEOUT``
  to connect and per reply: a dead Redis costs seconds, not minutes);
- ``stream_client``: a reader of the event stream: decoded text (undecodable bytes as lone
  surrogates), each reply allowed its ``BLOCK`` on top of the data timeout;
- ``breaker_client``: the breaker's shared state (``INTENT_CIRCUIT_REDIS_SOCKET_TIMEOUT``, no
  retries: a dead Redis costs milliseconds per call, and the breaker falls back to memory);
- ``rate_limit_storage``: ``limits``' storage, which builds its client from the data timeouts;
- ``probe_client``: a one-off "does it answer?" check.

The state lives where ``INTENT_STATE_REDIS_URL`` says (default ``INTENT_REDIS_URL``), and
its URL's scheme says what kind of Redis that is: :func:`topology` is the one place that
tells them apart, and :func:`redis_client` and :func:`rate_limit_storage` build for each
kind. ``redis://``, ``rediss://`` and ``unix://`` name one server; ``redis+cluster://`` and
``rediss+cluster://`` (``limits``' form) name a Redis Cluster by some of its nodes,
``host:port[,host:port...]``, whose client is a :class:`ClusterClient`.

A URL naming Redis Sentinels (``intent.settings.is_sentinel_url``: Celery's
``sentinel://host:port;sentinel://host:port`` or ``limits``'
``redis+sentinel://host:port,host:port/service_name``) gives each purpose a client of the
master the Sentinels name (:func:`sentinel_client`), with the same purpose's timeouts: its
connections ask the Sentinels for the master when they connect, and drop themselves when
it stops being one (a ``READONLY`` reply), so a failover costs the calls made while there
is no master, not a restart.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, cast

import redis
from limits.storage import RedisClusterStorage, RedisStorage
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.connection import Encoder
from redis.exceptions import ClusterDownError, RedisClusterException, SlotNotCoveredError
from redis.retry import Retry
from redis.sentinel import Sentinel

from intent.errors import ServiceUnavailableError
from intent.settings import (
    CIRCUIT_REDIS_SOCKET_TIMEOUT,
    CLUSTER_SCHEMES,
    REDIS_HEALTH_CHECK_INTERVAL,
    REDIS_PROBE_TIMEOUT,
    SENTINEL_MASTER,
    ClusterAddress,
    Settings,
    is_sentinel_url,
    sentinel_target,
)

STANDALONE = "standalone"
CLUSTER = "cluster"
SENTINEL = "sentinel"


def topology(url: str) -> str:
    """What kind of Redis ``url`` names, by its scheme: ``CLUSTER``, ``SENTINEL`` or
    ``STANDALONE``."""
    scheme = url.partition("://")[0].lower()
    if scheme in CLUSTER_SCHEMES:
        return CLUSTER
    return SENTINEL if is_sentinel_url(url) else STANDALONE


def on_cluster(client: Any) -> bool:
    """Whether ``client`` is a Redis Cluster's (whose pipelines take no scripts)."""
    return isinstance(client, RedisCluster)


def redis_client(url: str, sentinel_master: str = SENTINEL_MASTER, **options: Any) -> redis.Redis:
    """A client of the Redis ``url`` names, with redis-py's ``options`` (timeouts, retry,
    decoding): a ``redis.Redis`` for one server, a :class:`ClusterClient` for a cluster,
    a client of the master for Sentinels (``sentinel_master``: the master's name where the
    URL names none).

    A cluster client is typed as a ``redis.Redis``: it answers the same commands (each
    script and pipeline of the service keeps its keys in one slot, see intent/keys.py),
    and ``intent.resp.plain_pool`` tells the two apart where raw RESP is sent."""
    kind = topology(url)
    if kind == CLUSTER:
        return cast("redis.Redis", ClusterClient.from_cluster_url(url, **options))
    if kind == SENTINEL:
        return sentinel_client(url, sentinel_master, **options)
    return redis.Redis.from_url(url, **options)


def data_client(settings: Settings, url: str | None = None) -> redis.Redis:
    """The client for the service's state (bytes replies)."""
    return redis_client(
        url or settings.require_state_redis_url(),
        settings.sentinel_master,
        socket_timeout=settings.redis_socket_timeout,
        socket_connect_timeout=settings.redis_socket_timeout,
        health_check_interval=REDIS_HEALTH_CHECK_INTERVAL,
    )


def stream_client(settings: Settings, block: float = 0.0) -> redis.Redis:
    """A client that reads the event stream, with XREADGROUP's ``block`` seconds allowed
    per reply on top of the data timeout (a blocked read is not a dead Redis)."""
    return redis_client(
        settings.require_state_redis_url(),
        settings.sentinel_master,
        decode_responses=True,
        # Undecodable bytes arrive as lone surrogates (refused and dead-lettered, whose
        # XADD writes the original bytes back; shown by the CLI), never as an error that
        # stops the reader.
        encoding_errors="surrogateescape",
        socket_timeout=block + settings.redis_socket_timeout,
        socket_connect_timeout=settings.redis_socket_timeout,
        health_check_interval=REDIS_HEALTH_CHECK_INTERVAL,
    )


def breaker_client(
    url: str,
    socket_timeout: float = CIRCUIT_REDIS_SOCKET_TIMEOUT,
    sentinel_master: str = SENTINEL_MASTER,
) -> redis.Redis:
    """A client for breaker state: short timeouts, no retries, decoded replies. It fails
    fast: a dead Redis must cost milliseconds per call (the breaker then runs on its
    in-memory fallback), not redis-py's default retries with backoff."""
    return redis_client(
        url,
        sentinel_master,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )


def rate_limit_storage(settings: Settings, key_prefix: str) -> RedisStorage:
    """``limits``' moving-window storage of the state on the data timeouts (its cluster
    storage for a cluster URL); its errors arrive wrapped in ``limits.errors.StorageError``
    (``intent.ratelimit`` tells an outage from a bug)."""
    url = settings.require_state_redis_url()
    options: dict[str, Any] = {
        "socket_timeout": settings.redis_socket_timeout,
        "socket_connect_timeout": settings.redis_socket_timeout,
    }
    kind = topology(url)
    if kind == CLUSTER:
        return _ClusterLimitStorage(url, redis_client(url, **options), key_prefix)
    if kind == SENTINEL:
        # limits' own Sentinel storage reads from replicas; here every read is the master's.
        client = redis_client(url, settings.sentinel_master, **options)
        return RedisStorage(
            "redis://",
            connection_pool=client.connection_pool,
            key_prefix=key_prefix,
            wrap_exceptions=True,
        )
    return RedisStorage(url, key_prefix=key_prefix, wrap_exceptions=True, **options)


def probe_client(
    url: str, timeout: float = REDIS_PROBE_TIMEOUT, sentinel_master: str = SENTINEL_MASTER
) -> redis.Redis:
    """A client for one "does Redis answer?" check: connect and each reply within
    ``timeout``."""
    return redis_client(
        url, sentinel_master, socket_timeout=timeout, socket_connect_timeout=timeout
    )


# -- Redis Sentinel ----------------------------------------------------------------------


def sentinel_client(url: str, master_name: str, **connection_kwargs: Any) -> redis.Redis:
    """A client of the master the Sentinels of ``url`` name, built with the purpose's
    ``connection_kwargs`` (timeouts, decoding, retries). The Sentinels are asked with the
    same socket timeouts, each once (the next Sentinel is the retry): a dead Sentinel costs
    what a dead Redis costs that purpose, not redis-py's retries with backoff (seconds)."""
    target = sentinel_target(url, master_name)
    timeout = connection_kwargs.get("socket_timeout")
    connection_kwargs.setdefault("socket_connect_timeout", timeout)
    asking = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    sentinels = Sentinel(list(target.sentinels), sentinel_kwargs=asking)
    return sentinels.master_for(
        target.service_name,
        db=target.db,
        username=target.username,
        password=target.password,
        **connection_kwargs,
    )


@contextlib.contextmanager
def redis_errors(what: str) -> Iterator[None]:
    """Inside, a Redis that cannot be reached is ``ServiceUnavailableError("redis", ...)``
    (transient: retried, never a raw redis-py error reaching a caller); ``what`` says what
    was being done."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise ServiceUnavailableError("redis", f"{what}: {type(exc).__name__}: {exc}") from exc


# -- Redis Cluster ---------------------------------------------------------------------
# Reads go to the masters, redis-py's default without a load_balancing_strategy (a replica
# may not have a write yet: a breaker, a claim would read stale state). The client starts
# with a cluster missing some slots, whose masters are down, and serves the others as far
# as the servers do (cluster-require-full-coverage).
_CLUSTER_OPTIONS: dict[str, Any] = {"load_balancing_strategy": None, "require_full_coverage": False}


def _outage(exc: Exception) -> redis.ConnectionError:
    return redis.ConnectionError(f"Redis Cluster unavailable: {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def _cluster_outages() -> Iterator[None]:
    """A cluster that cannot be reached, or whose slot has no master, is a
    ``redis.ConnectionError`` as a server that cannot be reached is: redis-py says so with
    ``RedisClusterException`` (no RedisError) and ``ClusterDownError`` (a ResponseError)."""
    try:
        yield
    except (ClusterDownError, SlotNotCoveredError) as exc:
        raise _outage(exc) from exc
    except RedisClusterException as exc:
        # Raised for misuse too (keys of two slots, a bad argument): a bug, never an outage.
        if "cannot be connected" not in str(exc):
            raise
        raise _outage(exc) from exc


def node_pool(client: Any, key: str, *, refresh: bool = False) -> redis.ConnectionPool:
    """The connections of the master serving ``key``'s slot on a Redis Cluster (for raw
    RESP, ``intent.resp``, to the one server a command goes to); ``refresh`` first asks
    the cluster again where its slots are (after a ``MOVED`` reply). An unreachable
    cluster is a ``redis.ConnectionError``."""
    with _cluster_outages():
        if refresh:
            client.nodes_manager.initialize()
        node = client.get_node_from_key(key)
        if node is None or node.redis_connection is None:
            raise redis.ConnectionError(f"no node of the cluster serves {key!r}")
        return cast(redis.ConnectionPool, node.redis_connection.connection_pool)


class ClusterClient(RedisCluster):
    """redis-py's ``RedisCluster`` as the service needs it: built on first use, and its
    outages in the terms of a single server's.

    ``RedisCluster`` connects when it is made, and an unreachable cluster raises there: a
    process started during an outage could not even build its breaker store (whose
    fallback is the point). This one keeps its options and makes the real client when it
    is first used (again after a failure); until then only what needs no server (the
    encoder a script's SHA is computed with) answers. Its errors are mapped by
    :func:`_cluster_outages`.
    """

    connection_pool = None  # no plain pool: intent.resp sends no raw RESP on a cluster

    def __init__(self, **options: Any):  # no super().__init__: see _materialise
        self.__dict__["_lazy_options"] = options
        self.__dict__["_lazy_lock"] = threading.RLock()
        self.__dict__["_lazy_state"] = "new"
        self.__dict__["_lazy_maker"] = None  # the thread making it

    @classmethod
    def from_cluster_url(cls, url: str, **options: Any) -> ClusterClient:
        address = ClusterAddress.parse(url)
        if address.username:
            options.setdefault("username", address.username)
        if address.password:
            options.setdefault("password", address.password)
        if address.ssl:
            options.setdefault("ssl", True)
        return cls(
            startup_nodes=[ClusterNode(host, port) for host, port in address.nodes],
            **_CLUSTER_OPTIONS,
            **options,
        )

    def __getattr__(self, name: str) -> Any:
        # Only attributes RedisCluster.__init__ sets get here: make it, then look again.
        mine = self.__dict__
        if "_lazy_state" not in mine or mine["_lazy_state"] == "made":
            raise AttributeError(name)  # truly missing
        if mine["_lazy_maker"] == threading.get_ident():
            raise AttributeError(name)  # read by RedisCluster.__init__ before it sets it
        self._materialise()  # (another thread making it: waits for it)
        return getattr(self, name)

    def _materialise(self) -> None:
        mine = self.__dict__
        with mine["_lazy_lock"]:
            if mine["_lazy_state"] == "made":
                return
            mine["_lazy_state"], mine["_lazy_maker"] = "making", threading.get_ident()
            try:
                with _cluster_outages():
                    RedisCluster.__init__(self, **mine["_lazy_options"])
                mine["_lazy_state"] = "made"
            finally:
                mine["_lazy_maker"] = None
                if mine["_lazy_state"] != "made":
                    mine["_lazy_state"] = "new"  # the next use tries again

    def get_encoder(self) -> Encoder:
        options = self.__dict__["_lazy_options"]
        return Encoder(
            options.get("encoding", "utf-8"),
            options.get("encoding_errors", "strict"),
            options.get("decode_responses", False),
        )

    def get_connection_kwargs(self) -> dict[str, Any]:
        """The options it was given (made or not: ``intent.resp`` reads its timeout)."""
        return dict(self.__dict__["_lazy_options"])

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        with _cluster_outages():
            return super().execute_command(*args, **kwargs)

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        with _cluster_outages():
            pipe = super().pipeline(transaction, shard_hint)
        pipe.__class__ = _ClusterPipeline  # the same pipeline, its outages mapped
        return pipe

    def close(self) -> None:
        if self.__dict__.get("_lazy_state") == "made":
            super().close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        nodes = self.__dict__["_lazy_options"].get("startup_nodes", [])
        return f"<ClusterClient {','.join(node.name for node in nodes)}>"


class _ClusterPipeline(ClusterPipeline):
    def execute(self, raise_on_error: bool = True) -> list[Any]:
        with _cluster_outages():
            return super().execute(raise_on_error)


class _ClusterLimitStorage(RedisClusterStorage):
    """``limits``' cluster storage (its scripts, key layout and cluster-wide reset) on a
    :class:`ClusterClient`: made without connecting (limits' own connects at once and
    raises while the cluster is away), its outages ``redis.ConnectionError``, which limits
    wraps in ``StorageError``. No STORAGE_SCHEME: limits' registry is left alone."""

    def __init__(self, uri: str, client: redis.Redis, key_prefix: str):
        # RedisClusterStorage.__init__ without the client it would make (limits 5.x).
        self.key_prefix = key_prefix
        self.target_server = "redis"
        self.dependency = redis
        self.storage = client
        self.initialize_storage(uri)
        super(RedisStorage, self).__init__(uri, wrap_exceptions=True)
