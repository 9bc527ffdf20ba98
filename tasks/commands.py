"""``intent submit``: one analysis, its result printed as JSON."""

from __future__ import annotations

import json
import sys
from typing import Any

from celery.exceptions import TimeoutError as CeleryTimeout

from intent.errors import IntentError
from intent.pipeline.steps import run_local
from intent.runtime import get_runtime
from intent.settings import get_settings
from intent.validation import parse_request


def _print_error(exc: BaseException) -> None:
    error = {"error": type(exc).__name__, "message": str(exc)}
    print(json.dumps(error, indent=2), file=sys.stderr)


def submit_one(request: dict[str, Any], timeout: float, local: bool) -> int:
    try:
        parsed = parse_request(request, get_settings().max_payload_bytes)
        if local:
            result = run_local(get_runtime(), parsed)
        else:
            from tasks.submit import submit

            analysis = submit(parsed)
            result = analysis.get(timeout=timeout)
    except CeleryTimeout:
        print(
            f"intent submit: no result within {timeout:.0f} s; is a worker running "
            "(`intent worker`) against the same INTENT_BROKER_URL?",
            file=sys.stderr,
        )
        return 3
    except IntentError as exc:
        _print_error(exc)
        return 1
    print(result.model_dump_json(indent=2))
    return 0
