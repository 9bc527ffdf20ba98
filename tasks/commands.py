"""``intent submit``: one analysis, its result printed as JSON, every failure as a JSON error."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from celery.exceptions import TimeoutError as CeleryTimeout

from intent.logs import configure_logging, mask_secrets
from intent.models import ErrorInfo
from intent.pipeline.steps import STEPS, run_local
from intent.runtime import get_runtime
from intent.settings import get_settings
from intent.validation import parse_request


def _print_error(error: dict[str, Any]) -> None:
    # One line, as the log lines beside it on stderr are (INTENT_LOG_FORMAT=json).
    print(json.dumps(error), file=sys.stderr)


def step_ids(request_id: str) -> list[tuple[str, str]]:
    """Each step's task id: ``{request_id}.{step}``, the last one the request_id itself."""
    names = [name for name, _ in STEPS]
    return [(name, f"{request_id}.{name}") for name in names[:-1]] + [(names[-1], request_id)]


def waiting_for(request_id: str) -> dict[str, Any]:
    """What an analysis that has not finished waits for: a parked step (and why, until
    when), or no worker answering at all."""
    rt = get_runtime()
    for step, task_id in step_ids(request_id):
        try:
            parked = rt.waiting.find(task_id)
        except Exception as exc:  # a timeout report never fails on its own
            return {"unknown": mask_secrets(f"{type(exc).__name__}: {exc}")}
        if parked is not None:
            return {
                "step": step,
                "until": parked.due,
                "in_seconds": round(max(0.0, parked.due - time.time()), 1),
                "reason": parked.reason,
            }
    from tasks.health import ping_workers

    if not list(ping_workers(1.0)):
        return {
            "step": None,
            "reason": (
                f"no worker answered a ping: is `intent worker` running, consuming queue "
                f"{get_settings().queue!r} of the same INTENT_BROKER_URL?"
            ),
        }
    return {"step": None, "reason": "queued or running on a worker"}


def submit_one(request: dict[str, Any], timeout: float, local: bool) -> int:
    configure_logging(get_settings(), "submit", level="WARNING")
    parsed = None
    try:
        parsed = parse_request(request, get_settings())
        if local:
            result = run_local(get_runtime(), parsed)
        else:
            from tasks.submit import submit

            analysis = submit(parsed)
            try:
                result = analysis.get(timeout=timeout)
            finally:
                # Unsubscribe now, not at interpreter exit (where Celery's cleanup of a
                # pending result prints a traceback after the answer).
                analysis.result.backend.remove_pending_result(analysis.result)
    except CeleryTimeout:
        assert parsed is not None
        _print_error(
            {
                "error": "Timeout",
                "message": f"no result within {timeout:g} s",
                "request_id": parsed.request_id,
                "waiting": waiting_for(parsed.request_id),
            }
        )
        return 3
    except Exception as exc:  # every outcome is a JSON error, never a traceback
        error = ErrorInfo.from_exception(exc).model_dump(exclude_none=True)
        error["message"] = mask_secrets(error["message"])
        _print_error(error)
        return 1
    print(result.model_dump_json(indent=2))
    return 0
