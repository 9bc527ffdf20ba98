"""``GET /metrics``: every process's samples merged, and the fleet's shared state read at
each scrape (breakers, waiting steps, queue depth, dead letters), so the figures are the
fleet's, not one process's last sight of them."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any, cast

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from intent import metrics
from intent.breaker import CircuitAdmin
from intent.breaker.prometheus import BreakerStateCollector
from intent.connections import data_client
from intent.runtime import Runtime

log = logging.getLogger("intent.metrics")


# The breakers' state is read by the collector a team using the breaker alone registers
# too (intent.breaker.register_metrics): one reader of the store, exported here as part of
# the exposition.
__all__ = ["BreakerStateCollector", "SharedStateCollector", "exposition"]


class SharedStateCollector:
    """Waiting steps per lane, the broker queue's depth and the dead letters, read from
    Redis at each scrape (a family is left out when it cannot be read)."""

    def __init__(self, runtime: Runtime):
        self._runtime = runtime

    def collect(self) -> Iterator[Metric]:
        rt = self._runtime
        for build in (self._waiting, self._queue, self._dead):
            try:
                yield build(rt)
            except Exception as exc:  # the store_up gauge already says when Redis is away
                log.warning("metrics: %s unreadable: %s", build.__name__.strip("_"), exc)

    @staticmethod
    def _waiting(rt: Runtime) -> Metric:
        gauge = metrics.BY_NAME["intent_waiting_steps"].gauge()
        for lane, count in rt.waiting.depth().items():
            gauge.add_metric([lane], count)
        return gauge

    @staticmethod
    def _queue(rt: Runtime) -> Metric:
        gauge = metrics.BY_NAME["intent_queue_messages"].gauge()
        broker = rt.settings.broker_url or rt.settings.redis_url or ""
        if broker.startswith(("redis://", "rediss://")) and broker == rt.settings.redis_url:
            # The queues are the broker's, which is not the state's Redis when that is a
            # cluster (INTENT_STATE_REDIS_URL).
            shared = rt.settings.effective_state_redis_url == broker
            client = rt.redis if shared else data_client(rt.settings, url=broker)
            try:
                for queue in rt.settings.worker_queues:
                    gauge.add_metric([queue], cast(int, client.llen(queue)))
            finally:
                if not shared:
                    client.close()
        return gauge

    @staticmethod
    def _dead(rt: Runtime) -> Metric:
        gauge = metrics.BY_NAME["intent_dead_letters"].gauge()
        with rt.redis.pipeline(transaction=False) as pipe:
            pipe.xlen(rt.keys.dead_tasks)
            for partition in range(rt.settings.event_partitions):
                pipe.xlen(rt.keys.dead_letter_stream(partition))
            tasks, *events = pipe.execute()
        gauge.add_metric(["events"], sum(int(n) for n in events))
        gauge.add_metric(["tasks"], int(tasks))
        return gauge


class _Merged:
    """Several collectors as one, for the encoders."""

    def __init__(self, collectors: Iterable[Any]):
        self._collectors = list(collectors)

    def collect(self) -> Iterator[Metric]:
        for collector in self._collectors:
            yield from collector.collect()


def exposition(
    runtime: Runtime, accept: str | None = None, circuits: CircuitAdmin | None = None
) -> tuple[bytes, str]:
    """The ``/metrics`` body and its content type (Prometheus text; OpenMetrics when
    ``accept`` asks for it): every process's samples plus the shared state, the breakers
    read through ``circuits`` (default: over the runtime's shared store)."""
    directory = runtime.settings.metrics_dir
    sources: list[Any] = []
    if directory:
        os.makedirs(directory, exist_ok=True)
        sources.append(MultiProcessCollector(None, path=directory))
    else:
        sources.append(metrics.metrics(runtime.settings).registry)
    sources.append(BreakerStateCollector(lambda: circuits or runtime.circuits))
    if runtime.settings.effective_state_redis_url:
        sources.append(SharedStateCollector(runtime))
    encode, content_type = choose_encoder(accept or "")
    return encode(_Merged(sources)), content_type
