"""Celery task messages (protocol 2) as untrusted input: what a worker checks before it
hands a message to Celery, so that no message shape can crash, wedge or loop it.

A message is headers (a JSON object), a content type, and a body ``[args, kwargs, embed]``
of JSON text. :func:`inspect` returns the decoded body, or the :class:`Refusal` naming what
is wrong; the Celery layer answers a refusal (a stored failure under the task id, when the
message has a usable one) and dead-letters the message (:mod:`intent.poison`).
"""

from __future__ import annotations

import inspect as pyinspect
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from intent import codec
from intent.errors import ValidationError
from intent.settings import get_settings

JSON_TYPES = frozenset({"application/json"})
ENCODINGS = frozenset({"utf-8", "utf8"})
# A task id ends up in Redis keys, result keys and logs (fullmatch: "$" would let "x\n" in).
TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,254}")
HEADER_LIMITS = codec.Limits(max_bytes=65536, max_depth=8, max_string=8192)

# Headers RabbitMQ adds to a message (dead-lettering, quorum queues' delivery counts).
BROKER_HEADERS = (
    "x-death",
    "x-first-death-",
    "x-last-death-",
    "x-delivery-count",
    "x-acquired-count",
)

_OPTIONAL_STR = (str, type(None))
_OPTIONAL_INT = (int, type(None))
# The headers Celery reads in the worker's main process, and the types it assumes.
_HEADER_TYPES: dict[str, tuple[type, ...]] = {
    "lang": _OPTIONAL_STR,
    "root_id": _OPTIONAL_STR,
    "parent_id": _OPTIONAL_STR,
    "group": _OPTIONAL_STR,
    "group_index": _OPTIONAL_INT,
    "meth": _OPTIONAL_STR,
    "shadow": _OPTIONAL_STR,
    "eta": _OPTIONAL_STR,
    "expires": _OPTIONAL_STR,
    "retries": _OPTIONAL_INT,
    "timelimit": (list, tuple, type(None)),
    "argsrepr": _OPTIONAL_STR,
    "kwargsrepr": _OPTIONAL_STR,
    "origin": _OPTIONAL_STR,
    "ignore_result": (bool, type(None)),
    "replaced_task_nesting": _OPTIONAL_INT,
    "stamped_headers": (list, type(None)),
    "stamps": (dict, type(None)),
}
_EMBED_LISTS = ("callbacks", "errbacks", "chain")


@dataclass(frozen=True)
class Refusal:
    """Why a message is refused: ``field`` and ``reason``, and what of it can be used to
    answer its sender (its task id, the chain whose last task the sender waits on)."""

    field: str
    reason: str
    task_id: str | None = None
    task: str | None = None
    chain: tuple[dict[str, Any], ...] = ()
    args: Any = None  # what of the arguments could be decoded (to find the request)

    def error(self) -> ValidationError:
        return ValidationError(self.field, self.reason)


@dataclass(frozen=True)
class Checked:
    """A message fit for Celery: its decoded body."""

    args: list[Any]
    kwargs: dict[str, Any]
    embed: dict[str, Any]


def task_id_of(headers: Any) -> str | None:
    """The message's task id, when it has one that can be answered under."""
    if isinstance(headers, Mapping):
        value = headers.get("id")
        if isinstance(value, str) and TASK_ID.fullmatch(value):
            return value
    return None


