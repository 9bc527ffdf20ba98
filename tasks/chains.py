"""The chains an analysis and a batch run as, built from task names: a producer needs the
app, not the worker's task modules (``tasks.pipeline``, ``tasks.batch``)."""

from __future__ import annotations

import time
from typing import Any

from celery import chain

from intent.models import STEP_NAMES, BatchResult, IntentRequest, IntentResult
from intent.pipeline.steps import step_task_ids
from tasks.app import app

ANALYSIS_STEP_TASKS = tuple(f"intent.{name}" for name in STEP_NAMES)
BATCH_STEP_TASKS = tuple(f"intent.batch_{name}" for name in STEP_NAMES)


def shown(request_id: str) -> dict[str, str]:
    """A short argsrepr for logs, events and Flower: Celery would otherwise saferepr the
    whole analysis (context, predictions) at every hop, a measurable cost per task."""
    return {"argsrepr": f"(<analysis {request_id}>,)", "kwargsrepr": "{}"}


def forget_analysis(request_id: str, analysis_id: str) -> None:
    """Delete what an analysis stored: its result and its steps' failures."""
    for task_id in step_task_ids(request_id, analysis_id):
        app.AsyncResult(task_id).forget()


def chain_step_options(last: bool) -> dict[str, Any]:
    """Celery options of one step of a chain: only the last step stores its result.

    Each step's output travels to the next in its message, so a stored copy would be
    read by nobody, and would cost two Redis round trips per step (Celery's check that the
    task has not already succeeded, then SET + PUBLISH) plus a copy kept for
    ``result_expires``. Retries and failures are still stored, and a failure is
    propagated to the last step's id, which callers wait on.
    """
    return {"ignore_result": not last, "store_errors_even_if_ignored": True}


def _chain(names: tuple[str, ...], ids: list[str], payload: Any, **options: Any) -> Any:
    """The steps by name, each link sent with its own ``ignore_result``: a producer that
    has not loaded the task modules must not fall back to Celery's default, which stores
    (and subscribes to) the first step's result."""
    last = len(names) - 1
    links = []
    for index, (name, task_id) in enumerate(zip(names, ids, strict=True)):
        args = (payload,) if index == 0 else ()
        ignore = chain_step_options(index == last)["ignore_result"]
        links.append(app.signature(name, args, task_id=task_id, ignore_result=ignore, **options))
    return chain(*links)


def analysis_chain(request: IntentRequest, analysis_id: str) -> Any:
    """The four steps with stable ids: the last one's is ``analysis_id`` (the analysis
    result), the others are ``{request_id}.{step}``."""
    payload = IntentResult(request=request, submitted_at=time.time()).model_dump(mode="json")
    rid = request.request_id
    return _chain(ANALYSIS_STEP_TASKS, step_task_ids(rid, analysis_id), payload, **shown(rid))


def batch_chain(batch: BatchResult) -> Any:
    """The four batch steps with stable ids: the last one's is the batch_id (the batch
    result), the others are ``{batch_id}.batch_{step}``."""
    bid = batch.batch_id
    ids = step_task_ids(bid, bid, prefix="batch_")
    return _chain(BATCH_STEP_TASKS, ids, batch.model_dump(mode="json"))
