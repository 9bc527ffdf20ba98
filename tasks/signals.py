"""Celery signal hooks for observability: the service's log format for every Celery
program (worker, beat), and each task's request_id/task_id bound to its log lines.

Imported by ``tasks.app``, so the hooks are connected before Celery sets up logging.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Mapping
from contextvars import Token
from typing import Any

from celery import current_app, signals

from intent.logs import bind, configure_logging, mask_url, unbind
from intent.settings import get_settings
from tasks.transport import put_back_at_shutdown

log = logging.getLogger("intent.worker")

_PROGRAMS = ("worker", "beat", "flower", "events", "inspect", "shell")
# Celery's loggers of a line per task received and per task ended.
PER_TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace")
_tokens: dict[str, Token[Mapping[str, Any]]] = {}
# IntentResult.model_dump_json() starts {"status":..,"duplicate_of":..,"request":{"request_id":
# "..." (field order; tests/unit/test_logs.py holds it); identifiers are of a safe alphabet,
# so this reads the id exactly.
_RESULT_TEXT_HEAD = re.compile(
    r'\{"status":"[a-z]+","duplicate_of":(?:null|"[^"]*"),'
    r'"request":\{"request_id":"([A-Za-z0-9][A-Za-z0-9._-]{0,127})"'
)


def _program() -> str:
    """Which Celery program this process is (``celery -A tasks.app worker`` -> worker)."""
    return next((arg for arg in sys.argv[1:] if arg in _PROGRAMS), "celery")


@signals.setup_logging.connect
def _setup_logging(loglevel: Any = None, logfile: Any = None, **_: Any) -> None:
    # Connected, this replaces Celery's own set-up (handlers, stdout redirection): its own
    # lines go through the same formatter. An explicit INTENT_LOG_LEVEL outranks the
    # command line's --loglevel.
    settings = get_settings()
    explicit = "log_level" in settings.model_fields_set
    configure_logging(
        settings,
        _program(),
        logfile=logfile if isinstance(logfile, str) and logfile else None,
        level=settings.log_level if explicit or not loglevel else loglevel,
    )
    # Celery's "received" and "succeeded" lines, two per task, were three quarters of an
    # analysis's INFO output: shown at DEBUG only. Failures (ERROR) still show; retries and
    # deferrals have the project's own lines, and each analysis ends with one line.
    verbose = logging.getLogger().getEffectiveLevel() <= logging.DEBUG
    for name in PER_TASK_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)


@signals.worker_ready.connect
def _log_configuration(**_: Any) -> None:
    """What this worker talks to, for operators: every URL with its password masked."""
    settings = get_settings()
    urls: dict[str, str | None] = {
        "broker": settings.effective_broker_url,
        "result_backend": settings.effective_result_backend,
        "redis": settings.redis_url,
        "state_redis": settings.effective_state_redis_url,
        "context_service": settings.context_service_url,
        "prediction_service": settings.prediction_service_url,
    }
    shown = {name: mask_url(url) for name, url in urls.items()}
    log.info(
        "worker ready: queue %s, broker %s, redis %s, state %s",
        settings.queue,
        shown["broker"],
        shown["redis"],
        shown["state_redis"],
        extra={**shown, "queue": settings.queue, "metrics_dir": settings.metrics_dir},
    )


def payload_ids(args: Any) -> dict[str, str]:
    """The request_id (or batch_id) a task's payload names, without parsing it: steps pass
    the analysis on as JSON text, which opens with its request's id."""
    payload = args[0] if isinstance(args, list | tuple) and args else None
    if isinstance(payload, str):
        match = _RESULT_TEXT_HEAD.match(payload)
        return {"request_id": match.group(1)} if match else {}
    if not isinstance(payload, dict):
        return {}
    request = payload.get("request")
    source = request if isinstance(request, dict) else payload
    found = {key: source.get(key) or payload.get(key) for key in ("request_id", "batch_id")}
    return {key: value for key, value in found.items() if isinstance(value, str)}


@signals.task_prerun.connect
def _bind_task(task_id: str | None = None, task: Any = None, args: Any = None, **_: Any) -> None:
    if task_id is None:
        return
    name = getattr(task, "name", None)
    _tokens[task_id] = bind(task_id=task_id, task=name, **payload_ids(args))


@signals.task_postrun.connect
def _unbind_task(task_id: str | None = None, **_: Any) -> None:
    token = _tokens.pop(task_id, None) if task_id is not None else None
    if token is not None:
        # ValueError: bound in another thread (the same id run twice at once).
        with contextlib.suppress(ValueError):
            unbind(token)


@signals.worker_shutdown.connect
def _put_back_rescued(sender: Any = None, **_: Any) -> None:
    """Messages taken as the broker went away and not yet put back (tasks/transport.py)."""
    put_back_at_shutdown(sender.app if sender is not None else current_app)