def inspect(
    headers: Any,
    content_type: Any,
    content_encoding: Any,
    body: Any,
    limits: codec.Limits,
    signatures: Callable[[str], pyinspect.Signature | None],
) -> Checked | Refusal:
    """Check a received message. ``signatures(name)`` gives a registered task's call
    signature (None: no such task)."""
    task_id = task_id_of(headers)
    if not isinstance(headers, Mapping):
        return Refusal("headers", "must be an object (a protocol 2 task message)")
    name = headers.get("task")
    shown = name if isinstance(name, str) else None

    def refuse(
        field: str, reason: str, chain: tuple[dict[str, Any], ...] = (), args: Any = None
    ) -> Refusal:
        return Refusal(field, reason, task_id, shown, chain, args)

    if task_id is None:
        return refuse("headers.id", "must be a task id: 1-255 of A-Z a-z 0-9 . _ : @ -")
    if not isinstance(name, str) or not name:
        return refuse("headers.task", "must name a task")
    problem = _header_problem(headers)
    if problem is not None:
        return refuse(*problem)
    signature = signatures(name)
    if signature is None:
        return refuse("headers.task", f"no task named {name!r} is registered here")
    if content_type not in JSON_TYPES:
        return refuse("content_type", f"must be application/json, not {content_type!r}")
    if content_encoding is not None and str(content_encoding).lower() not in ENCODINGS:
        return refuse("content_encoding", f"must be utf-8, not {content_encoding!r}")
    if body is None or body in (b"", ""):
        return refuse("body", "is empty")
    try:
        decoded = codec.loads(body, limits, "body")
    except ValidationError as exc:
        chain, args = _lax_parts(body, limits)
        return refuse(_body_field(exc.field), exc.message, chain, args)
    if not isinstance(decoded, list) or len(decoded) != 3:
        kind = f"a list of {len(decoded)}" if isinstance(decoded, list) else type(decoded).__name__
        return refuse("body", f"must be [args, kwargs, embed], not {kind}")
    args, kwargs, embed = decoded
    embed = {} if embed is None else embed
    if not isinstance(embed, dict):
        return refuse("embed", "must be an object or null")
    chain = chain_of(embed)
    problem = _embed_problem(embed)
    if problem is not None:
        return refuse(*problem, chain=chain)
    if not isinstance(args, list):
        return refuse("args", f"must be a list, not {type(args).__name__}", chain)
    if not isinstance(kwargs, dict):
        return refuse("kwargs", f"must be an object, not {type(kwargs).__name__}", chain, args)
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        return refuse("args", f"do not fit {name}: {exc}", chain, args)
    # Last: a display header (argsrepr) shows the arguments, whose own fault is named above.
    try:
        codec.check(_sender_headers(headers), HEADER_LIMITS, "headers")
    except ValidationError as exc:
        field = exc.field if exc.field.startswith("headers") else f"headers.{exc.field}"
        return refuse(field, exc.message, chain, args)
    return Checked(args, kwargs, embed)


def _sender_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """The headers its sender wrote: without those RabbitMQ adds (``x-death``, with AMQP
    timestamps, on a message that went through the delayed-delivery queues of a countdown;
    ``x-delivery-count`` on a quorum queue's redelivery), which Celery does not read."""
    return {k: v for k, v in headers.items() if not str(k).startswith(BROKER_HEADERS)}


def _lax_parts(body: Any, limits: codec.Limits) -> tuple[tuple[dict[str, Any], ...], Any]:
    """What of a refused body still tells whom to answer (the chain, the request), read
    by Python's own parser; nothing when even that cannot read it. Within the size limit
    only (checked first), and never handed on."""
    try:
        raw = body.decode("utf-8") if isinstance(body, bytes | bytearray) else body
        if not isinstance(raw, str) or len(raw) > limits.max_bytes:
            return (), None
        decoded = json.loads(raw)
    except (ValueError, TypeError, RecursionError):
        return (), None
    if not isinstance(decoded, list) or len(decoded) != 3 or not isinstance(decoded[2], dict):
        return (), None
    return chain_of(decoded[2]), decoded[0]


def _body_field(field: str) -> str:
    """A place in the body as its sender knows it: the first argument (the request, the
    analysis) by its own fields, then ``args[i]``, ``kwargs``, ``embed``."""
    match = re.match(r"^\[(\d)\](?:\[(\d+)\])?(.*)$", field)
    if match is None:
        return field
    part, index, rest = match.group(1), match.group(2), match.group(3).lstrip(".")
    if part == "0" and index == "0":
        return "args[0]" + rest if not rest or rest.startswith("[") else rest
    base = {"0": f"args[{index}]", "1": "kwargs", "2": "embed"}.get(part, "body")
    if part != "0" and index is not None:
        base += f"[{index}]"
    return f"{base}.{rest}" if rest and not rest.startswith("[") else base + rest


