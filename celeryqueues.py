"""The broker's queues, by ``INTENT_QUEUE_TYPE``: Celery's settings for the queues a worker
consumes (``INTENT_QUEUE`` and the client default), read by ``celeryconfig``.

A top-level module, as ``celeryconfig`` is, and for the same reason: Celery's default
loader imports ``celeryconfig`` before the app, so neither may import the ``tasks`` package
(it would load the app, its task modules and the runtime inside the loader; on a gevent
worker the control channel then stayed silent for a minute: no ping, no inspect).
``tests/unit/test_queues.py`` checks that importing them loads nothing of ``tasks``.

- ``classic``: each queue a durable classic queue on a direct exchange of its name, as a
  plain Celery client declares it.
- ``quorum`` (RabbitMQ only; ``intent.settings`` refuses another broker): each queue a
  quorum queue with a delivery limit of :data:`DELIVERY_LIMIT`, on a *topic* exchange of
  its name, since Celery's native delayed delivery binds a queue's exchange to its
  ``celery_delayed_delivery`` exchange and cannot bind a direct one. Quorum queues have no
  global QoS: the worker detects them and sets its prefetch per consumer. A message with a
  countdown or an ETA waits in the broker (the ``celery_delayed_0`` … ``celery_delayed_27``
  queues each worker declares), not unacked in a worker, where RabbitMQ's
  ``consumer_timeout`` would close the channel. The pipeline itself sends none: its waits
  are parked in Redis (``intent.waiting``).
"""

from __future__ import annotations

from typing import Any

from kombu import Exchange, Queue

from intent.settings import Settings

# The deliveries of one message a quorum queue allows (RabbitMQ 4's default, declared so
# that RabbitMQ 3 counts the same). The worker's gate refuses a message on its last one
# (tasks/consumer.py), so the broker never drops it unseen.
DELIVERY_LIMIT = 20
# The header a quorum queue adds to a redelivered message: how often it came back.
DELIVERY_COUNT_HEADER = "x-delivery-count"


def queue_settings(settings: Settings) -> dict[str, Any]:
    """Celery's queue settings for ``settings.queue_type``."""
    names = settings.worker_queues
    if settings.queue_type == "classic":
        return {
            "task_queues": tuple(Queue(name, Exchange(name), routing_key=name) for name in names),
        }
    arguments = {"x-queue-type": "quorum", "x-delivery-limit": DELIVERY_LIMIT}
    return {
        "task_queues": tuple(
            Queue(name, Exchange(name, type="topic"), routing_key=name, queue_arguments=arguments)
            for name in names
        ),
        # A queue Celery declares by itself (a route to a queue not listed above, or Celery's
        # default when the listed ones are replaced) is a quorum queue on a topic exchange too.
        "task_default_queue_type": "quorum",
        "task_create_missing_queue_type": "quorum",
        "task_default_exchange_type": "topic",
        "task_create_missing_queue_exchange_type": "topic",
        # Celery's defaults, said here since the set-up depends on them: per-consumer QoS
        # once a quorum queue is among the worker's queues, and the delayed-delivery
        # queues declared as quorum queues.
        "worker_detect_quorum_queues": True,
        "broker_native_delayed_delivery_queue_type": "quorum",
    }
