"""The pipeline's Celery tasks: each a thin wrapper around one step in ``intent.pipeline``."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Task
from celery.exceptions import Ignore, Reject, Retry

from intent import metrics
from intent.models import STEP_NAMES, IntentResult
from intent.pipeline import steps
from intent.pipeline.intake import admit, claim_request, give_back
from intent.runtime import get_runtime
from intent.settings import get_settings
from intent.validation import parse_request, parse_result
from tasks.app import app
from tasks.chains import analysis_chain, chain_step_options, forget_analysis
from tasks.pools import time_limited
from tasks.steptask import PipelineTask

log = logging.getLogger("intent.tasks")


def log_finished(result: IntentResult, now: float | None = None) -> None:
    """The one INFO line of an analysis: how it ended, how long it took, what it spent."""
    took = None if result.submitted_at is None else (now or time.time()) - result.submitted_at
    log.info(
        "analysis %s %s%s",
        result.request.request_id,
        "degraded" if result.degraded else result.status,
        "" if took is None else f" in {took * 1000:.0f} ms",
        extra={
            "status": result.status,
            "degraded": result.degraded,
            "fallbacks": result.fallbacks,
            "retries": sum(result.retries.values()),
            "deferrals": sum(result.deferrals.values()),
            "duration": None if took is None else round(took, 6),
            "events": len(result.events),
        },
    )


def _step_task(name: str) -> Task:
    last = name == STEP_NAMES[-1]  # the analysis ends with this step

    def step(self: PipelineTask, payload: Any) -> dict[str, Any] | str:
        result = parse_result(payload, get_settings()).resumed(time.time())
        try:
            out = steps.run_step(get_runtime(), name, result)
        except Exception as exc:
            out = self.recover(name, exc, result)
        if last:
            metrics.record_finished(out)
            log_finished(out)
            answer = out.model_dump(mode="json")  # the analysis result, as callers read it
            self.keep_under_request_id(out.request.request_id, answer)
            return answer
        # Between steps the analysis travels as JSON text: Celery takes a saferepr of every
        # return value, which walks a whole dict (a quarter of a pool process's CPU under
        # a profile) but only cuts a string short.
        text = out.model_dump_json()
        self.continue_chain(text)
        return text

    @app.task(bind=True, base=PipelineTask, name=f"intent.{name}", **chain_step_options(last))
    def run(self: PipelineTask, payload: Any) -> dict[str, Any] | str:
        try:
            # The soft time limit where the pool does not enforce it (tasks/pools.py).
            with time_limited(self):
                return step(self, payload)
        except (Retry, Reject, Ignore):
            raise  # parked, or left for redelivery: the analysis goes on
        except Exception as exc:
            self.keep_failure_under_request_id(exc, (payload,))
            raise

    return run


STEP_TASKS = tuple(_step_task(name) for name in STEP_NAMES)


@app.task(bind=True, base=PipelineTask, name="intent.analyze")
def analyze(self: PipelineTask, request: Any) -> dict[str, Any]:
    """Entry point by name: validate a plain-dict request, then become the chain."""
    rt = get_runtime()
    # Over the client's intake limit: fails with RateLimitExceeded(retry_after), no retry.
    parsed = admit(rt, parse_request(request, get_settings()))
    claim = claim_request(rt, parsed.request_id, self.request.id)
    owner = claim.owner
    if owner is not None and owner != self.request.id:
        # The shape of every answer: an analysis result, here one that ran nothing.
        duplicate = IntentResult(request=parsed, status="duplicate", duplicate_of=owner)
        return duplicate.model_dump(mode="json")
    if claim.replaces is not None:
        forget_analysis(parsed.request_id, claim.replaces)
    # The chain's last step takes this task's id, so the caller's AsyncResult resolves to
    # the analysis result.
    try:
        chain_ = analysis_chain(parsed, self.request.id)
    except Exception:
        give_back(rt, parsed.request_id, self.request.id)  # refused after the claim
        raise
    try:
        raise self.replace(chain_)
    except Ignore:
        raise  # replaced: the chain is on its way
    except Exception as exc:  # the broker is away: this message runs again, claim kept
        raise Reject(exc, requeue=True) from exc