def _header_problem(headers: Mapping[str, Any]) -> tuple[str, str] | None:
    for key, kinds in _HEADER_TYPES.items():
        value = headers.get(key)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            return f"headers.{key}", f"must be {_kinds(kinds)}, not {type(value).__name__}"
    limits = headers.get("timelimit")
    if limits is not None and not _time_limits(limits):
        return "headers.timelimit", "must be [hard, soft] seconds (positive numbers or null)"
    for key in ("eta", "expires"):
        value = headers.get(key)
        if value is not None:
            try:
                datetime.fromisoformat(value)
            except ValueError:
                return f"headers.{key}", "must be an ISO 8601 date and time"
    stamped = headers.get("stamped_headers")
    if stamped is not None and not all(isinstance(s, str) for s in stamped):
        return "headers.stamped_headers", "must be a list of header names"
    retries = headers.get("retries")
    if isinstance(retries, int) and retries < 0:
        return "headers.retries", "must not be negative"
    return None


def _time_limits(limits: Any) -> bool:
    return len(limits) == 2 and all(
        v is None or (isinstance(v, int | float) and not isinstance(v, bool) and v > 0)
        for v in limits
    )


def _embed_problem(embed: Mapping[str, Any]) -> tuple[str, str] | None:
    for key in _EMBED_LISTS:
        value = embed.get(key)
        if value is not None and (
            not isinstance(value, list) or not all(isinstance(s, dict) for s in value)
        ):
            return f"embed.{key}", "must be a list of signatures or null"
    chord = embed.get("chord")
    if chord is not None and not isinstance(chord, dict):
        return "embed.chord", "must be a signature or null"
    for key in _EMBED_LISTS:
        for index, sig in enumerate(embed.get(key) or ()):
            if not isinstance(sig.get("task"), str) or not isinstance(sig.get("options", {}), dict):
                return f"embed.{key}[{index}]", "must be a signature (a task name, options)"
    return None


def chain_of(embed: Mapping[str, Any]) -> tuple[dict[str, Any], ...]:
    """The chain's signatures with a usable task id: a refusal is stored under each (the
    sender of a chain waits on its last task)."""
    chain = embed.get("chain")
    if not isinstance(chain, list):
        return ()
    usable = []
    for sig in chain:
        options = sig.get("options") if isinstance(sig, dict) else None
        if isinstance(options, dict) and task_id_of({"id": options.get("task_id")}):
            usable.append(
                {"task": str(sig.get("task")), "options": {"task_id": options["task_id"]}}
            )
    return tuple(usable)


def _kinds(kinds: tuple[type, ...]) -> str:
    names = {
        "NoneType": "null",
        "str": "a string",
        "int": "an integer",
        "bool": "a boolean",
        "list": "a list",
        "tuple": "a list",
        "dict": "an object",
    }
    return " or ".join(dict.fromkeys(names.get(k.__name__, k.__name__) for k in kinds))


# How deep a task's message wraps a request: [args][0] around the request itself (by name),
# an analysis around it (a step), a batch's items around analyses; others, the most.
WRAPPING = {"intent.analyze": 2, "intent.analyze_batch": 3}
STEP_WRAPPING, BATCH_STEP_WRAPPING, MOST_WRAPPING = 3, 6, 8


def message_limits(task: str | None = None) -> codec.Limits:
    """What one task message may hold: up to a batch of analyses, each with its context
    and predictions, around the request limits, nested as ``task`` nests a request (so a
    request too deep is refused naming the same field as the request's own check)."""
    settings = get_settings()
    request = codec.Limits(max_bytes=settings.max_payload_bytes, max_depth=settings.max_json_depth)
    if task in WRAPPING:
        levels = WRAPPING[task]
    elif task is not None and task.startswith("intent.batch_"):
        levels = BATCH_STEP_WRAPPING
    elif task is not None and task.startswith("intent."):
        levels = STEP_WRAPPING
    else:
        levels = MOST_WRAPPING
    message = request.nested(levels, 8 * settings.batch_max_size)
    # A long string is the request's to refuse, by its field name, in the task itself.
    return replace(message, max_string=message.max_bytes)
