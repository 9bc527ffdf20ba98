"""Turning untrusted payloads into models, with errors that name the offending field."""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

import pydantic

from intent.errors import ValidationError
from intent.models import IntentRequest, IntentResult

M = TypeVar("M", bound=pydantic.BaseModel)


# pydantic appends the member type to the location of a union's error ("signals.k.str").
_UNION_TAGS = {"str", "int", "float", "bool", "none"}


def _field_name(loc: tuple[int | str, ...]) -> str:
    if len(loc) > 1 and loc[-1] in _UNION_TAGS:
        loc = loc[:-1]
    return ".".join(str(part) for part in loc) or "request"


def _describe(err: Any) -> dict[str, str]:
    field, message = _field_name(err["loc"]), str(err["msg"])
    # Model-level rules name their field as "field: message" (see IntentRequest).
    named = re.match(r"^Value error, ([a-z_]+): (.*)$", message)
    if field == "request" and named:
        field, message = named.group(1), named.group(2)
    return {"field": field, "message": message}


def parse_model(model: type[M], payload: Any, *, what: str, max_bytes: int) -> M:
    """Validate ``payload`` (a dict, or a JSON text of one) as ``model``."""
    if isinstance(payload, bytes | bytearray):
        try:
            payload = payload.decode()
        except UnicodeDecodeError:
            raise ValidationError(what, "is not UTF-8 text") from None
    if isinstance(payload, str):
        # Characters first (cheap), then UTF-8 bytes: a character takes up to 4.
        if len(payload) > max_bytes or (
            len(payload) * 4 > max_bytes and len(payload.encode()) > max_bytes
        ):
            raise ValidationError(what, f"is larger than {max_bytes} bytes")
        try:
            payload = json.loads(payload)
        except json.JSONDecodeError as exc:
            raise ValidationError(what, f"is not valid JSON ({exc.msg})") from None
        if not isinstance(payload, dict):
            raise ValidationError(what, f"must be a JSON object, not {type(payload).__name__}")
        # Its size is known from its text: no need to serialise it again to measure it.
    elif not isinstance(payload, dict):
        raise ValidationError(what, f"must be a JSON object, not {type(payload).__name__}")
    else:
        try:
            size = len(json.dumps(payload, separators=(",", ":")))
        except (TypeError, ValueError) as exc:
            raise ValidationError(what, f"is not JSON-serialisable ({exc})") from None
        if size > max_bytes:
            raise ValidationError(what, f"is {size} bytes, larger than the {max_bytes} byte cap")
    try:
        return model.model_validate(payload)
    except pydantic.ValidationError as exc:
        errors = [_describe(err) for err in exc.errors(include_url=False)]
        first = errors[0]
        message = first["message"]
        if len(errors) > 1:
            others = ", ".join(e["field"] for e in errors[1:])
            message += f" (also invalid: {others})"
        raise ValidationError(first["field"], message, errors) from None


def parse_request(payload: Any, max_bytes: int) -> IntentRequest:
    return parse_model(IntentRequest, payload, what="request", max_bytes=max_bytes)


def parse_result(payload: Any, max_bytes: int) -> IntentResult:
    # A step's input also carries the context and predictions: allow it more room.
    return parse_model(IntentResult, payload, what="analysis", max_bytes=max_bytes * 8)
