"""The worker's consumer, with a gate in front of Celery: no message can take it down.

Every task message is checked first (:func:`intent.messages.inspect`: headers, content
type, a body the strict codec decodes, its shape, the task's arguments). A message that
fails is refused: its sender gets an answer (a ``ValidationError`` naming what is wrong,
stored as the failure of its task id and of the chain's tasks, so ``AsyncResult.get()``
raises instead of waiting forever), the message goes to the dead tasks with its reason and
raw bytes, and it is acked, never delivered again. A message Celery itself then fails to
handle is refused the same way rather than stopping the consumer.

The shutdown watchdog: once a worker stops, for whatever reason, it exits within the hard
time limit plus a grace, so a supervisor can restart it; it never stays wedged.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
import threading
from functools import cache
from typing import Any

from celery import bootsteps
from celery.app.task import Context
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.message import Message

from celeryqueues import DELIVERY_COUNT_HEADER, DELIVERY_LIMIT
from intent.messages import Checked, Refusal, chain_of, message_limits, task_id_of
from intent.messages import inspect as inspect_message
from intent.poison import DeadTasks
from intent.runtime import get_runtime
from intent.settings import get_settings
from tasks.steptask import release_refused

log = logging.getLogger("intent.worker")

WEDGE_GRACE = 15.0  # seconds past the hard time limit before a stopping worker exits


class Consumer(CeleryConsumer):
    """Celery's consumer; every task message passes the gate first."""

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        handle = super().create_task_handler(*args, **kwargs)
        gate = Gate(self)

        def on_task_received(message: Message) -> Any:
            checked = gate.check(message)
            if isinstance(checked, Refusal):
                return gate.refuse(message, checked)
            try:
                return handle(message)
            except self.connection_errors:
                raise  # the connection's trouble, not the message's: Celery reconnects
            except Exception as exc:
                headers = message.headers if isinstance(message.headers, dict) else {}
                refusal = Refusal(
                    "message",
                    f"could not be handled: {type(exc).__name__}: {exc}",
                    task_id_of(headers),
                    str(headers.get("task")),
                )
                log.exception("a task message broke Celery's handling; refused")
                return gate.refuse(message, refusal)

        return on_task_received


class Gate:
    """Checks messages for a consumer, and refuses the bad ones."""

    def __init__(self, consumer: Consumer):
        self.consumer = consumer
        self.app = consumer.app
        self.limits = cache(message_limits)

        @cache
        def signature(name: str) -> inspect.Signature | None:
            task = self.app.tasks.get(name)
            return None if task is None else inspect.signature(task.run)

        self.signature = signature
        self.quorum = get_settings().queue_type == "quorum"

    def check(self, message: Message) -> Checked | Refusal:
        try:
            checked = inspect_message(
                message.headers,
                message.content_type,
                message.content_encoding,
                message.body,
                self.limits(_task_name(message.headers)),
                self.signature,
            )
        except Exception as exc:  # a shape the checks did not foresee: refused all the same
            return Refusal("message", f"could not be read: {type(exc).__name__}: {exc}")
        if isinstance(checked, Checked) and self.quorum:
            return last_delivery(message.headers, checked) or checked
        return checked

    def refuse(self, message: Message, refusal: Refusal) -> None:
        log.error(
            "refused a task message: %s: %s",
            refusal.field,
            refusal.reason,
            extra={"task_id": refusal.task_id, "task": refusal.task, "field": refusal.field},
        )
        if refusal.task_id is not None:
            self.answer(refusal)
            release_refused(refusal.task_id, [dict(s) for s in refusal.chain], refusal.args)
        try:
            rt = get_runtime()
            DeadTasks(rt.redis, rt.keys, rt.settings.events_maxlen).add(
                field=refusal.field,
                reason=refusal.reason,
                task=refusal.task,
                task_id=refusal.task_id,
                content_type=message.content_type,
                headers=message.headers,
                body=message.body,
            )
        except Exception as exc:
            log.error("could not keep the refused message: %s", exc)
        message.ack_log_error(log, self.consumer.connection_errors)

    def answer(self, refusal: Refusal) -> None:
        """The sender's answer: the refusal as the failure of its task (and chain)."""
        error = refusal.error()
        request = Context(
            {
                "id": refusal.task_id,
                "task": refusal.task,
                "chain": [dict(s) for s in refusal.chain],
                "errbacks": None,
                "chord": None,
                "group": None,
            }
        )
        try:
            self.app.backend.mark_as_failure(refusal.task_id, error, request=request)
        except Exception as exc:
            log.error("could not store the refusal of %s: %s", refusal.task_id, exc)
        dispatcher = self.consumer.event_dispatcher
        if dispatcher is not None:
            try:
                dispatcher.send("task-failed", uuid=refusal.task_id, exception=repr(error))
            except Exception as exc:
                log.warning("could not send the task-failed event: %s", exc)


def last_delivery(headers: Any, checked: Checked) -> Refusal | None:
    """A quorum queue's message on its last delivery (it came back ``DELIVERY_LIMIT``
    times: its runs kept dying, or were never acknowledged) is refused rather than run
    once more and then dropped by the broker: its sender is answered, and it is kept with
    the dead tasks."""
    count = headers.get(DELIVERY_COUNT_HEADER)
    if not isinstance(count, int) or isinstance(count, bool) or count < DELIVERY_LIMIT:
        return None
    return Refusal(
        f"headers.{DELIVERY_COUNT_HEADER}",
        f"delivered {count + 1} times and never acknowledged (the quorum queue's delivery "
        f"limit is {DELIVERY_LIMIT}): each run died or was cut off",
        task_id_of(headers),
        _task_name(headers),
        chain_of(checked.embed),
        checked.args,
    )


def is_worker_process() -> bool:
    """Whether this process is ``celery worker`` (as ``intent worker`` becomes)."""
    program = os.path.basename(sys.argv[0]) if sys.argv else ""
    runs_celery = program in ("celery", "__main__.py") and "celery" in sys.argv[0]
    return runs_celery and "worker" in sys.argv[1:]


def _task_name(headers: Any) -> str | None:
    name = headers.get("task") if isinstance(headers, dict) else None
    return name if isinstance(name, str) else None


class Watchdog(bootsteps.StartStopStep):
    """Once the worker stops (a signal, an unrecoverable error), it exits within the hard
    time limit plus a grace, whatever part of a shutdown hangs."""

    def __init__(self, parent: Any, **kwargs: Any):
        super().__init__(parent, **kwargs)
        self._armed = False

    def stop(self, worker: Any) -> None:
        # Only a worker that is its own process (`celery worker`, `intent worker`): a worker
        # embedded in another program (tests' start_worker) stops without ending its host.
        if is_worker_process():
            self.arm()

    shutdown = terminate = stop

    def arm(self) -> None:
        if self._armed:
            return
        self._armed = True
        limit = get_settings().task_time_limit + WEDGE_GRACE

        def expire() -> None:
            log.critical("worker still stopping after %.0f s: exiting", limit)
            os._exit(1)

        timer = threading.Timer(limit, expire)
        timer.daemon = True
        timer.start()
