"""The core pipeline tests once more, with RabbitMQ as the broker: Redis keeps the results,
the breaker, the limits, the cache and the events.

``INTENT_TEST_AMQP_URL`` names the broker; unreachable, every test here fails. Unset, the
tests use a RabbitMQ at ``amqp://guest:guest@127.0.0.1:5672//`` when one answers and are
skipped when none does.

The tests of ``test_pipeline_inprocess`` and ``test_pipeline_prefork`` are collected here a
second time and run against a prefork worker on RabbitMQ (``prefork_worker`` below). The
run has a queue of its own (``INTENT_QUEUE``), deleted with its exchange at the end, so
messages left on a shared broker never reach it.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import kombu.pools
import pytest
import redis
from celery import Celery
from kombu import Connection

from celeryqueues import queue_settings
from intent.dev.stack import WorkerProcess, running_worker
from intent.reference import ReferenceServices
from intent.runtime import reset_runtime
from intent.settings import get_settings
from tasks import submit
from tasks.app import app
from tests import helpers
from tests.helpers import request
from tests.integration import test_pipeline_inprocess, test_pipeline_prefork
from tests.integration.conftest import FAST_RETRY_ENV

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefork_worker")]

AMQP_URL_VARIABLE = "INTENT_TEST_AMQP_URL"
LOCAL_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"


def _masked(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":**@")).geturl()


@pytest.fixture(scope="module")
def amqp_url() -> str:
    given = os.environ.get(AMQP_URL_VARIABLE)
    url = given or LOCAL_AMQP_URL
    with Connection(url, connect_timeout=5) as conn:
        if conn.transport.driver_type != "amqp":
            pytest.fail(f"{AMQP_URL_VARIABLE}={_masked(url)} does not name an AMQP broker")
        try:
            conn.connect()
        except Exception as exc:
            if given:
                pytest.fail(f"{AMQP_URL_VARIABLE}={_masked(url)} is unreachable: {exc!r}")
            pytest.skip(f"no RabbitMQ at {_masked(url)} ({exc!r}); {AMQP_URL_VARIABLE} names one")
    return url


def _drop_broker_state(celery_app: Celery) -> None:
    """Forget what the app built from its broker settings: its connection and producer
    pools (kombu's registry of pools is emptied, their connections closed), and with
    ``app.amqp`` the queues, the router and the task sender."""
    celery_app.__dict__.pop("amqp", None)
    celery_app._pool = None
    kombu.pools.reset()


@contextlib.contextmanager
def broker(url: str, queue: str, queue_type: str = "classic") -> Iterator[None]:
    """This process (settings, Celery app) and the workers started inside on ``url`` and
    ``queue`` (with ``queue_type`` quorum, a quorum queue, celeryqueues.py); everything as
    it was afterwards.

    The app read celeryconfig when an earlier module first used it, so its broker and
    default queue are changed in place, and rebuilt from them again on the way out.
    """
    # Celery's default queue on a shared RabbitMQ may be another application's: not consumed.
    variables = {"INTENT_BROKER_URL": url, "INTENT_QUEUE": queue, "INTENT_CLIENT_DEFAULT_QUEUE": ""}
    if queue_type != "classic":
        variables["INTENT_QUEUE_TYPE"] = queue_type
    # The app's configuration is read now, if no earlier test did, from the settings as
    # they are: read after the change, what is restored on the way out would be the change.
    app.conf.broker_url  # noqa: B018
    saved_env = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    reset_runtime()
    conf = {"broker_url": url, "task_default_queue": queue}
    if queue_type != "classic":
        conf.update(queue_settings(get_settings()))
    saved_conf = {key: app.conf[key] for key in conf}
    app.conf.update(conf)
    _drop_broker_state(app)
    try:
        yield
    finally:
        _drop_broker_state(app)
        app.conf.update(saved_conf)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        reset_runtime()


def _delete_queue(url: str, queue: str) -> None:
    """Delete the run's queue and its exchange (both named after it), nothing else."""
    with Connection(url, connect_timeout=5) as conn:
        channel = conn.default_channel
        channel.queue_delete(queue)
        channel.exchange_delete(queue)


@pytest.fixture(scope="module")
def amqp_queue(amqp_url: str) -> Iterator[str]:
    queue = f"intent-test-{uuid.uuid4().hex[:12]}"
    try:
        yield queue
    finally:
        _delete_queue(amqp_url, queue)


@pytest.fixture(scope="module")
def prefork_worker(
    reference: ReferenceServices, amqp_url: str, amqp_queue: str
) -> Iterator[WorkerProcess]:
    """A prefork worker on RabbitMQ, with this process's client pointed there too."""
    with (
        broker(amqp_url, amqp_queue),
        running_worker(concurrency=2, env=FAST_RETRY_ENV, loglevel="INFO") as worker,
    ):
        yield worker


def test_the_pipeline_runs_on_rabbitmq(
    clean: redis.Redis, prefork_worker: WorkerProcess, amqp_url: str, amqp_queue: str
) -> None:
    # The worker's broker connection and the queue it consumes.
    inspect = app.control.inspect([prefork_worker.name], timeout=5)
    stats = (inspect.stats() or {})[prefork_worker.name]
    assert stats["broker"]["transport"] == "amqp"
    assert stats["broker"]["hostname"] == urlsplit(amqp_url).hostname
    queues = (inspect.active_queues() or {})[prefork_worker.name]
    assert [q["name"] for q in queues] == [amqp_queue]
    conf = (inspect.conf() or {})[prefork_worker.name]
    assert conf["broker_url"].startswith("amqp://")
    # The project's Redis result backend (tasks/backend.py) on the test Redis.
    backend, _, url = conf["result_backend"].partition("+")
    assert backend == "tasks.backend:RedisBackend" and url.startswith("redis://")
    # This process publishes there too.
    with app.connection_for_write() as conn:
        assert conn.transport.driver_type == "amqp"
    assert get_settings().effective_broker_url == amqp_url

    result = submit(request()).get(timeout=30)
    assert result.status == "completed"
    # The queue is RabbitMQ's, consumed by the worker; Redis holds no trace of it.
    with Connection(amqp_url, connect_timeout=5) as conn:
        _, ready, consumers = conn.default_channel.queue_declare(amqp_queue, passive=True)
    assert ready == 0 and consumers == 1
    assert not clean.exists(amqp_queue)
    assert clean.keys(f"_kombu.binding.{amqp_queue}*") == []


def test_flower_sees_the_pipeline_over_rabbitmq(
    clean: redis.Redis,
    prefork_worker: WorkerProcess,
    amqp_url: str,
    tmp_path: Path,
) -> None:
    with helpers.running_flower(helpers.production_env(), tmp_path / "flower.log") as flower:
        flower.wait_for_worker(prefork_worker.name)
        run = helpers.run_analyses(clean)
        helpers.assert_flower_shows_the_pipeline(flower, prefork_worker.name, run)
        helpers.assert_flower_lists_the_worker(flower, prefork_worker.name, "amqp")
        output = flower.output()
    assert "Broker: amqp://" in output
    password = urlsplit(amqp_url).password
    if password:
        assert f":{password}@" not in output  # Flower prints the broker URL masked


# The core tests, collected again in this module: here they run on RabbitMQ
# (after the two above, which show that the worker and this client really use it).
for _module in (test_pipeline_inprocess, test_pipeline_prefork):
    for _name, _test in vars(_module).items():
        if _name.startswith("test_") and callable(_test):
            globals()[_name] = _test
