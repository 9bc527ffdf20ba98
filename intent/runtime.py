"""The per-process wiring: settings, Redis client, service clients, detector, publisher.

Built lazily on first use and rebuilt after a fork (``intent.forks.ForkLocal``), so a
prefork worker child never shares a socket with its parent. Under ``-P threads`` or
``-P gevent`` every task of the process shares it: each member is built once, by the first
task that needs it (``intent.once``), and what the members hold is safe to share (redis-py
clients and their pools, the breakers' stores and locks, one ``requests.Session`` per
service whose urllib3 pool hands a connection to one caller at a time).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import redis
from redis import Redis

from intent import metrics
from intent.breaker import (
    CLOSED,
    CircuitAdmin,
    CircuitBreaker,
    CircuitConfig,
    TransitionListener,
)
from intent.breaker.registry import default_store, forget_stores
from intent.breaker.stores import BreakerStore
from intent.budget import RetryBudget
from intent.cache import ContextCache
from intent.clients import ContextServiceClient, PredictionServiceClient, ServiceClients
from intent.connections import breaker_client, data_client
from intent.detection import PatternDetector, Rules
from intent.drills import DrillSource, DrillStore
from intent.errors import ServiceUnavailableError
from intent.events.publisher import EventPublisher
from intent.forks import ForkLocal
from intent.keys import Keys
from intent.models import SERVICES
from intent.once import object_lock, once_property
from intent.ratelimit import ANALYZE_CONTEXT, GET_CONTEXT, PREDICT, RateLimits
from intent.settings import Settings, get_settings
from intent.waiting import Lane, WaitingRoom

log = logging.getLogger("intent.runtime")


@dataclass
class Runtime:
    settings: Settings

    @once_property
    def keys(self) -> Keys:
        return Keys(self.settings.key_prefix)

    @once_property
    def redis(self) -> redis.Redis:
        return data_client(self.settings)

    @once_property
    def breaker_store(self) -> BreakerStore:
        """Shared breaker state in Redis, falling back to memory while Redis is away: the
        process's one store for these settings (intent.breaker.registry)."""
        return default_store(self.settings)

    @once_property
    def circuits(self) -> CircuitAdmin:
        """Operators' view of the breakers over the breakers' store (its shared state: see
        CircuitAdmin); the transitions its actions make are counted."""
        return CircuitAdmin(self.breaker_store, on_transition=self._operator_moved)

    def _operator_moved(self, breaker: str, old: str, new: str) -> None:
        """An operator's move: counted; a breaker reset or closed releases the steps that
        wait for it now, not when their wait would have ended."""
        metrics.record_transition(breaker, old, new)
        if new == CLOSED:
            try:
                # Once every process has dropped the refusal it remembered (recheck).
                self.waiting.wake(breaker, at=time.time() + self.settings.circuit_recheck_interval)
            except (ServiceUnavailableError, redis.RedisError) as exc:
                # The move stands; they run when their wait ends.
                log.warning("could not wake the steps waiting for %s: %s", breaker, exc)

    @once_property
    def breakers(self) -> dict[str, CircuitBreaker]:
        return {}

    def breaker(self, service: str) -> CircuitBreaker:
        """The process's breaker for ``service`` (state shared fleet-wide by name)."""
        found = self.breakers.get(service)
        if found is not None:
            return found
        with object_lock(self):  # one breaker per service, whichever task asks first
            if service not in self.breakers:
                self.breakers[service] = self._new_breaker(service)
            return self.breakers[service]

    def _new_breaker(self, service: str) -> CircuitBreaker:
        # A call whose failure opens the breaker (a trip, a failed trial) raises the
        # breaker's CircuitOpenError: its step waits for the breaker, spending no retry on
        # an outage that the breaker has already called.
        return CircuitBreaker(
            service,
            CircuitConfig.from_settings(self.settings, service),
            store=self.breaker_store,
            throw_new_error_on_trip=True,
            # The transitions this process performs are counted; the breaker knows the
            # metrics only as this callable.
            listeners=[TransitionListener(metrics.record_transition)],
        )

    @once_property
    def retry_budget(self) -> RetryBudget:
        """The downstream services' fleet-wide retry budgets; each spend is counted."""
        return RetryBudget.from_settings(self.redis, self.settings, metrics.record_retry_budget)

    def spend_retry(self, service: str) -> float | None:
        """Spend one retry of ``service``'s budget (the recovery decision's ``spend``): None
        if granted, else seconds to wait. Only the services behind a breaker have one."""
        if service not in SERVICES:
            return None
        return self.retry_budget.spend(service)

    @once_property
    def rate_limits(self) -> RateLimits:
        return RateLimits(self.settings, self.keys)

    @once_property
    def drill_store(self) -> DrillStore:
        """The resilience drills, as operators start, list and stop them."""
        s = self.settings
        return DrillStore(self.redis, self.keys, s.drill_max_seconds, s.drill_max_latency)

    @once_property
    def drill_redis(self) -> Redis:
        """The client the calls read their drills with: it fails as fast as the breaker's
        (a dead Redis is no drill at once, not a stalled call)."""
        s = self.settings
        return breaker_client(
            s.require_state_redis_url(), s.circuit_redis_socket_timeout, s.sentinel_master
        )

    @once_property
    def drills(self) -> DrillSource:
        """The drill each downstream call meets, read at most once per drill_refresh."""
        s = self.settings
        store = DrillStore(self.drill_redis, self.keys, s.drill_max_seconds)
        return DrillSource(store.get, s.drill_refresh, counted=metrics.record_drill_fault)

    @once_property
    def clients(self) -> ServiceClients:
        # Every downstream call: its endpoint's shared rate limit, then its service's
        # breaker, then a drill's fault if one hits it, then HTTP.
        return ServiceClients(
            self.settings,
            guard_for=lambda service: self.breaker(service).call,
            probe_for=lambda service: self.breaker(service).probe,
            limiter=self.rate_limits.hit,
            observe=metrics.observe_request,
            drill=self.drills,
        )

    @once_property
    def context_cache(self) -> ContextCache:
        s = self.settings
        return ContextCache(self.redis, self.keys, s.context_cache_ttl, s.context_cache_stale_ttl)

    @once_property
    def detector(self) -> PatternDetector:
        rules = Rules(self.settings.detection_threshold, self.settings.update_delta)
        return PatternDetector(self.redis, self.keys, rules, self.settings.result_expires)

    @once_property
    def waiting(self) -> WaitingRoom:
        """Steps parked until they may run again, in a lane per endpoint, each released at
        its endpoint's shared rate limit while its breaker admits calls."""
        s = self.settings
        period = float(s.downstream_rate_period)
        lanes = [
            Lane(GET_CONTEXT, ContextServiceClient.service, s.rate_limit_get_context / period),
            Lane(
                ANALYZE_CONTEXT, ContextServiceClient.service, s.rate_limit_analyze_context / period
            ),
            Lane(PREDICT, PredictionServiceClient.service, s.rate_limit_predict / period),
        ]
        # A leased step goes back to waiting if its releaser could not publish it: after
        # the publish's own retries at the latest.
        lease = s.redis_outage_tolerance + 30.0
        return WaitingRoom(self.redis, self.keys, lanes, lease=lease, batch=s.release_batch)

    @once_property
    def publisher(self) -> EventPublisher:
        s = self.settings
        return EventPublisher(
            self.redis, self.keys, s.events_maxlen, s.event_dedup_ttl, s.event_partitions
        )

    def close(self) -> None:
        if "clients" in self.__dict__:
            self.clients.close()
        if "drill_redis" in self.__dict__:
            self.drill_redis.close()
        if "redis" in self.__dict__:
            self.redis.close()


_runtime: ForkLocal[Runtime] = ForkLocal(lambda: Runtime(get_settings()))


def get_runtime() -> Runtime:
    """This process's runtime (a new one in a forked child)."""
    return _runtime.get()


def reset_runtime() -> None:
    """Forget the runtime and settings (tests that change the environment call this)."""
    runtime = _runtime.forget()  # a parent's runtime is left alone: its sockets are not ours
    if runtime is not None:
        runtime.close()
    forget_stores()
    get_settings.cache_clear()
