"""The broker connection the worker re-establishes at the project's pace.

While Celery's worker reconnects to a broker that went away it runs nothing else: results
the pool processes have sent are not read, and the time-limit timers of the tasks they ran
fire when it resumes, before those results (a finished task is then timed out, and its
analysis failed). kombu's pace is 2 s, 4 s, 6 s ... up to 30 s between attempts, so a
Redis restart of a few seconds kept the worker away for many more. Here the attempts come
every ``INTENT_BROKER_RECONNECT_INTERVAL`` (1 s), the first at once, for as long as it
takes (``broker_connection_max_retries`` is unbounded in celeryconfig.py).
"""

from __future__ import annotations

from typing import Any

from celery.app.amqp import AMQP
from kombu import Connection

from intent.settings import get_settings


class PacedConnection(Connection):
    def ensure_connection(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) <= 2:  # (errback, max_retries), as Celery's consumer calls it
            pace = get_settings().broker_reconnect_interval
            kwargs.setdefault("interval_start", 0)
            kwargs.setdefault("interval_step", pace)
            kwargs.setdefault("interval_max", pace)
        return super().ensure_connection(*args, **kwargs)


class IntentAMQP(AMQP):
    """Celery's AMQP layer with the paced connection (``Celery(amqp=...)``)."""

    Connection = PacedConnection
    BrokerConnection = PacedConnection
