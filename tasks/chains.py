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


def _chain(names: tuple[str, ...], ids: list[str], payload: Any, **options: Any) -> Any:
    first = app.signature(names[0], (payload,), task_id=ids[0], **options)
    rest = (
        app.signature(name, task_id=id_, **options)
        for name, id_ in zip(names[1:], ids[1:], strict=True)
    )
    return chain(first, *rest)


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
