"""Every tunable of the service, read once from ``INTENT_*`` environment variables.

Defaults are the integration guide's. A bad value stops the process at start with a
:class:`SettingsError` that names the environment variable, not deep inside a task.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import SplitResult, quote, unquote, urlsplit

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Raised here, and still imported from here by the CLI, Flower's launcher and tests.
from intent.errors import SettingsError

ENV_PREFIX = "INTENT_"
# Default visibility timeout: the hard time limit plus this, for a message that waited for
# a free pool process and for the releasers' sweep.
VISIBILITY_MARGIN = 30.0
# Redis clients that stay connected (the data and stream clients) ping a connection idle
# this long before using it again: one a restarted Redis closed fails that ping, not a call.
REDIS_HEALTH_CHECK_INTERVAL = 30
# A one-off "does Redis answer?" (``intent up`` waiting for a URL): connect and read each
# within this long.
REDIS_PROBE_TIMEOUT = 2.0
# URL schemes that name a Redis Cluster (``limits``' form): only the state may live on one.
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")

# Broker URL schemes of kombu's AMQP transports (RabbitMQ).
AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})
# The master's name a sentinel:// URL's Sentinels are asked for (Redis's own example name).
SENTINEL_MASTER = "mymaster"

PositiveFloat = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]
Ratio = Annotated[float, Field(ge=0, le=1)]
Percent = Annotated[float, Field(ge=0, le=100)]

# The circuit breaker's defaults, written once: the INTENT_CIRCUIT_* settings below, the
# guide's CircuitConfig() and the breaker's stores all take theirs from here.
CIRCUIT_FAILURE_THRESHOLD = 5
CIRCUIT_RECOVERY_TIMEOUT = 60.0
CIRCUIT_HALF_OPEN_TIMEOUT = 30.0
CIRCUIT_FAILURE_WINDOW = 120.0
CIRCUIT_MIN_THROUGHPUT = 5
CIRCUIT_HALF_OPEN_MAX_CALLS = 1  # trial calls admitted fleet-wide
CIRCUIT_SUCCESS_THRESHOLD = 1  # trial successes that close the breaker
# While failures are pending, a call the in-flight calls could make superfluous waits
# up to this long for their verdict before it is refused.
CIRCUIT_THROTTLE_WAIT = 0.5
# How long a process trusts a refusal before asking the store again: an operator's
# reset, open or close reaches every process within it.
CIRCUIT_RECHECK_INTERVAL = 1.0
# A call in flight this long, started after the last call the service answered, counts
# as a pending failure: a service that hangs stops receiving calls before any read
# timeout fires, and such calls count toward tripping.
CIRCUIT_SLOW_CALL_DURATION = 5.0
# Rate rules, in percent of the window's calls (at least min_throughput of them); 0 turns a
# rule off. Off by default: the count threshold already trips a dead service after five
# failures, and a rate that suits one service's traffic is wrong for another's.
CIRCUIT_FAILURE_RATE_THRESHOLD = 0.0
CIRCUIT_SLOW_CALL_RATE_THRESHOLD = 0.0
# The open time grows with each trip that no successful recovery followed: the recovery
# timeout, times BREAK_FACTOR per earlier trip, capped at BREAK_MAX, the grown durations
# spread by +/- BREAK_JITTER (a fraction). The first open lasts the recovery timeout exactly.
# Off by default (factor 1): half-open admits one trial per open cycle fleet-wide, so a
# longer break saves the service one call a minute, while every minute it adds past an
# outage's end is a minute of analyses waiting, some past their deadline.
CIRCUIT_BREAK_FACTOR = 1.0
CIRCUIT_BREAK_MAX = 600.0
CIRCUIT_BREAK_JITTER = 0.1
# Fleet-wide calls in flight per downstream service (0: no limit), and how long a call over
# the limit waits for a slot before its step defers.
BULKHEAD_LIMIT = 0
BULKHEAD_WAIT = 1.0
# The breaker's own Redis client: a dead Redis must cost milliseconds per call.
CIRCUIT_REDIS_SOCKET_TIMEOUT = 0.25
CIRCUIT_REDIS_PROBE_INTERVAL = 5.0  # retry Redis this often when down
CIRCUIT_FALLBACK_LOG_INTERVAL = 30.0  # "using memory" warning, at most this often
# The fleet-wide retry budget per downstream service (Finagle's RetryBudget): retries may
# spend this percent of the service's calls in the budget window, plus a floor per second
# (so a service with little traffic can still be retried).
RETRY_BUDGET_PERCENT = 20.0
RETRY_BUDGET_MIN_PER_SECOND = 10.0
RETRY_BUDGET_WINDOW = 10.0


@dataclass(frozen=True)
class ClusterAddress:
    """What a ``redis+cluster://[user:password@]host:port[,host:port...]`` URL says (the
    state may live on a Redis Cluster: see ``state_redis_url``)."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    ssl: bool = False

    @classmethod
    def parse(cls, url: str) -> ClusterAddress:
        scheme, _, rest = url.partition("://")
        if scheme.lower() not in CLUSTER_SCHEMES:
            raise SettingsError(f"not a Redis Cluster URL (scheme {scheme!r})")
        netloc, _, tail = rest.partition("/")
        if tail.partition("?")[0] not in ("", "0") or "?" in rest:
            raise SettingsError(  # the URL itself is not shown: an option may be a secret
                "a Redis Cluster URL names its nodes only (a cluster has database 0 alone, "
                "and takes no options in the URL)"
            )
        auth, _, hosts = netloc.rpartition("@")
        user, _, password = auth.partition(":")
        nodes = tuple(_host_port(part, scheme) for part in hosts.split(","))
        return cls(
            nodes,
            username=unquote(user) or None,
            password=unquote(password) or None,
            ssl=scheme.lower().startswith("rediss"),
        )


