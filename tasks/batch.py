"""The batch's Celery tasks: ``intent.analyze_batch`` validates a list of requests and
becomes a chain of four batch steps, each a thin wrapper around one step in ``intent.batch``."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Task

from intent import metrics
from intent.models import STEP_NAMES, BatchResult
from intent.pipeline import batch as batch_steps
from intent.runtime import get_runtime
from intent.settings import get_settings
from intent.validation import parse_model, request_limits
from tasks.app import app
from tasks.chains import batch_chain, chain_step_options
from tasks.pools import time_limited
from tasks.steptask import PipelineTask, step_error

log = logging.getLogger("intent.tasks")


def parse_batch(payload: Any) -> BatchResult:
    # A step's input carries up to a batch of analyses, contexts and predictions included.
    limits = request_limits(get_settings()).nested(8, 8 * get_settings().batch_max_size)
    return parse_model(BatchResult, payload, what="batch", limits=limits)


class BatchTask(PipelineTask):
    """Base of the batch steps: a failure of a step's bulk call gets the single pipeline's
    decision (intent.pipeline.recovery), applied to the items it concerns; what cannot be
    recovered fails those items, not the batch."""

    abstract = True

    def recover_batch(self, step: str, exc: Exception, current: BatchResult) -> BatchResult:
        """Answer a failed step: the batch to continue with, or park its next run."""
        outcome = batch_steps.recover_batch(get_runtime(), step, step_error(step, exc), current)
        if isinstance(outcome, BatchResult):
            return outcome
        self.carry_out(outcome, extra={"batch_id": current.batch_id})


def _batch_step_task(name: str) -> Task:
    last = name == STEP_NAMES[-1]  # the batch ends with this step

    @app.task(bind=True, base=BatchTask, name=f"intent.batch_{name}", **chain_step_options(last))
    def run(self: BatchTask, payload: Any) -> dict[str, Any]:
        batch = parse_batch(payload).resumed(time.time())
        # The soft time limit where the pool does not enforce it (tasks/pools.py), around
        # the step's work alone: its recovery (a park, a publish) is never cut halfway.
        try:
            with time_limited(self):
                out = batch_steps.run_batch_step(get_runtime(), name, batch)
        except Exception as exc:
            out = self.recover_batch(name, exc, batch)
        if last:
            metrics.record_batch_finished(out)  # each item, as a single analysis counts
        else:
            self.continue_chain(out.model_dump(mode="json"))
        return out.model_dump(mode="json")

    return run


BATCH_STEP_TASKS = tuple(_batch_step_task(name) for name in STEP_NAMES)


@app.task(bind=True, base=BatchTask, name="intent.analyze_batch")
def analyze_batch(self: BatchTask, requests: Any) -> dict[str, Any]:
    """Entry point by name: a list of request dicts (or a JSON text of one). A batch that
    is not a list, is empty or is larger than INTENT_BATCH_MAX_SIZE fails with
    ``ValidationError("requests", ...)``; a bad request fails alone in the batch result."""
    batch = batch_steps.start_batch(
        get_runtime(), requests, self.request.id, get_settings().batch_max_size
    )
    if batch.status == "completed":  # every request was refused: nothing to run
        metrics.record_batch_finished(batch)
        return batch.model_dump(mode="json")
    # The chain's last step takes this task's id, so the caller's AsyncResult resolves to
    # the batch result.
    raise self.replace(batch_chain(batch))
