"""Outages on RabbitMQ quorum queues (``INTENT_QUEUE_TYPE=quorum``): the outage tests that
lean on the broker: retries and ten open cycles of a breaker, whose waits are parked in
Redis and released into the quorum queue (collected again from ``test_outages``), and a
worker host SIGKILLed mid-analysis, whose unacked message the quorum queue hands to a new
worker; every worker they start is on a quorum queue. (The test of a next step that cannot
be published stops Redis as the broker: with RabbitMQ that step is published, so it does
not apply.)

The broker is found as in ``test_pipeline_amqp``; the run has a place of its own on it
(``tests/integration/rabbitmq.py``), removed at the end.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator

import pytest
import redis
from kombu import Connection

from intent.dev.stack import WorkerProcess, running_worker
from intent.reference import ReferenceControl, ReferenceServices
from tasks import submit
from tests.helpers import stream_events, wait_until
from tests.integration import test_outages
from tests.integration.rabbitmq import own_place, quorum_broker
from tests.integration.test_outages import _print_factor, scaled  # noqa: F401  # fixtures
from tests.integration.test_pipeline_amqp import amqp_url  # noqa: F401  # the broker fixture

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("on_quorum_queues")]


@pytest.fixture(scope="module")
def on_quorum_queues(
    reference: ReferenceServices,
    amqp_url: str,  # noqa: F811
) -> Iterator[tuple[str, str]]:
    """This process and every worker a test starts on a quorum queue of the run's own (the
    broker URL and the queue)."""
    queue = f"intent-test-quorum-{uuid.uuid4().hex[:12]}"
    with own_place(amqp_url, [queue]) as url, quorum_broker(url, queue):
        yield url, queue


test_deferred_ten_times_and_retried_twice_then_deferred_five_times_all_complete = (
    test_outages.test_deferred_ten_times_and_retried_twice_then_deferred_five_times_all_complete
)


def test_a_killed_workers_message_waits_in_the_quorum_queue_and_runs_once_more(
    on_quorum_queues: tuple[str, str],
    scaled: dict[str, str],  # noqa: F811
    prediction_service: ReferenceControl,
    redis_client: redis.Redis,
) -> None:
    """SIGKILL to the whole process group of the only worker while its predict step is
    in flight: RabbitMQ puts the unacked message back in the quorum queue as the
    connection drops (no visibility timeout), a new worker runs the step again, and the
    analysis completes with each of its events published once."""
    url, queue = on_quorum_queues
    worker = WorkerProcess(2, env=scaled, loglevel="INFO")
    try:
        worker.wait_ready()
        prediction_service.set_faults(latency_ms=3000, count=1)  # the first predict hangs
        (payload,) = test_outages.new_requests("quorum-killed", 1)
        rid = submit(payload).request_id
        wait_until(lambda: prediction_service.requests_log(), 20, "the predict call")
        os.killpg(worker.process.pid, signal.SIGKILL)
        worker.process.wait()
    finally:
        worker.stop()
    wait_until(lambda: _ready(url, queue) == 1, 10, "the message back in the queue")
    with running_worker(concurrency=2, env=scaled) as replacement:
        (done,) = test_outages.results([rid], timeout=60)
        replacement.stop()
    predicts = [r for r in prediction_service.requests_log() if "predict" in str(r["path"])]
    assert done.status == "completed"
    assert len(predicts) == 2  # the step ran again: redelivered
    events = stream_events(redis_client, rid)
    assert len({e.id for e in events}) == len(events) == done.published > 0


def _ready(url: str, queue: str) -> int:
    with Connection(url, connect_timeout=5) as conn:
        _, ready, _ = conn.default_channel.queue_declare(queue, passive=True)
    return int(ready)
