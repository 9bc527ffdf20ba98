"""The Celery application of the intent pipeline (``celery -A tasks.app worker``)."""

from celery import Celery

import tasks.signals  # noqa: F401  # log set-up and task context: connected before any use
from tasks import pools as _pools  # noqa: F401  # the worker declares its pool at start
from tasks import serializer, transport
from tasks import tracing as _tracing  # noqa: F401  # task spans, context in message headers

transport.install()  # before any broker connection: the Redis transport, one defect mended

serializer.install()  # application/json: plain JSON only, bounded, no type markers

app = Celery(
    "intent",
    amqp="tasks.connection:IntentAMQP",  # reconnects to the broker every second, not 2-30 s
    include=["tasks.pipeline", "tasks.batch", "tasks.health"],
)
app.config_from_object("celeryconfig")
# The worker's own steps, named as Celery names its defaults (and worker_consumer in
# celeryconfig): loaded when a worker builds its blueprint, so a producer that imports the
# app for submit() does not load the worker side.
# Every worker publishes the waiting steps that are due (intent/waiting.py).
app.steps["consumer"].add("tasks.release:ReleaseStep")
# A stopping worker exits within a bound, whatever hangs (tasks/consumer.py).
app.steps["worker"].add("tasks.consumer:Watchdog")
