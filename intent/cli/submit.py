"""``intent submit``: one analysis, its result printed as JSON, every failure as a JSON error."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from intent.logs import configure_logging, mask_secrets
from intent.models import STEP_NAMES, ErrorInfo
from intent.pipeline.steps import run_local, step_task_ids
from intent.runtime import get_runtime
from intent.settings import get_settings
from intent.validation import parse_request


def _print_error(error: dict[str, Any]) -> None:
    # One line, as the log lines beside it on stderr are (INTENT_LOG_FORMAT=json).
    print(json.dumps(error), file=sys.stderr)


def step_ids(request_id: str) -> list[tuple[str, str]]:
    """Each step and its task id (the last one's is the request_id itself)."""
    return list(zip(STEP_NAMES, step_task_ids(request_id, request_id), strict=True))


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
    try:
        parsed = parse_request(request, get_settings())
        if local:
            result = run_local(get_runtime(), parsed)
        else:
            from tasks.submit import AnalysisTimeout, submit

            analysis = submit(parsed)
            try:
                result = analysis.get(timeout=timeout)
            except AnalysisTimeout:
                return _timed_out(parsed.request_id, timeout)
            finally:
                analysis.forget_subscription()
    except Exception as exc:  # every outcome is a JSON error, never a traceback
        error = ErrorInfo.from_exception(exc).model_dump(exclude_none=True)
        error["message"] = mask_secrets(error["message"])
        _print_error(error)
        return 1
    print(result.model_dump_json(indent=2))
    return 0


def _timed_out(request_id: str, timeout: float) -> int:
    _print_error(
        {
            "error": "Timeout",
            "message": f"no result within {timeout:g} s",
            "request_id": request_id,
            "waiting": waiting_for(request_id),
        }
    )
    return 3


def request_from_args(args: argparse.Namespace) -> dict[str, Any]:
    request: dict[str, Any] = {"client_id": args.client_id, "pattern_id": args.pattern_id}
    if args.request_id:
        request["request_id"] = args.request_id
    if args.context_id:
        request["context_id"] = args.context_id
    if args.data:
        try:
            request["data"] = json.loads(args.data)
        except ValueError as exc:
            raise SystemExit(f"intent submit: --data is not valid JSON: {exc}") from None
    return request


def _cmd_submit(args: argparse.Namespace) -> int:
    return submit_one(request_from_args(args), args.timeout, args.local)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    submit = sub.add_parser("submit", help="run one analysis and print its result as JSON")
    submit.add_argument("--client-id", required=True)
    submit.add_argument("--pattern-id", required=True)
    source = submit.add_mutually_exclusive_group(required=True)
    source.add_argument("--context-id")
    source.add_argument("--data", help="inline context data, a JSON object")
    submit.add_argument("--request-id")
    submit.add_argument("--timeout", type=float, default=60.0, help="seconds to wait")
    submit.add_argument(
        "--local",
        action="store_true",
        help="run the steps in this process instead of on a worker (needs Redis and services)",
    )
    submit.set_defaults(func=_cmd_submit)
