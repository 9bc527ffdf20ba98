"""Structured logs: JSON lines (or text) carrying the running task's context, with every
credential in a URL masked before a line is written.

Tasks bind ``request_id``/``task_id`` with :func:`bind` (``tasks/signals.py`` does it
around each task); every line logged meanwhile in that thread carries them, including
the downstream requests made deep inside ``intent/``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import re
import sys
from collections.abc import Iterator, Mapping
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from intent.settings import Settings

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_context: ContextVar[Mapping[str, Any]] = ContextVar("intent_log_context", default=_EMPTY)

# The attributes every LogRecord has: anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}

# scheme://userinfo@ : the userinfo runs to the last "@" before the path, so a password
# holding a raw "@" (which URL parsers accept) is masked whole.
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)([^/\s?#]*)@")
# ?password=... &token=... ;api_key=... (redis-py and others take credentials as parameters)
_SECRET_PARAM = re.compile(
    r"(?i)([?&;][a-z0-9_.\-]*(?:pass|pwd|secret|token|key|auth|credential)[a-z0-9_.\-]*=)"
    r"([^&#;\s'\"]*)"
)
MASK = "***"


def _mask_userinfo(match: re.Match[str]) -> str:
    user, colon, _password = match.group(2).partition(":")
    # A lone userinfo may be a token (https://TOKEN@host): masked too.
    return f"{match.group(1)}{user}:{MASK}@" if colon else f"{match.group(1)}{MASK}@"


def mask_secrets(text: str) -> str:
    """``text`` with the password of every credentialed URL and every secret-looking query
    parameter replaced by ``***``."""
    if "://" in text:
        text = _URL_USERINFO.sub(_mask_userinfo, text)
    if "=" in text:
        text = _SECRET_PARAM.sub(rf"\1{MASK}", text)
    return text


def mask_url(url: str | None) -> str:
    """A URL fit to log or show: ``redis://user:***@host:6379/0``."""
    return "" if url is None else mask_secrets(url)


# -- context ----------------------------------------------------------------------------


def bind(**fields: Any) -> Token[Mapping[str, Any]]:
    """Add ``fields`` to every line this thread (or task) logs until :func:`unbind`."""
    merged = {**_context.get(), **{k: v for k, v in fields.items() if v is not None}}
    return _context.set(MappingProxyType(merged))


def unbind(token: Token[Mapping[str, Any]]) -> None:
    _context.reset(token)


@contextlib.contextmanager
def bound(**fields: Any) -> Iterator[None]:
    token = bind(**fields)
    try:
        yield
    finally:
        unbind(token)


def current_context() -> Mapping[str, Any]:
    return _context.get()


# -- formatting -------------------------------------------------------------------------


_PLAIN = frozenset({type(None), bool, int, float})


def _clean(value: Any) -> Any:
    """A JSON-ready, masked copy of an ``extra=`` value."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is str:
        return mask_secrets(value)
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return mask_secrets(str(value))
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean(v) for v in value]
    return mask_secrets(str(value))


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: value
        for key, value in record.__dict__.items()
        if key not in _RECORD_ATTRS and not key.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, process, pid, the bound
    context (request_id, task_id, ...), the record's ``extra=`` fields, and the exception."""

    def __init__(self, process_name: str | None = None):
        super().__init__()
        self.process_name = process_name

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": mask_secrets(record.getMessage()),
            "process": self.process_name or record.processName,
            "pid": record.process,
        }
        for key, value in {**_context.get(), **_extras(record)}.items():
            entry.setdefault(key, _clean(value))
        if record.exc_info:
            entry["exception"] = mask_secrets(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = mask_secrets(record.exc_text)
        if record.stack_info:
            entry["stack"] = mask_secrets(self.formatStack(record.stack_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger [process] message key=value ...``, masked like the JSON lines."""

    def __init__(self, process_name: str | None = None):
        super().__init__()
        self.process_name = process_name

    def format(self, record: logging.LogRecord) -> str:
        process = self.process_name or record.processName
        parts = [
            f"{self.formatTime(record)} {record.levelname:<7} {record.name} [{process}]",
            record.getMessage(),
        ]
        fields = {**_context.get(), **_extras(record)}
        parts.extend(f"{key}={_clean(value)}" for key, value in fields.items())
        text = " ".join(parts)
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        return mask_secrets(text)


def formatter(settings: Settings, process_name: str | None = None) -> logging.Formatter:
    """The formatter ``INTENT_LOG_FORMAT`` names."""
    if settings.log_format == "text":
        return TextFormatter(process_name)
    return JsonFormatter(process_name)


_installed: logging.Handler | None = None


def configure_logging(
    settings: Settings,
    process_name: str,
    *,
    logfile: str | None = None,
    level: int | str | None = None,
) -> logging.Handler:
    """Send every logger's lines through one handler (stderr, or ``logfile``) in the
    configured format, at ``level`` (default ``INTENT_LOG_LEVEL``). Replaces the root
    logger's handlers, so calling it again reconfigures rather than duplicates."""
    global _installed
    handler: logging.Handler
    if logfile:
        # Watched: a log rotated away is reopened, not written into after deletion.
        handler = logging.handlers.WatchedFileHandler(logfile, encoding="utf-8")
    else:
        # The process's real stderr, as Celery's own handler: not a stand-in someone swapped
        # into sys.stderr for a while (a test's capture, Celery's stdout redirection).
        handler = logging.StreamHandler(sys.__stderr__ or sys.stderr)
    handler.setFormatter(formatter(settings, process_name))
    root = logging.getLogger()
    for old in list(root.handlers):  # as Celery's worker_hijack_root_logger does
        root.removeHandler(old)
    if _installed is not None:
        _installed.close()
    _installed = handler
    root.addHandler(handler)
    root.setLevel(level if level is not None else settings.log_level)
    return handler
