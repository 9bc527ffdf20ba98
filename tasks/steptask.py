"""How a step task carries out the recovery decision (``intent.pipeline.recovery``).

- continue: the step's fallback answered (a degraded result goes on down the chain);
- retry or defer: the step's next run is parked in Redis (``intent.waiting``) until it is
  due, and Celery records the run as RETRY (a deferral's stored error is ``Deferred``, so
  Flower tells the two apart); the message is acked. Celery's own retry counter and its
  countdown messages are not used: nothing waits in a worker or in the broker;
- expire: the analysis goes on as ``expired`` (later steps pass it on);
- fail: the error is raised, and Celery fails the rest of the chain with it.

A Redis restart never fails a step on its own: parking and publishing the next step retry
for ``INTENT_REDIS_OUTAGE_TOLERANCE`` seconds, then the message is rejected with requeue,
that is left for redelivery (with Redis still away it stays unacked, and the broker's
visibility timeout brings it back).
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any, NoReturn

from celery import Task, signature
from celery.exceptions import Ignore, Reject, Retry, SoftTimeLimitExceeded

from intent import metrics, tracing
from intent.errors import (
    BulkheadFullError,
    CircuitOpenError,
    Deferred,
    RateLimitExceeded,
    RetryBudgetExceeded,
    ServiceUnavailableError,
    TimeLimitReached,
    ValidationError,
)
from intent.models import IntentResult
from intent.pipeline import recovery, steps
from intent.pipeline.intake import give_back
from intent.runtime import get_runtime
from intent.settings import get_settings
from tasks.chains import ANALYSIS_STEP_TASKS, shown
from tasks.tracing import carry

log = logging.getLogger("intent.tasks")


def step_error(step: str, exc: Exception) -> Exception:
    """A task's error as the recovery decision sees it. A step that reached its soft time
    limit meets one error whatever the pool: prefork's signal (SoftTimeLimitExceeded, also
    what gevent's timeout raises here) and a call cut to the step's time left on threads
    (TimeLimitReached) are both retried as that step being unavailable."""
    if isinstance(exc, SoftTimeLimitExceeded | TimeLimitReached):
        return ServiceUnavailableError(step, "soft time limit exceeded")
    return recovery.as_domain_error(exc)


def deferral_cause(error: Exception) -> str:
    """What a deferred step waits for, as metrics and traces name it."""
    if isinstance(error, CircuitOpenError):
        return "circuit_open"
    if isinstance(error, BulkheadFullError):
        return "bulkhead"
    if isinstance(error, RetryBudgetExceeded):
        return "retry_budget"
    return "rate_limit"


def log_fields(step: str, exc: Exception, task_id: str | None, **more: Any) -> dict[str, Any]:
    """The structured fields of a retry or deferral line."""
    fields: dict[str, Any] = {"step": step, "task_id": task_id, "error": type(exc).__name__}
    service = getattr(exc, "service", None)
    if isinstance(service, str):
        fields["service"] = service
    if isinstance(exc, RateLimitExceeded):
        fields["limit"] = exc.limit
    return {**fields, **more}


def refused_analysis(task_id: str, chain: Any, args: Any) -> tuple[str, str] | None:
    """The (request_id, analysis id) a refused message belongs to, when it can be told:
    a step's id is ``{request_id}.{step}`` (or the analysis id, for the last step), and the
    analysis id is the chain's last task id; else a request in its first argument."""
    analysis_id = task_id
    if isinstance(chain, list) and chain and isinstance(chain[0], dict):
        last = (chain[0].get("options") or {}).get("task_id")
        analysis_id = last if isinstance(last, str) else task_id
    for name, _ in steps.STEPS:
        if task_id.endswith(f".{name}"):
            return task_id[: -len(name) - 1], analysis_id
    payload = args[0] if isinstance(args, list | tuple) and args else None
    if isinstance(payload, dict):
        inner = payload.get("request")
        request_id = (inner if isinstance(inner, dict) else payload).get("request_id")
        if isinstance(request_id, str):
            return request_id, analysis_id
    return None


