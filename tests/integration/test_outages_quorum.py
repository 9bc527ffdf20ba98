"""Outages on RabbitMQ quorum queues (``INTENT_QUEUE_TYPE=quorum``): the outage tests that
lean on the broker (retries and ten open cycles of a breaker, whose waits are parked in
Redis and released into the quorum queue; a dead host's breaker; a worker host SIGKILLed
mid-analysis, whose unacked messages the quorum queue hands to a new worker), collected
again from ``test_outages`` and run with every worker they start on a quorum queue.

The broker is found as in ``test_pipeline_amqp``; the run has a place of its own on it
(``tests/integration/rabbitmq.py``), removed at the end.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from intent.reference import ReferenceServices
from tests.integration import test_outages
from tests.integration.rabbitmq import own_place, quorum_broker
from tests.integration.test_outages import _print_factor, scaled  # noqa: F401  # fixtures
from tests.integration.test_pipeline_amqp import amqp_url  # noqa: F401  # the broker fixture

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("on_quorum_queues")]


@pytest.fixture(scope="module")
def on_quorum_queues(reference: ReferenceServices, amqp_url: str) -> Iterator[None]:  # noqa: F811
    """This process and every worker a test starts on a quorum queue of the run's own."""
    queue = f"intent-test-quorum-{uuid.uuid4().hex[:12]}"
    with own_place(amqp_url, [queue]) as url, quorum_broker(url, queue):
        yield


test_deferred_ten_times_and_retried_twice_then_deferred_five_times_all_complete = (
    test_outages.test_deferred_ten_times_and_retried_twice_then_deferred_five_times_all_complete
)
test_a_dead_host_opens_the_breaker_after_at_most_threshold_requests = (
    test_outages.test_a_dead_host_opens_the_breaker_after_at_most_threshold_requests
)
test_a_killed_worker_hosts_analyses_complete_on_a_new_worker_before_their_deadline = (
    test_outages.test_a_killed_worker_hosts_analyses_complete_on_a_new_worker_before_their_deadline
)
