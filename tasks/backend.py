"""The Redis result backend, storing every failure so any client can read its fields.

Celery stores a failure as ``{"exc_type", "exc_message", "exc_module"}`` and a client
rebuilds it as ``exc_type(*exc_message)``; one without this project's code gets a class
it never saw, with positional arguments only. Here a project error's ``exc_message`` is
its :class:`intent.models.ErrorInfo` (type, message, ``field``, ``service``, ``status``,
``retry_after``...), so such a client's exception carries them by name in ``args[0]``,
and the stored result has them as ``"error"`` for readers of the raw JSON. The error's
own arguments are kept as ``"exc_args"``: this backend rebuilds the typed error from them,
so this project's clients (and Flower) get ``ValidationError(field, ...)`` as before.
"""

from __future__ import annotations

from typing import Any

from celery.backends.redis import RedisBackend as CeleryRedisBackend
from celery.backends.redis import SentinelBackend as CelerySentinelBackend

from intent.errors import IntentError
from intent.logs import mask_secrets
from intent.models import ErrorInfo

# Modules errors were stored under before they joined the one tree (intent/errors.py).
MOVED_ERRORS = {"intent.patterns": "intent.errors"}


def error_object(exc: BaseException) -> dict[str, Any]:
    info = ErrorInfo.from_exception(exc).model_dump(exclude_none=True)
    info["message"] = mask_secrets(info["message"])
    return info


class ErrorObjects:
    """The failure's JSON error object, stored and read back (mixed into Celery's backends)."""

    def prepare_exception(self, exc: BaseException, serializer: Any = None) -> Any:
        prepared = super().prepare_exception(exc, serializer)  # type: ignore[misc]
        if not isinstance(prepared, dict):
            return prepared
        error = error_object(exc)
        prepared["error"] = error
        if isinstance(exc, IntentError):
            prepared["exc_args"] = prepared["exc_message"]
            prepared["exc_message"] = [error]
        return prepared

    def exception_to_python(self, exc: Any) -> Any:
        if isinstance(exc, dict) and "exc_args" in exc:
            exc = {**exc, "exc_message": exc["exc_args"]}
        if isinstance(exc, dict) and exc.get("exc_module") in MOVED_ERRORS:
            # Stored by a worker of an earlier release, within result_expires: the class
            # lives in the error tree now, under the same name.
            exc = {**exc, "exc_module": MOVED_ERRORS[exc["exc_module"]]}
        return super().exception_to_python(exc)  # type: ignore[misc]


class RedisBackend(ErrorObjects, CeleryRedisBackend):
    """Celery's Redis backend, failures with their error objects."""


class SentinelBackend(ErrorObjects, CelerySentinelBackend):
    """Celery's backend through Redis Sentinel (``sentinel://``), the same way."""
