"""Celery wiring of tracing (``intent/tracing.py``; off unless ``INTENT_TRACING``).

Every task runs in a CONSUMER span named after it, continuing the W3C trace context
(``traceparent``) of its message's headers; every message published while a span is
current carries that span's context (``before_task_publish``). So an analysis is one trace
whatever the hop:

- ``submit()`` publishes the chain inside its ``intent.submit`` span (a caller that
  traces); a caller that does not leaves no context, and the first task starts the trace;
- ``intent.analyze`` (and ``intent.analyze_batch``) replace themselves with the chain
  while their own span is current;
- each step publishes the next itself (``PipelineTask.continue_chain``), in its span;
- a step that waits (a retry, a deferral) is parked in Redis as a signature; :func:`carry`
  puts the step span's context in its headers (``PipelineTask.park``), and the releaser,
  in the worker's main process where no span is current, publishes it as stored: the
  next run is a new span, a child of the run that parked it.

Celery copies a message's custom headers onto ``task.request`` (as attributes, and in
``request.headers``); both are read. The tracer is started in each pool process after
the fork (``worker_process_init``), lazily in a worker without a pool of processes, and
flushed when a pool process exits.
"""

from __future__ import annotations

from typing import Any

from celery import signals

from intent import tracing
from tasks.signals import payload_ids

_spans: dict[str, tracing.Span] = {}


@signals.worker_process_init.connect
def _start_pool_process(**_: Any) -> None:
    tracing.start()


@signals.worker_process_shutdown.connect
def _stop_pool_process(**_: Any) -> None:
    tracing.stop()


@signals.before_task_publish.connect
def _inject(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is not None:
        tracing.inject(headers)


def carry(run: Any) -> None:
    """Put the current span's context in a signature that is stored to be sent later."""
    if tracing.active():
        tracing.inject(run.options.setdefault("headers", {}))


def carrier(request: Any) -> dict[str, str]:
    """The trace context a task's message brought."""
    headers = getattr(request, "headers", None) or {}
    found = {key: headers.get(key, getattr(request, key, None)) for key in tracing.fields()}
    return {key: value for key, value in found.items() if isinstance(value, str)}


def task_attributes(task: Any, task_id: str, args: Any) -> dict[str, Any]:
    name = str(getattr(task, "name", "") or "")
    found = payload_ids(args)
    if name == "intent.analyze_batch":
        found.setdefault("batch_id", task_id)  # the batch takes its task's id
    attributes: dict[str, Any] = {
        "celery.task_id": task_id,
        "celery.task_name": name,
        "celery.retries": int(getattr(task.request, "retries", 0) or 0),
        **{tracing.IDENTITY[key]: value for key, value in found.items()},
    }
    if name.startswith("intent."):
        attributes["intent.step"] = name.removeprefix("intent.")
    return attributes


@signals.task_prerun.connect
def _open(task_id: str | None = None, task: Any = None, args: Any = None, **_: Any) -> None:
    if task_id is None or task is None or not tracing.start():
        return
    attributes = task_attributes(task, task_id, args)
    span = tracing.open_span(task.name, "consumer", carrier(task.request), attributes)
    if span is not None:
        _spans[task_id] = span


@signals.task_failure.connect
def _failed(task_id: str | None = None, exception: BaseException | None = None, **_: Any) -> None:
    span = _spans.get(task_id) if task_id is not None else None
    if span is not None and exception is not None:
        span.fail(exception)


@signals.task_postrun.connect
def _close(task_id: str | None = None, state: str | None = None, **_: Any) -> None:
    span = _spans.pop(task_id, None) if task_id is not None else None
    if span is not None:
        if state:
            span.set({"celery.state": state})
        span.close()