def _host_port(part: str, scheme: str) -> tuple[str, int]:
    host, _, port = part.strip().rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"a {scheme}:// URL lists host:port pairs, not {part!r}")
    return host, int(port)


# -- Redis Sentinel URLs (parsed here, so a bad one is refused when the settings load) ----
SENTINEL_SCHEMES = ("sentinel", "redis+sentinel")
SENTINEL_PORT = 26379


def is_sentinel_url(url: str) -> bool:
    """Whether ``url`` names Redis Sentinels rather than a Redis server."""
    return url.partition("://")[0].lower() in SENTINEL_SCHEMES


@dataclass(frozen=True)
class SentinelTarget:
    """What a Sentinel URL names: the Sentinels, the master's name, and the database and
    credentials of the master (the Sentinels themselves are asked without credentials)."""

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None

    def celery_url(self) -> str:
        """The same in Celery's form (``sentinel://...;sentinel://...``), the credentials and
        database in its first part; the master's name goes to the transport options."""
        auth = ""
        if self.password is not None:
            user = quote(self.username or "", safe="")
            auth = f"{user}:{quote(self.password, safe='')}@"
        elif self.username is not None:
            auth = f"{quote(self.username, safe='')}@"
        return ";".join(
            f"sentinel://{auth if i == 0 else ''}{host}:{port}/{self.db}"
            for i, (host, port) in enumerate(self.sentinels)
        )


def sentinel_target(url: str, master_name: str = SENTINEL_MASTER) -> SentinelTarget:
    """Parse either form:

    - Celery's ``sentinel://[[user]:password@]host:port[/db];sentinel://host:port;...``:
      the master's name is ``master_name`` (``INTENT_SENTINEL_MASTER``); the first part's
      credentials and database are the master's;
    - ``limits``' ``redis+sentinel://[[user]:password@]host:port[,host:port]/service_name``:
      the master's name is the path (``master_name`` when it has none).

    A URL that is neither, or names no Sentinel, raises ValueError saying what is wrong.
    """
    scheme = url.partition("://")[0].lower()
    if scheme == "sentinel":
        parts = [urlsplit(part.strip()) for part in url.split(";") if part.strip()]
        if any(p.scheme.lower() != "sentinel" for p in parts):
            raise ValueError("every part of a sentinel:// URL list must be sentinel://")
        first = parts[0]
        hosts = [(p.hostname or "", _port(p)) for p in parts]
        path = first.path.strip("/")
        if path and not path.isdigit():
            raise ValueError(  # the path is not shown: a misplaced password may be in it
                "a sentinel:// URL's path is a database number (a password holding '/', '?', "
                "'#' or '@' must be percent-encoded)"
            )
        service, db = master_name, int(path or 0)
    elif scheme == "redis+sentinel":
        first = urlsplit(url)
        netloc = first.netloc.rpartition("@")[2]
        hosts = []
        for location in netloc.split(","):
            host = urlsplit(f"//{location.strip()}")
            hosts.append((host.hostname or "", _port(host)))
        service, db = first.path.strip("/") or master_name, 0
    else:
        raise ValueError(
            f"not a Sentinel URL (scheme {scheme!r}): sentinel:// or redis+sentinel://"
        )
    if not hosts or any(not host for host, _ in hosts):
        raise ValueError("a Sentinel URL must name at least one Sentinel host")
    return SentinelTarget(
        tuple(hosts),
        service,
        db,
        unquote(first.username) if first.username else None,
        unquote(first.password) if first.password else None,
    )