def release_refused(task_id: str, chain: Any, args: Any) -> None:
    """A request refused after its request_id was claimed gives the claim back, so a
    corrected resubmission runs instead of answering ``duplicate``."""
    found = refused_analysis(task_id, chain, args)
    if found is None:
        return
    request_id, analysis_id = found
    try:
        give_back(get_runtime(), request_id, analysis_id)
    except Exception as exc:  # the refusal stands; the claim lapses with result_expires
        log.warning("could not give back the claim of %s: %s", request_id, exc)


def budgets() -> recovery.Budgets:
    return recovery.Budgets.from_settings(get_settings())


class PipelineTask(Task):
    """Base of the pipeline's tasks: carries out the recovery decision for a failed step,
    parks waiting runs, and publishes the chain's next step itself."""

    abstract = True
    typing = True
    # Never Celery's: retries and deferrals have budgets of their own (recovery.py).
    max_retries = None
    # How much of a result Celery puts in its "succeeded" log line and event (Flower): an
    # analysis is kilobytes, and Celery builds this repr for every task it runs; the whole
    # result stays in the result backend.
    resultrepr_maxsize = 256

    def recover(self, step: str, exc: Exception, current: IntentResult) -> IntentResult:
        """Answer a failed step: a fallback's (or an expired) result to go on with, or park
        the step's next run (raising Celery's Retry), or raise the failure."""
        outcome = steps.recover(get_runtime(), step, step_error(step, exc), current)
        if isinstance(outcome, IntentResult):
            return outcome
        self.carry_out(outcome, shown=shown(current.request.request_id))

    def carry_out(
        self,
        wait: recovery.Wait[Any],
        *,
        shown: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> NoReturn:
        """Log and count a retry or a deferral, then park the step's next run."""
        then, step = wait.then, wait.step
        fields = log_fields(step, then.error, self.request.id, countdown=round(wait.delay, 3))
        fields.update(extra or {})
        if isinstance(then, recovery.Retry):
            retry_max = budgets().retry_max
            log.warning(
                "retrying %s in %.2f s (retry %d of %d): %s",
                step,
                wait.delay,
                then.retry,
                retry_max,
                then.error,
                extra={**fields, "retry": then.retry, "max_retries": retry_max},
            )
            metrics.record_retry(step)
            tracing.event("retry", retry=then.retry, max_retries=retry_max, **fields)
        else:
            log.info("deferring %s by %.2f s: %s", step, wait.delay, then.error, extra=fields)
            cause = deferral_cause(then.error)
            metrics.record_deferral(step, cause)
            tracing.event("deferral", reason=cause, delay=round(wait.delay, 3), **fields)
        kind = "deferral" if wait.deferred else "retry"
        tracing.annotate(**{"intent.wait": kind, "intent.wait.delay": round(wait.delay, 3)})
        self.park(wait, wait.result.model_dump(mode="json"), shown)

    def park(
        self, wait: recovery.Wait[Any], payload: Any, argsrepr: dict[str, str] | None
    ) -> NoReturn:
        """Park this step's next run (with ``payload``) for the wait's delay, then raise
        Celery's Retry so the run is recorded as one and its message acked."""
        request = self.request
        now = time.time()
        reason = wait.reason(budgets())
        run = self.signature_from_request(
            request, (payload,), {}, retries=(request.retries or 0) + 1, **(argsrepr or {})
        )
        carry(run)  # the next run continues this run's trace
        try:
            get_runtime().waiting.park(
                wait.lane,
                str(request.id),
                json.dumps(dict(run)),
                due=now + wait.delay,
                reason=reason,
                release_by=wait.release_by,
                now=now,
                patience=get_settings().redis_outage_tolerance,
                for_breaker=wait.deferred and isinstance(wait.then.error, CircuitOpenError),
            )
        except Exception as exc:  # Redis stayed away: this message runs again later
            self.leave_for_redelivery(f"could not park {self.name}", exc)
        if wait.deferred:
            # Not a failure: Flower shows the RETRY state with Deferred(...) and a traceback
            # of this wait alone, not of the refusal that led to it.
            raise Retry(
                exc=Deferred(wait.step, reason, now + wait.delay), when=wait.delay
            ) from None
        raise Retry(exc=wait.then.error, when=wait.delay)

    def continue_chain(self, retval: Any) -> None:
        """Publish the chain's next step with ``retval`` (Celery would do it after the task,
        where a broker that is away fails the analysis); one that cannot be published
        leaves this step's message for redelivery, the step being safe to run again."""
        request = self.request
        chain = request.chain
        if not chain:
            return
        request.chain = None  # published here, not again by Celery's tracer
        following = signature(chain[-1], app=self.app)
        priority = (request.delivery_info or {}).get("priority")
        try:
            following.apply_async(
                (retval,),
                chain=chain[:-1],
                parent_id=request.id,
                root_id=request.root_id or request.id,
                priority=priority,
                retry=True,
                retry_policy=get_settings().publish_retry_policy,
            )
        except Exception as exc:
            request.chain = chain  # the step runs again with the rest of its chain
            self.leave_for_redelivery(f"could not publish the step after {self.name}", exc)

    def leave_for_redelivery(self, what: str, exc: Exception) -> NoReturn:
        """Reject this message with requeue: the step runs again (it is safe to), nothing is
        acked away while Redis or the broker is out of reach.

        On a quorum queue every return counts toward its delivery limit (celeryqueues.py),
        so a Redis outage of some twenty tolerances would end in the gate's last-delivery
        refusal: there the step is published again as a fresh message (the same task id,
        arguments, chain and retries: the broker is up) and this one acked, so only a run
        that dies counts. Should the broker refuse the copy, the message is rejected."""
        log.error(
            "%s (%s); leaving it for redelivery",
            what,
            exc,
            extra={"task_id": self.request.id, "error": type(exc).__name__},
        )
        if get_settings().queue_type == "quorum" and not self.request.is_eager:
            try:
                self.signature_from_request(self.request).apply_async()
            except Exception as error:
                log.error("could not publish it again (%s): rejected", error)
            else:
                raise Ignore() from exc  # acked: its copy is on the queue
        raise Reject(exc, requeue=True) from exc

    def keep_under_request_id(self, request_id: str, answer: Any) -> None:
        """An analysis sent by name runs under the sender's task id; its result is kept
        under its request_id too, so it is found that way however it was submitted."""
        if request_id == self.request.id:
            return
        try:
            self.backend.store_result(request_id, answer, "SUCCESS")
        except Exception as exc:  # the caller's own id has the result: log, do not fail
            log.warning("could not keep the result of %s under its request_id: %s", request_id, exc)

    def keep_failure_under_request_id(self, exc: Exception, args: Any) -> None:
        """The failure of a by-name analysis is stored under its request_id too, before
        Celery marks the caller's id: whoever sees one finds the other."""
        found = refused_analysis(str(self.request.id), self.request.chain, args)
        if found is None or found[0] == found[1]:
            return
        try:
            self.backend.mark_as_failure(found[0], exc, call_errbacks=False)
        except Exception as error:  # the caller's own id has the failure: log, do not fail
            log.warning(
                "could not keep the failure of %s under its request_id: %s", found[0], error
            )

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        log.error(
            "task %s[%s] failed: %s",
            self.name,
            task_id,
            exc,
            extra={"task_id": task_id, "error": type(exc).__name__},
        )
        if isinstance(exc, ValidationError):
            release_refused(task_id, self.request.chain, args)
        # The chain stops at a failed step: the analysis ends here.
        if self.name == "intent.analyze":
            metrics.record_failed("rejected")
        elif self.name in ANALYSIS_STEP_TASKS:
            metrics.record_failed("failed", submitted_at(args))


_SUBMITTED_AT = re.compile(r'"submitted_at":\s*([0-9.eE+-]+)')


def submitted_at(args: Any) -> float | None:
    """When a failed step's analysis was submitted (for its duration), read off its
    payload without validating it again: a dict, or the JSON text steps pass on."""
    payload = args[0] if isinstance(args, list | tuple) and args else None
    value: Any = None
    if isinstance(payload, dict):
        value = payload.get("submitted_at")
    elif isinstance(payload, str):
        match = _SUBMITTED_AT.search(payload)
        value = match.group(1) if match else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
