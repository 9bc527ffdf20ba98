"""One strict JSON codec for everything that comes in: task messages, requests given to
``submit()``, the admin endpoint's bodies, event stream entries.

Plain JSON only, bounded while it is read, so nothing deep or huge goes any further (to a
prefork pool's pickling, to pydantic, to a downstream service):

- at most ``max_bytes`` of text, strings of at most ``max_string`` characters, integers of
  at most ``max_int_digits`` digits, nesting at most ``max_depth`` levels;
- valid Unicode: UTF-8 bytes, and no lone surrogate (``"\\ud800"`` is valid JSON text
  but no character; passed on, it makes a service answer 500 and is retried);
- finite numbers (``NaN``, ``Infinity`` and ``1e400`` are refused, never stored as null);
- no type markers: kombu's own decoder turns ``{"__type__": ..., "__value__": ...}`` into
  bytes, Decimal, UUID or datetime (or fails); here such an object is refused, so no client
  that decodes our results with kombu's decoder meets one.

A refusal is a :class:`~intent.errors.ValidationError` naming where (``data.items[3]``)
and what is wrong. Encoding is kombu's (anything it could encode, this can).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from intent.errors import IntentError, ValidationError

# A surrogate escape in JSON text: a lone one decodes to no character (checked only then).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
# Numbers that need a look (more digits than a limit allows, a three-digit exponent) are
# found in the text with every digit made a 0: substring tests, no regex backtracking.
_DIGITS = str.maketrans("123456789", "000000000")
_EXPONENTS = ("e000", "e+000", "e-000", "E000", "E+000", "E-000")
MARKER_KEYS = frozenset({"__type__", "__value__"})


@dataclass(frozen=True)
class Limits:
    """How much one document may hold."""

    max_bytes: int = 65536
    max_depth: int = 32
    max_string: int = 65536
    max_int_digits: int = 32

    def nested(self, levels: int, factor: int = 1) -> Limits:
        """These limits for a document that wraps one of them ``levels`` deep (``factor``
        of them): a task message around a request, say."""
        return Limits(
            max_bytes=self.max_bytes * factor,
            max_depth=self.max_depth + levels,
            max_string=self.max_string,
            max_int_digits=self.max_int_digits,
        )

    @cached_property
    def int_bound(self) -> int:
        """The smallest magnitude of an integer with more than ``max_int_digits`` digits."""
        return int(10**self.max_int_digits)

    @cached_property
    def hooks(self) -> dict[str, Callable[[str], Any]]:
        """json.loads hooks that refuse what JSON text may say but a value must not be."""

        def integer(text: str) -> int:
            digits = len(text) - text.startswith("-")
            if digits > self.max_int_digits:
                raise _Refused(f"has an integer of {digits} digits (at most {self.max_int_digits})")
            return int(text)

        def number(text: str) -> float:
            value = float(text)
            if not math.isfinite(value):
                raise _Refused(f"has a number out of range ({text[:40]})")
            return value

        def constant(text: str) -> Any:
            raise _Refused(f"has {text}, which is not a number JSON allows")

        return {"parse_int": integer, "parse_float": number, "parse_constant": constant}


class _Refused(IntentError, ValueError):
    """Raised inside json.loads by a hook; becomes a ValidationError of the document."""


def loads(data: str | bytes | bytearray | memoryview, limits: Limits, what: str) -> Any:
    """Decode one JSON document within ``limits``; ``what`` names it in a refusal."""
    if isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
        if len(raw) > limits.max_bytes:
            raise ValidationError(what, f"is larger than {limits.max_bytes} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValidationError(what, f"is not UTF-8 text (byte {exc.start})") from None
    else:
        text = data
        # Characters first (cheap), then UTF-8 bytes: a character takes up to 4.
        if len(text) > limits.max_bytes or (
            len(text) * 4 > limits.max_bytes and _utf8_length(text, what) > limits.max_bytes
        ):
            raise ValidationError(what, f"is larger than {limits.max_bytes} bytes")
    hooks = limits.hooks
    try:
        # The number hooks cost a Python call per number: only for text that needs them.
        if _big_numbers(text, limits):
            value = json.loads(
                text,
                parse_int=hooks["parse_int"],
                parse_float=hooks["parse_float"],
                parse_constant=hooks["parse_constant"],
            )
        else:
            value = json.loads(text, parse_constant=hooks["parse_constant"])
    except _Refused as exc:
        _locate(text, limits, what)  # where, when Python's own parser can read it
        raise ValidationError(what, str(exc)) from None
    except json.JSONDecodeError as exc:
        raise ValidationError(what, f"is not valid JSON ({exc.msg} at {exc.pos})") from None
    except RecursionError:
        raise ValidationError(what, f"is nested deeper than {limits.max_depth} levels") from None
    if len(text) > limits.max_string or _SURROGATE_ESCAPE.search(text):
        check(value, limits, what)  # long or surrogate strings: find which, and where
    elif not _plain_shape(value, limits.max_depth):
        check(value, limits, what)  # too deep, or a marker: name where
    return value


def dumps(value: Any) -> str:
    """Compact JSON; what JSON cannot say is encoded as kombu does."""
    from kombu.utils.json import dumps as kombu_dumps

    return str(kombu_dumps(value))


def check(value: Any, limits: Limits, what: str) -> None:
    """Refuse a Python value (a dict given to ``submit()``, a decoded document) that JSON
    could not carry within ``limits``: types, depth, strings, numbers, markers."""
    stack: list[tuple[Any, int, tuple[str | int, ...]]] = [(value, 1, ())]
    while stack:
        item, depth, path = stack.pop()
        kind = type(item)
        if kind is str:
            _check_string(item, limits, what, path)
        elif kind is dict or isinstance(item, dict):
            if depth > limits.max_depth:
                _refuse(what, path, f"is nested deeper than {limits.max_depth} levels")
            if len(item) == 2 and item.keys() == MARKER_KEYS:
                _refuse(what, path, _MARKER)
            for key, child in item.items():
                if not isinstance(key, str):
                    _refuse(what, path, f"has a key that is not a string ({type(key).__name__})")
                _check_string(key, limits, what, (*path, key))
                stack.append((child, depth + 1, (*path, key)))
        elif kind is list or kind is tuple:
            if depth > limits.max_depth:
                _refuse(what, path, f"is nested deeper than {limits.max_depth} levels")
            stack.extend((child, depth + 1, (*path, i)) for i, child in enumerate(item))
        elif kind is bool or item is None:
            continue
        elif kind is int:
            if abs(item) >= limits.int_bound:
                _refuse(what, path, f"is an integer of more than {limits.max_int_digits} digits")
        elif kind is float:
            if not math.isfinite(item):
                _refuse(what, path, "must be a finite number")
        else:
            _refuse(what, path, f"is not JSON ({kind.__name__})")


_MARKER = (
    "is an object of exactly the keys __type__ and __value__, which JSON decoders of "
    "Celery's kombu read as a type marker"
)


def _locate(text: str, limits: Limits, what: str) -> None:
    """Raise the refusal of ``text`` naming the place, if a lax parse can find it."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return
    check(value, limits, what)