def _port(parts: SplitResult) -> int:
    """A Sentinel's port (26379 if none), refused without the URL's text: urllib's own error
    quotes it, and a password holding a '/' lands there."""
    try:
        return parts.port or SENTINEL_PORT
    except ValueError:
        raise ValueError(
            "a Sentinel URL lists host:port pairs with a numeric port (a password holding "
            "'/', '?', '#' or '@' must be percent-encoded)"
        ) from None


class Settings(BaseSettings):
    """The service's configuration. Field ``foo_bar`` is read from ``INTENT_FOO_BAR``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # Downstream services
    context_service_url: str = "http://127.0.0.1:8001"
    prediction_service_url: str = "http://127.0.0.1:8002"
    required_context_service_version: str = "1.0.0"
    context_api_version: str = "v1"
    version_check_interval: PositiveFloat = 60.0  # how long a /health version verdict holds
    context_connect_timeout: PositiveFloat = 5.0
    context_read_timeout: PositiveFloat = 10.0
    # requests/urllib3 bound a request's send by the connect timeout and take no separate
    # write timeout; the value is kept (and validated) for parity with the guide.
    context_write_timeout: PositiveFloat = 10.0
    prediction_connect_timeout: PositiveFloat = 5.0
    prediction_read_timeout: PositiveFloat = 10.0
    http_pool_size: PositiveInt = 10
    # Honour HTTP(S)_PROXY/NO_PROXY and .netrc for downstream calls (off: they cost ~1 ms a
    # request and internal services are rarely behind a proxy).
    http_trust_env: bool = False

    # Redis and Celery. Unset redis_url: `intent demo`/`intent up` start an embedded Valkey.
    redis_url: str | None = None
    broker_url: str | None = None  # defaults to redis_url
    result_backend_url: str | None = None  # defaults to redis_url
    # Where the service's state lives (breaker, limits, cache, pattern state, claims,
    # waiting room, events...): defaults to redis_url. It may name a Redis Cluster,
    # redis+cluster://host:port[,host:port...] (rediss+cluster:// for TLS), which the
    # broker and the result backend cannot be (Celery's Redis transport has no cluster mode).
    state_redis_url: str | None = None
    key_prefix: str = Field(default="intent:", pattern=r"^[A-Za-z0-9_.:-]{1,32}$")
    redis_socket_timeout: PositiveFloat = 2.0
    # A URL above may name Redis Sentinels (Celery's sentinel://host:port;sentinel://...):
    # the master they are asked for (a redis+sentinel://.../NAME URL names its own).
    sentinel_master: str = Field(default=SENTINEL_MASTER, pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    # Where a worker keeps a message it took as the broker went away, until it is put back
    # (tasks/transport.py): on disk, so that a worker killed meanwhile does not lose it;
    # the next worker on the host started with the same broker puts it back. "" : memory only.
    rescue_dir: str = str(Path(tempfile.gettempdir()) / "intent-rescued")

    # Retries of transient downstream failures (exponential backoff, jitter)
    retry_max: Annotated[int, Field(ge=0, le=20)] = 3
    retry_initial_delay: PositiveFloat = 1.0
    retry_max_delay: PositiveFloat = 10.0
    # Each delay is drawn uniformly from [base * (1 - jitter), base]: never above the
    # schedule, never collapsing to zero as Celery's full jitter can.
    retry_jitter: Ratio = 0.25
    retry_after_max: PositiveFloat = 60.0  # cap on a downstream Retry-After we honour
    # The fleet-wide retry budget (intent/budget.py); calls are counted by the breaker.
    retry_budget_percent: Annotated[float, Field(ge=0, le=100)] = RETRY_BUDGET_PERCENT
    retry_budget_min_per_second: Annotated[float, Field(ge=0)] = RETRY_BUDGET_MIN_PER_SECOND
    retry_budget_window: PositiveFloat = RETRY_BUDGET_WINDOW

    # Circuit breaker (guide's CircuitConfig)
    circuit_failure_threshold: PositiveInt = CIRCUIT_FAILURE_THRESHOLD
    circuit_recovery_timeout: PositiveFloat = CIRCUIT_RECOVERY_TIMEOUT
    circuit_half_open_timeout: PositiveFloat = CIRCUIT_HALF_OPEN_TIMEOUT
    circuit_failure_window: PositiveFloat = CIRCUIT_FAILURE_WINDOW
    circuit_min_throughput: PositiveInt = CIRCUIT_MIN_THROUGHPUT
    circuit_half_open_max_calls: PositiveInt = CIRCUIT_HALF_OPEN_MAX_CALLS
    circuit_success_threshold: PositiveInt = CIRCUIT_SUCCESS_THRESHOLD
    circuit_throttle_wait: Annotated[float, Field(ge=0)] = CIRCUIT_THROTTLE_WAIT
    circuit_recheck_interval: PositiveFloat = CIRCUIT_RECHECK_INTERVAL
    circuit_redis_socket_timeout: PositiveFloat = CIRCUIT_REDIS_SOCKET_TIMEOUT
    circuit_redis_probe_interval: PositiveFloat = CIRCUIT_REDIS_PROBE_INTERVAL
    circuit_slow_call_duration: PositiveFloat = CIRCUIT_SLOW_CALL_DURATION
    circuit_fallback_log_interval: PositiveFloat = CIRCUIT_FALLBACK_LOG_INTERVAL
    circuit_failure_rate_threshold: Percent = CIRCUIT_FAILURE_RATE_THRESHOLD
    circuit_slow_call_rate_threshold: Percent = CIRCUIT_SLOW_CALL_RATE_THRESHOLD
    circuit_break_factor: Annotated[float, Field(ge=1)] = CIRCUIT_BREAK_FACTOR
    circuit_break_max: PositiveFloat = CIRCUIT_BREAK_MAX
    circuit_break_jitter: Annotated[float, Field(ge=0, lt=1)] = CIRCUIT_BREAK_JITTER
    # Bulkheads: at most this many calls in flight to the service across the fleet.
    bulkhead_context_service: Annotated[int, Field(ge=0)] = BULKHEAD_LIMIT
    bulkhead_prediction_service: Annotated[int, Field(ge=0)] = BULKHEAD_LIMIT
    bulkhead_wait: Annotated[float, Field(ge=0)] = BULKHEAD_WAIT
    # A step meeting an open breaker or a downstream rate limit re-schedules itself for
    # the moment it will be admitted plus up to defer_jitter seconds, waiting at most
    # max_deferral seconds in all (a deferral is not a retry).
    max_deferral: PositiveFloat = 600.0
    defer_jitter: Annotated[float, Field(ge=0)] = 1.0

    # Context service rate limits (requests per minute) and intake limit per client
    rate_limit_get_context: PositiveInt = 1000
    rate_limit_analyze_context: PositiveInt = 500
    rate_limit_predict: PositiveInt = 1000
    downstream_rate_period: PositiveInt = 60  # the downstream limits are per this many s
    rate_limit_window: PositiveInt = 60
    max_requests_per_window: PositiveInt = 100

    # Deadlines: an analysis not finished this many seconds after submission stops with
    # status "expired" at its next step instead of calling downstream late.
    analysis_deadline: PositiveFloat = 300.0

    # Caches: a context is fresh for context_cache_ttl seconds and served stale (marked
    # degraded) up to context_cache_stale_ttl when its service is unavailable.
    context_cache_ttl: PositiveInt = 300
    context_cache_stale_ttl: PositiveInt = 24 * 3600

    # Pattern detection
    detection_threshold: Ratio = 0.6
    update_delta: Ratio = 0.1

    # Input limits
    max_payload_bytes: Annotated[int, Field(ge=256)] = 65536
    # Nesting of a request's JSON (its inline data included), checked while it is decoded.
    max_json_depth: Annotated[int, Field(ge=4, le=256)] = 32
    batch_max_size: PositiveInt = 100  # requests one intent.analyze_batch takes

    # Events
    events_maxlen: PositiveInt = 100_000  # per partition
    event_dedup_ttl: PositiveInt = 7 * 24 * 3600
    # Streams the bus is split over, an event's chosen by its context id (crc32 mod N):
    # 1 is the single stream intent:events; more spread it over Redis Cluster nodes. The
    # same N for every publisher and consumer; changing it moves contexts (README).
    event_partitions: Annotated[int, Field(ge=1, le=256)] = 1

    # Event consumers (`intent events consume`, intent/events/). Times in seconds.
    consumer_batch_size: PositiveInt = 100  # entries per read (XREADGROUP COUNT)
    consumer_block: PositiveFloat = 1.0  # longest wait of a read; bounds an idle stop's delay
    consumer_max_deliveries: PositiveInt = 5  # then a failing event goes to the dead letters
    # A failed event is delivered again after retry_backoff, doubling per delivery up to
    # retry_backoff_max (drawn down by up to retry_jitter); keep the max under claim_idle.
    consumer_retry_backoff: PositiveFloat = 1.0
    consumer_retry_backoff_max: PositiveFloat = 30.0
    # Pending entries idle this long are taken over by another consumer (XAUTOCLAIM): it
    # must exceed the longest handler run. Also the lease of the idempotency helper.
    consumer_claim_idle: PositiveFloat = 60.0
    # An entry of an unknown type: "ack" (log a warning) or "dead_letter".
    consumer_unknown_type: str = Field(default="ack", pattern=r"^(ack|dead_letter)$")
    # After SIGTERM/SIGINT the event in hand is always finished; events already read are
    # handled too for this long, then left for other consumers.
    consumer_shutdown_grace: Annotated[float, Field(ge=0)] = 5.0

    # Operations (`intent up`, `intent admin`, `intent beat`, `intent flower`).
    # "development" relaxes what a laptop does not need (Flower without basic auth).
    environment: str = Field(default="production", pattern=r"^(development|production)$")
    queue: str = Field(default="intent", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")  # Celery queue
    # Workers also consume the queue a Celery client sends to when told none, so a web
    # app's send_task("intent.analyze") without queue= runs instead of waiting unseen;
    # empty when other Celery apps share the broker's "celery" queue.
    client_default_queue: str = Field(default="celery", pattern=r"^([A-Za-z0-9_.:-]{1,64})?$")
    # The RabbitMQ queue type of the queues workers consume: "quorum" (replicated, with a
    # delivery limit; celeryqueues.py) needs an amqp:// broker.
    queue_type: Literal["classic", "quorum"] = "classic"
    # intent.health_check runs every health_interval s on celery beat (expiring after one
    # interval, so a late run is dropped); each /health probe waits at most health_timeout.
    health_interval: PositiveFloat = 30.0
    health_timeout: PositiveFloat = 2.0
    admin_host: str = "127.0.0.1"
    admin_port: Annotated[int, Field(ge=1, le=65535)] = 8000
    # Bearer token of the admin endpoint's mutating routes; unset, they are refused.
    admin_token: SecretStr | None = None
    # Where prefork processes share Prometheus metrics (prometheus_client multiprocess
    # mode); the workers and `intent admin` must see the same directory.
    metrics_dir: str | None = None
    log_format: str = Field(default="json", pattern=r"^(json|text)$")
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$")
    # Tracing with OpenTelemetry (the `otel` extra; see intent/tracing.py): spans of every
    # task and downstream call, exported by "otlp" (configured by the OTEL_EXPORTER_OTLP_*
    # variables), "console" or "jsonl:DIR" (a JSON line per span, a file per process).
    tracing: bool = False
    tracing_exporter: str = Field(default="otlp", pattern=r"^(otlp|console|jsonl:.+)$")
    flower_port: Annotated[int, Field(ge=1, le=65535)] = 5555
    # "user:password[,user:password...]"; required by `intent flower` in production.
    flower_basic_auth: SecretStr | None = None

    # Waiting steps (intent/waiting.py): a step that waits (a retry's backoff, an open
    # breaker, a full limit) is parked in Redis; each worker's releaser looks every
    # release_interval seconds and publishes at most release_batch steps per lane at a time.
    release_interval: PositiveFloat = 0.1
    release_batch: PositiveInt = 100
    # While Redis is unreachable each process may use this share of every rate limit.
    rate_limit_fallback_share: Annotated[float, Field(gt=0, le=1)] = 0.1
    rate_limit_fallback_log_interval: PositiveFloat = 30.0
    # How long a Redis (broker, results, state) may be away without failing the work in
    # flight: publishing a next step or a waiting one, parking, storing a result retry
    # this long; a step that still cannot go on is left for redelivery.
    redis_outage_tolerance: PositiveFloat = 30.0

    # Resilience drills (intent/drills.py): client-side fault injection switched on at run
    # time. A drill lasts at most drill_max_seconds (it cannot be left on); each process
    # reads the drills at most once per drill_refresh seconds.
    drill_max_seconds: PositiveFloat = 3600.0
    drill_refresh: PositiveFloat = 1.0

    # Tasks
    # Soft limit above redis_outage_tolerance: a step that waited that long for Redis to
    # come back can still publish its next step before Celery interrupts it.
    task_soft_time_limit: PositiveFloat = 40.0
    task_time_limit: PositiveFloat = 60.0
    result_expires: PositiveInt = 24 * 3600
    # Redis broker: a message neither acked nor rejected after this long (its worker died)
    # is delivered again. Unset: the hard time limit plus VISIBILITY_MARGIN, since no message
    # waits in a worker (waiting steps are parked in Redis, not held as ETA messages).
    visibility_timeout: PositiveInt | None = None
    # How often a worker looks for such messages (kombu's sweep; its default is 100 s).
    broker_restore_interval: PositiveFloat = 2.0
    # How often a worker that lost its broker tries again (kombu's pace grows to 30 s, and
    # the worker runs nothing meanwhile).
    broker_reconnect_interval: PositiveFloat = 1.0

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        for name in ("redis_url", "broker_url", "result_backend_url"):
            url = getattr(self, name) or ""
            if _is_cluster_url(url):
                # Celery's Redis transport and result backend have no cluster mode.
                raise ValueError(
                    f"{ENV_PREFIX}{name.upper()} names a Redis Cluster, which holds only the "
                    f"state: set {ENV_PREFIX}STATE_REDIS_URL to it, and {ENV_PREFIX}"
                    f"{name.upper()} to a standalone or Sentinel Redis (or RabbitMQ)"
                )
        if self.state_redis_url and _is_cluster_url(self.state_redis_url):
            try:
                ClusterAddress.parse(self.state_redis_url)
            except SettingsError as exc:
                raise ValueError(f"{ENV_PREFIX}STATE_REDIS_URL: {exc}") from None
        if self.retry_max_delay < self.retry_initial_delay:
            raise ValueError("retry_max_delay must be >= retry_initial_delay")
        if self.task_time_limit <= self.task_soft_time_limit:
            raise ValueError("task_time_limit must be greater than task_soft_time_limit")
        slowest_call = self.slowest_call
        if self.circuit_half_open_timeout <= slowest_call:
            # A call's lease in the breaker must outlive the call, or a slow call that is
            # still running would no longer count.
            raise ValueError(
                f"circuit_half_open_timeout must exceed the slowest downstream call "
                f"(connect + read timeout: {slowest_call:.0f} s)"
            )
        if self.visibility_timeout is not None and self.visibility_timeout <= (
            self.task_time_limit
        ):
            # A Redis broker redelivers a message unacked for visibility_timeout: a run
            # allowed to last longer would run twice.
            raise ValueError(
                f"visibility_timeout must exceed the hard time limit ({self.task_time_limit:g} s)"
            )
        if self.redis_outage_tolerance >= self.task_soft_time_limit:
            raise ValueError("redis_outage_tolerance must be below task_soft_time_limit")
        if self.circuit_slow_call_duration >= self.circuit_half_open_timeout:
            # A call stops counting when its lease (half_open_timeout) lapses.
            raise ValueError("circuit_slow_call_duration must be below circuit_half_open_timeout")
        broker = self.broker_url or self.redis_url or ""
        if self.queue_type == "quorum" and broker.partition("://")[0] not in AMQP_SCHEMES:
            # Quorum queues are RabbitMQ's; Celery's Redis transport would ignore the type.
            scheme = broker.partition("://")[0] + "://"
            if self.broker_url:
                found = f"INTENT_BROKER_URL is {scheme}"
            elif self.redis_url:
                found = f"INTENT_BROKER_URL is unset, so the broker is INTENT_REDIS_URL ({scheme})"
            else:
                found = "INTENT_BROKER_URL is unset"
            raise ValueError(f"INTENT_QUEUE_TYPE=quorum needs a RabbitMQ broker (amqp://): {found}")
        for name in ("redis_url", "broker_url", "result_backend_url", "state_redis_url"):
            url = getattr(self, name)
            if url and is_sentinel_url(url):
                try:
                    sentinel_target(url, self.sentinel_master)
                except ValueError as exc:  # the message names no part of the URL's secrets
                    raise ValueError(f"{ENV_PREFIX}{name.upper()}: {exc}") from None
        return self

    def bulkhead(self, service: str) -> int:
        """``INTENT_BULKHEAD_<SERVICE>`` for a downstream service by its breaker's name
        (``context-service``), 0 (no limit) for any other."""
        limits = {
            "context-service": self.bulkhead_context_service,
            "prediction-service": self.bulkhead_prediction_service,
        }
        return limits.get(service, BULKHEAD_LIMIT)

    @property
    def worker_queues(self) -> tuple[str, ...]:
        """The queues a worker consumes: the project's, then the client default."""
        extra = self.client_default_queue
        return (self.queue,) if extra in ("", self.queue) else (self.queue, extra)

    @property
    def effective_visibility_timeout(self) -> int:
        """How long the Redis broker waits before delivering an unacked message again."""
        if self.visibility_timeout is not None:
            return self.visibility_timeout
        return math.ceil(self.task_time_limit + VISIBILITY_MARGIN)

    @property
    def publish_retry_policy(self) -> dict[str, float]:
        """kombu's retry policy for every publish: waits of 0, 0.5, 1, 1.5, then 2 s each,
        as many as cover ``redis_outage_tolerance``."""
        retries = 4 + math.ceil(max(0.0, self.redis_outage_tolerance - 3.0) / 2.0)
        return {
            "max_retries": retries,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 2.0,
        }

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or self.require_redis_url()

    @property
    def effective_result_backend(self) -> str:
        return self.result_backend_url or self.require_redis_url()

    @property
    def slowest_call(self) -> float:
        """The longest a downstream call may take: connect plus read timeout."""
        return max(
            self.context_connect_timeout + self.context_read_timeout,
            self.prediction_connect_timeout + self.prediction_read_timeout,
        )

    @property
    def drill_max_latency(self) -> float:
        """The most delay a drill may add: with the slowest call it must end within the
        call's lease in the breaker (``circuit_half_open_timeout``), or the call would stop
        counting (toward the bulkhead, as slow) while it still runs."""
        return max(0.0, self.circuit_half_open_timeout - self.slowest_call)

    def require_state_redis_url(self) -> str:
        """Where the state lives: ``state_redis_url``, else ``redis_url``."""
        return self.state_redis_url or self.require_redis_url()

    @property
    def effective_state_redis_url(self) -> str | None:
        """``state_redis_url``, else ``redis_url``; None when neither is set."""
        return self.state_redis_url or self.redis_url

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise SettingsError(
                f"{ENV_PREFIX}REDIS_URL is not set; point it at a Redis server, or use "
                "`intent demo` / `intent up`, which start an embedded one (`intent up` "
                "prints the export lines another shell needs)"
            )
        return self.redis_url


def _is_cluster_url(url: str) -> bool:
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


def _env_name(loc: tuple[int | str, ...]) -> str:
    return ENV_PREFIX + "_".join(str(part) for part in loc).upper() if loc else "INTENT_*"


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment, turning validation errors into named ones."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"{_env_name(err['loc'])}: {err['msg']}" for err in exc.errors(include_url=False)
        )
        raise SettingsError(f"invalid configuration: {problems}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once; tests call ``get_settings.cache_clear()``)."""
    return load_settings()
