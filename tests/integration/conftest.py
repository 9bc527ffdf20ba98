"""Real parts for integration tests: the reference services over HTTP, and Celery workers
(in-process with ``start_worker``, or ``celery worker -P prefork`` as a subprocess).

Workers are module-scoped, and a module uses one kind, so two workers never compete for
the same queue.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from intent.dev.stack import WorkerProcess, running_worker
from intent.events import ConsumerConfig, EventConsumer, EventHandler
from intent.reference import ReferenceControl, ReferenceServices
from intent.runtime import reset_runtime
from tests.cluster import EmbeddedCluster
from tests.helpers import KEYS, Running, StartConsumer, consumer_client

# Retries on a short schedule (0.2 s, 0.4 s, 0.8 s, jitter 25 %) so tests stay quick; the
# production schedule is checked as numbers in tests/unit/test_retry.py.
FAST_RETRY_ENV = {
    "INTENT_RETRY_INITIAL_DELAY": "0.2",
    "INTENT_RETRY_MAX_DELAY": "2",
    "INTENT_RETRY_JITTER": "0.25",
    "INTENT_VERSION_CHECK_INTERVAL": "0.3",
}


def api_calls(control: ReferenceControl) -> list[dict[str, object]]:
    """The API requests a reference service received (its /health checks left out)."""
    return [r for r in control.requests_log() if str(r["path"]).startswith("/api/")]


@contextlib.contextmanager
def stored_without_its_message(
    source_id: str, missed_id: str, after: float = 0.5
) -> Iterator[None]:
    """``source_id``'s stored result copied to ``missed_id`` ``after`` s from now with a SET
    and no PUBLISH: the waiting client's subscription hears nothing, as when Celery's misses
    a result's message (celery #4039); the copy is deleted on the way out."""
    from tasks.app import app

    backend = app.backend
    meta = json.loads(backend.client.get(backend.get_key_for_task(source_id)))
    meta["task_id"] = missed_id
    key = backend.get_key_for_task(missed_id)
    timer = threading.Timer(after, lambda: backend.client.set(key, json.dumps(meta)))
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        backend.client.delete(key)


@pytest.fixture(scope="session")
def reference() -> Iterator[ReferenceServices]:
    services = ReferenceServices().start()
    os.environ["INTENT_CONTEXT_SERVICE_URL"] = services.context_url
    os.environ["INTENT_PREDICTION_SERVICE_URL"] = services.prediction_url
    for name, value in FAST_RETRY_ENV.items():
        os.environ[name] = value
    reset_runtime()
    yield services
    services.stop()


@pytest.fixture
def context_service(reference: ReferenceServices) -> Iterator[ReferenceControl]:
    control = ReferenceControl(reference.context_url)
    control.clear_faults()
    control.clear_requests()
    yield control
    control.clear_faults()


@pytest.fixture
def prediction_service(reference: ReferenceServices) -> Iterator[ReferenceControl]:
    control = ReferenceControl(reference.prediction_url)
    control.clear_faults()
    control.clear_requests()
    yield control
    control.clear_faults()


@pytest.fixture
def clean(redis_client: redis.Redis, reference: ReferenceServices) -> redis.Redis:
    """The test Redis without the service's keys, and the runtime rebuilt."""
    reset_runtime()
    return redis_client


@pytest.fixture(scope="module")
def inprocess_worker(reference: ReferenceServices) -> Iterator[object]:
    from celery.contrib.testing.worker import start_worker

    from tasks.app import app

    with start_worker(
        app, pool="threads", concurrency=4, perform_ping_check=False, loglevel="WARNING"
    ) as worker:
        yield worker


@pytest.fixture(scope="session")
def state_cluster() -> Iterator[EmbeddedCluster]:
    """A real Redis Cluster of three masters (tests/cluster.py), started on first use."""
    with EmbeddedCluster(masters=3) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def state_on_cluster(state_cluster: EmbeddedCluster) -> Iterator[EmbeddedCluster]:
    """For a module: the state on the cluster (``INTENT_STATE_REDIS_URL``, seen by this
    process and the workers it starts); the broker and results stay on the test Redis."""
    os.environ["INTENT_STATE_REDIS_URL"] = state_cluster.url
    reset_runtime()
    try:
        yield state_cluster
    finally:
        os.environ.pop("INTENT_STATE_REDIS_URL", None)
        reset_runtime()


@pytest.fixture(scope="module")
def prefork_worker(reference: ReferenceServices) -> Iterator[WorkerProcess]:
    with running_worker(concurrency=2, env=FAST_RETRY_ENV, loglevel="INFO") as worker:
        yield worker


@pytest.fixture
def start_consumer(redis_url: str, redis_client: redis.Redis) -> Iterator[StartConsumer]:
    """Starts consumers in threads (quick timings); stops them and checks they did not crash."""
    running: list[Running] = []

    def start(handler: EventHandler, consumer: str = "c1", **overrides: Any) -> Running:
        values: dict[str, Any] = {
            "group": "g",
            "block": 0.1,
            "start_id": "0",
            "retry_backoff": 0.05,
            "retry_backoff_max": 0.2,
            "claim_idle": 5.0,
            "shutdown_grace": 0.0,
            **overrides,
        }
        client = consumer_client(redis_url)
        run = Running(
            EventConsumer(client, KEYS, handler, ConsumerConfig(consumer=consumer, **values))
        )
        run.thread.start()
        running.append(run)
        return run

    yield start
    for run in running:
        run.stop()
        run.consumer.client.close()
    for run in running:
        assert run.error is None, repr(run.error)