def _big_numbers(text: str, limits: Limits) -> bool:
    zeros = text.translate(_DIGITS)
    return "0" * (limits.max_int_digits + 1) in zeros or any(e in zeros for e in _EXPONENTS)


def within_limits(value: Any, limits: Limits) -> bool:
    """A value another parser decoded (pydantic-core's, which reads NaN, 1e400 as inf and
    integers of any length) within the depth and numbers of ``limits`` and free of type
    markers. Strings are the caller's to bound."""
    return _plain_shape(value, limits.max_depth, limits.int_bound)


def _plain_shape(value: Any, max_depth: int, int_bound: int | None = None) -> bool:
    """Within ``max_depth`` and free of type markers (and, given ``int_bound``, of integers
    that large and of non-finite floats): a walk over the containers, a level at a time
    (the cheap path for a decoded document; :func:`check` says where)."""
    level: list[Any] = [[value]]  # a wrapper at depth 0: the value itself may be a number
    depth = 0
    while level:
        if depth > max_depth:
            return False
        below: list[Any] = []
        for item in level:
            if type(item) is dict:
                if len(item) == 2 and item.keys() == MARKER_KEYS:
                    return False
                children = item.values()
            else:
                children = item
            for child in children:
                kind = type(child)
                if kind is dict or kind is list:
                    below.append(child)
                elif int_bound is None:
                    continue
                elif kind is int:
                    if not -int_bound < child < int_bound:
                        return False
                elif kind is float and child - child != 0:  # inf or nan
                    return False
        level = below
        depth += 1
    return True


def _check_string(text: str, limits: Limits, what: str, path: tuple[str | int, ...]) -> None:
    if len(text) > limits.max_string:
        _refuse(what, path, f"has a string longer than {limits.max_string} characters")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            _refuse(what, path, "is not valid Unicode (it holds a lone surrogate)")


def _utf8_length(text: str, what: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValidationError(what, "is not valid Unicode (it holds a lone surrogate)") from None


def _refuse(what: str, path: tuple[str | int, ...], message: str) -> None:
    raise ValidationError(field_name(what, path), message)


def field_name(what: str, path: tuple[str | int, ...]) -> str:
    """``data.items[3].name`` (``what`` alone for the whole document). A key that is no
    valid Unicode is named with its lone surrogates escaped (``\\ud800``): a refusal is
    stored and sent on as JSON, which a lone surrogate cannot cross."""
    name = ""
    for part in path:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else part)
    if not name.isascii():
        name = name.encode("utf-8", "backslashreplace").decode("utf-8")
    return name or what
