"""The Celery application of the intent pipeline (``celery -A tasks.app worker``)."""

from celery import Celery

import tasks.signals  # noqa: F401  # log set-up and task context: connected before any use
from tasks import serializer, transport
from tasks import tracing as _tracing  # noqa: F401  # task spans, context in message headers
from tasks.consumer import Watchdog
from tasks.release import ReleaseStep

transport.install()  # before any broker connection: the Redis transport, one defect mended

serializer.install()  # application/json: plain JSON only, bounded, no type markers

app = Celery(
    "intent",
    amqp="tasks.connection:IntentAMQP",  # reconnects to the broker every second, not 2-30 s
    include=["tasks.pipeline", "tasks.batch", "tasks.noop", "tasks.health"],
)
app.config_from_object("celeryconfig")
# Every worker publishes the waiting steps that are due (intent/waiting.py).
app.steps["consumer"].add(ReleaseStep)
# A stopping worker exits within a bound, whatever hangs (tasks/consumer.py).
app.steps["worker"].add(Watchdog)
