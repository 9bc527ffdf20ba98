"""Fuzz cases for every way into the pipeline, each with what must happen to it, and the
harness that sends them to a real worker and event consumer and judges what happened.

Four kinds of case (:data:`KINDS`):

- ``request``: an analysis request by task name (``intent.analyze``): a dict, a JSON text
  of one, given to ``submit()`` in-process, or raw bytes on the queue (for what a JSON
  encoder cannot write: ``1e400``, 5,000-digit integers, invalid UTF-8, extreme nesting);
- ``message``: a raw task message (protocol 2) published with kombu's Producer: headers,
  content type and encoding, body; also steps (``intent.predict``...) with bad analyses;
- ``envelope``: a raw item pushed onto the queue's Redis list (``intent``);
- ``event``: an entry added to the event stream (``intent:events``).

Every case carries its :class:`Expect`:

- ``valid``: must complete (a task: an analysis result with status ``completed``, no
  retries; an event: handled by the consumer);
- ``bad``: a task with an id must be answered with a ``ValidationError`` naming
  ``Expect.field`` or a place inside it (``data`` covers ``data.items[3]``); an event must
  be dead-lettered with ``Expect.reason`` and an error about ``Expect.field``;
- ``no_id``: a task message without a usable id must be dead-lettered (its dead letter's
  field is ``Expect.field``), never answered nor run.

Cases are built by functions of a :class:`Source` of choices, so the same code is a
hypothesis strategy (:func:`cases`) and a plain seeded generator (:func:`generate`,
:func:`coverage`, which the bench uses too). Identifiers, task ids and context ids carry the
case's ``uid`` (not drawn: unique per run), so every answer, dead letter and downstream call
is matched to its case exactly.

The second half (:class:`Target`, :class:`Engine`) sends cases concurrently, waits for
each outcome with a timeout, watches the worker's processes and the consumer thread,
restarts what died (and finds the input that killed it), and checks the reference
services' request logs and the worker's log for downstream calls and retries.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import itertools
import json
import math
import os
import queue
import random
import re
import signal
import string
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:
    from intent.dev.stack import WorkerProcess

T = TypeVar("T")

KINDS = ("request", "message", "envelope", "event")
VALID, BAD, NO_ID = "valid", "bad", "no_id"
ANALYZE = "intent.analyze"
STEPS = ("intent.fetch_context", "intent.predict", "intent.detect_pattern", "intent.emit_events")
EVENT_TYPES = ("pattern_detected", "pattern_updated", "context_changed", "prediction_received")
MARKER_KEYS = frozenset({"__type__", "__value__"})
REQUEST_CAP = 65536  # INTENT_MAX_PAYLOAD_BYTES (default)
ALNUM = string.ascii_letters + string.digits
IDENT = ALNUM + "._-"
UID = re.compile(rb"fz[0-9a-f]{6}n[0-9]{7}")
EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


# -- where the choices come from ---------------------------------------------------------


class Uids:
    """Unique case ids for one run: ``fz<6 hex>n<7 digits>`` (valid in every identifier)."""

    def __init__(self, tag: str | None = None):
        self.tag = tag or uuid.uuid4().hex[:6]
        self._count = itertools.count()
        self._lock = threading.Lock()

    def next(self) -> str:
        with self._lock:
            return f"fz{self.tag}n{next(self._count):07d}"


UIDS = Uids()  # the process's default

# Characters of valid text: mostly ASCII, some of every plane, never a surrogate.
_RANGES = (
    (0x20, 0x7E, 60),
    (0x00, 0x1F, 3),
    (0xA0, 0x2FF, 10),
    (0x370, 0x4FF, 5),
    (0x2000, 0x206F, 3),
    (0x4E00, 0x9FFF, 5),
    (0xE000, 0xF8FF, 1),
    (0xFFF0, 0xFFFF, 1),
    (0x10000, 0x10FFFF, 4),
)
_RANGE_WEIGHTS = list(itertools.accumulate(w for _, _, w in _RANGES))
_SPECIAL_FLOATS = (0.0, -0.0, 0.1, 1.5, -2.5, 5e-324, 1.7976931348623157e308, -1e-300, 1e16)


class Source:
    """The choices a case is built from; subclasses draw them."""

    def __init__(self, uids: Uids | None = None):
        self.uids = uids or UIDS
        self.boundary = False  # draw boundary values too (only in cases that must be valid)

    @contextlib.contextmanager
    def valid(self) -> Iterator[None]:
        """Within: values may be at their limits (a bad case's base stays plainly valid,
        so the one thing wrong with it is the only thing its refusal can name)."""
        saved, self.boundary = self.boundary, True
        try:
            yield
        finally:
            self.boundary = saved

    def uid(self) -> str:
        return self.uids.next()

    def integer(self, lo: int, hi: int) -> int:
        raise NotImplementedError

    def choice(self, options: Sequence[T]) -> T:
        return options[self.integer(0, len(options) - 1)]

    def boolean(self, p: float = 0.5) -> bool:
        return self.integer(0, 999) < p * 1000

    def text(self, alphabet: str, lo: int, hi: int) -> str:
        return "".join(self.choice(alphabet) for _ in range(self.integer(lo, hi)))

    def unicode(self, lo: int, hi: int) -> str:
        """Valid text (no lone surrogate) of ``lo``..``hi`` characters."""
        raise NotImplementedError

    def finite_float(self) -> float:
        raise NotImplementedError


class RandomSource(Source):
    """Choices from a seeded ``random.Random``: the plain generator."""

    def __init__(self, rng: random.Random, uids: Uids | None = None):
        super().__init__(uids)
        self.rng = rng

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def text(self, alphabet: str, lo: int, hi: int) -> str:
        return "".join(self.rng.choices(alphabet, k=self.rng.randint(lo, hi)))

    def unicode(self, lo: int, hi: int) -> str:
        out = []
        for _ in range(self.rng.randint(lo, hi)):
            start, end, _ = self.rng.choices(_RANGES, cum_weights=_RANGE_WEIGHTS)[0]
            out.append(chr(self.rng.randint(start, end)))
        return "".join(out)

    def finite_float(self) -> float:
        pick = self.rng.randint(0, 2)
        if pick == 0:
            return self.rng.choice(_SPECIAL_FLOATS)
        if pick == 1:
            return self.rng.uniform(-1e6, 1e6)
        return math.ldexp(self.rng.random(), self.rng.randint(-1074, 1023))


class DrawSource(Source):
    """Choices drawn by hypothesis (inside ``st.composite``)."""

    def __init__(self, draw: Callable[[Any], Any], uids: Uids | None = None):
        super().__init__(uids)
        self.draw = draw

    def integer(self, lo: int, hi: int) -> int:
        from hypothesis import strategies as st

        return int(self.draw(st.integers(lo, hi)))

    def choice(self, options: Sequence[T]) -> T:
        from hypothesis import strategies as st

        return cast(T, self.draw(st.sampled_from(options)))

    def boolean(self, p: float = 0.5) -> bool:
        from hypothesis import strategies as st

        # One of 20 slots: hypothesis draws a small range about evenly, a wide one (as
        # integer(0, 999) would be) mostly near its low end, which would make p far larger.
        return int(self.draw(st.sampled_from(range(20)))) < round(p * 20)

    def text(self, alphabet: str, lo: int, hi: int) -> str:
        from hypothesis import strategies as st

        return str(self.draw(st.text(alphabet=alphabet, min_size=lo, max_size=hi)))

    def unicode(self, lo: int, hi: int) -> str:
        from hypothesis import strategies as st

        chars = st.characters(exclude_categories=["Cs"])
        return str(self.draw(st.text(chars, min_size=lo, max_size=hi)))

    def finite_float(self) -> float:
        from hypothesis import strategies as st

        return float(self.draw(st.floats(allow_nan=False, allow_infinity=False)))


# -- cases ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    outcome: str  # VALID, BAD or NO_ID
    field: str = ""  # BAD/NO_ID: what the refusal names (or a place in it); events: the error
    reason: str = ""  # events, and dead letters without a uid: their reason contains this


@dataclass
class Case:
    kind: str
    name: str
    expect: Expect
    uid: str
    via: str  # send_task, submit, publish, lpush, xadd
    task: str = ANALYZE
    args: list[Any] | None = None  # send_task
    payload: Any = None  # submit
    headers: dict[str, Any] | None = None  # publish
    content_type: str | None = None
    content_encoding: str | None = None
    body: bytes | None = None  # publish
    raw: bytes | None = None  # lpush
    fields: dict[bytes, bytes] | None = None  # xadd
    task_id: str | None = None  # what its answer is stored under (None: none)
    stray_id: str | None = None  # NO_ID: the unusable id its headers carry, if text
    context_id: str | None = None  # VALID: the context it fetches (GET /api/v1/context/<id>)
    inline_data: bool = False  # VALID: its context comes from data (POST /api/v1/context)
    attributable: bool = True  # its dead letter holds its uid

    def __repr__(self) -> str:
        return f"<{self.uid} {self.kind}/{self.via} {self.name!r} expect {self.describe()}>"

    def describe(self) -> str:
        e = self.expect
        if e.outcome == VALID:
            return "valid"
        if e.outcome == NO_ID:
            return f"no id, dead letter field {e.field!r}" + (f" ({e.reason})" if e.reason else "")
        if self.kind == "event":
            return f"dead letter {e.reason}, error {e.field!r}..."
        return f"ValidationError {e.field!r}..."


def _swap(value: Any, old: str, new: str) -> Any:
    """``value`` with ``old`` replaced by ``new`` in every text, key and byte string."""
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, bytes):
        return value.replace(old.encode(), new.encode())
    if isinstance(value, dict):
        return {_swap(k, old, new): _swap(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_swap(v, old, new) for v in value]
    return value


def rebind(case: Case, uid: str) -> Case:
    """The same case under a new uid (to send it again): same lengths, same shape."""
    changes = {
        f.name: _swap(getattr(case, f.name), case.uid, uid)
        for f in dataclasses.fields(case)
        if f.name not in ("kind", "name", "expect", "via", "task")
    }
    return dataclasses.replace(case, **changes)


def field_of(base: str, path: Iterable[str | int]) -> str:
    """``data.items[3].name``: how a refusal names a place."""
    name = base
    for part in path:
        name += f"[{part}]" if isinstance(part, int) else f".{part}"
    return name


class Encoded:
    """JSON with literals a JSON encoder cannot write: placeholders replaced by bytes."""

    def __init__(self) -> None:
        self.tokens: dict[str, bytes] = {}

    def token(self, literal: bytes) -> str:
        key = f"@@raw{len(self.tokens)}-{uuid.uuid4().hex[:8]}@@"
        self.tokens[key] = literal
        return key

    def dumps(self, value: Any) -> bytes:
        data = json.dumps(value, ensure_ascii=True).encode("ascii")
        for key, literal in self.tokens.items():
            data = data.replace(f'"{key}"'.encode(), literal)
        return data


# -- values ----------------------------------------------------------------------------------


def identifier(src: Source, max_len: int = 128) -> str:
    """A valid identifier: 1-128 of A-Z a-z 0-9 . _ -, starting with a letter or digit."""
    n = max_len if src.boolean(0.05) else src.integer(1, min(24, max_len))
    return src.text(ALNUM, 1, 1) + src.text(IDENT, n - 1, n - 1)


def unique_identifier(src: Source, uid: str) -> str:
    base = identifier(src, 128 - len(uid) - 1)
    if base.startswith("missing"):  # the reference Context Service answers those 404
        base = "c" + base[1:]
    return f"{base}-{uid}"


BIG_VALID_INTS = (10**31, -(10**31), 10**32 - 1, -(10**32 - 1), 9 * 10**31, 2**106, 2**63)


def scalar(src: Source) -> Any:
    pick = src.integer(0, 8)
    if pick == 0:
        return None
    if pick == 1:
        return src.boolean()
    if pick == 2:
        return src.integer(-1000, 1000)
    if pick == 3:
        # Up to 32 digits, the codec's bound, with the boundary values themselves.
        if src.boundary and src.boolean(0.3):
            return src.choice(BIG_VALID_INTS)
        return src.integer(-(10**30), 10**30)
    if pick == 4:
        return src.finite_float()
    return src.unicode(0, 20)


def json_value(src: Source, depth: int) -> Any:
    if depth <= 0 or src.boolean(0.6):
        return scalar(src)
    if src.boolean():
        return [json_value(src, depth - 1) for _ in range(src.integer(0, 3))]
    return json_object(src, depth - 1, 0, 3)


def json_object(src: Source, depth: int, lo: int, hi: int) -> dict[str, Any]:
    out = {src.unicode(0, 10): json_value(src, depth) for _ in range(src.integer(lo, hi))}
    if out.keys() == MARKER_KEYS:  # exactly a type marker: not a valid value
        out["x"] = 1
    return out


def signal_value(src: Source) -> Any:
    pick = src.integer(0, 4)
    if pick == 0:
        return None
    if pick == 1:
        return src.boolean()
    if pick == 2:
        return src.integer(-(10**18), 10**18)
    if pick == 3:
        return src.finite_float()
    return src.unicode(0, 20)


def valid_request(
    src: Source, uid: str, mode: str | None = None
) -> tuple[dict[str, Any], str | None]:
    """A valid IntentRequest as a dict, and its context id (None: it gives data)."""
    mode = mode or src.choice(("context", "context", "data"))
    req: dict[str, Any] = {}
    if src.boolean(0.7):
        req["request_id"] = unique_identifier(src, uid)
    req["client_id"] = unique_identifier(src, uid)  # unique: the intake limit is per client
    req["pattern_id"] = identifier(src)
    context_id = None
    if mode == "context":
        context_id = unique_identifier(src, uid)
        req["context_id"] = context_id
        if src.boolean(0.1):
            req["data"] = None
    else:
        req["data"] = json_object(src, 3, 1, 4)
        if src.boundary and src.boolean(0.1):
            # As deep as a request may go: data is level 2, its deepest container level 32.
            req["data"]["deepest"] = chain_of(src, 30)[0]
        if src.boolean(0.1):
            req["context_id"] = None
    if src.boolean(0.3):
        days = src.integer(1, 3650)
        deadline = int(time.time()) + days * 86400
        req["deadline"] = deadline if src.boolean() else float(deadline) + 0.5
    elif src.boolean(0.1):
        req["deadline"] = None
    if src.boolean(0.4):
        req["signals"] = {src.unicode(0, 16): signal_value(src) for _ in range(src.integer(0, 6))}
    return req, context_id


def chain_of(src: Source, levels: int, key_alphabet: str = IDENT) -> tuple[Any, list[str | int]]:
    """``levels`` containers nested in one another; the steps from each to the next."""
    motif: list[str | int] = []
    for _ in range(src.integer(1, 3)):
        motif.append(src.integer(0, 2) if src.boolean() else src.text(key_alphabet, 1, 4))
    steps = [motif[i % len(motif)] for i in range(levels)]
    value: Any = src.choice((1, "leaf", None, True))
    for step in reversed(steps):
        value = [0] * step + [value] if isinstance(step, int) else {step: value}
    return value, steps


def marker(src: Source) -> dict[str, Any]:
    kind = src.choice(
        ("bytes", "base64", "uuid", "datetime", "date", "time", "decimal", "set", "nope", 5)
    )
    value = src.choice(("x", "", 5, None, {"hex": "0" * 32}, "2020-01-01T00:00:00", "1.5"))
    items = [("__type__", kind), ("__value__", value)]
    return dict(items if src.boolean() else items[::-1])


# Type markers in headers, each as kombu's own decoder would take it: revived (a UUID, a
# datetime, bytes) or raising (TypeError, ValueError, InvalidOperation, AttributeError).
# The worker reads envelopes as plain JSON, and its gate refuses a marker by its header.
HEADER_MARKERS: tuple[dict[str, Any], ...] = (
    {"__type__": "uuid", "__value__": {"hex": "0" * 32}},
    {"__type__": "datetime", "__value__": "2020-01-01T00:00:00"},
    {"__type__": "bytes", "__value__": "x"},
    {"__type__": "uuid", "__value__": "nope"},
    {"__type__": "nope", "__value__": 1},
    {"__type__": "decimal", "__value__": "x"},
    {"__type__": "bytes", "__value__": 5},
)


def lone_surrogate_text(src: Source) -> str:
    lone = src.choice(("\ud800", "\udbff", "\udc00", "\udfff", "\udc80", "\ud83d"))
    return src.text(ALNUM, 0, 4) + lone + src.text(ALNUM, 0, 4)


INVALID_UTF8 = (
    b"\xff",
    b"\xfe",
    b"\xc3\x28",
    b"\xed\xa0\x80",
    b"\xc0\xaf",
    b"\xf8\x88\x80\x80\x80",
    b"\x80",
    b"\xe2\x82",
    b"\xf4\x90\x80\x80",
)


# -- requests ----------------------------------------------------------------------------------


@dataclass
class Bad:
    """A bad request and the field its refusal names, per way of sending it."""

    name: str
    payload: Any
    field: str  # as a dict (send_task), or raw bytes (publish)
    text_field: str | None = None  # as a JSON text (default: field; "request" over the cap)
    submit_field: str | None = None  # given to submit()
    step_field: str | None = None  # as a step's analysis.request (None: not as a step)
    encoded: Encoded | None = None  # literals no encoder writes: raw bytes only
    text_ok: bool = True
    text: str | None = None  # the payload is this JSON text (and nothing else)


def _place(
    src: Source, uid: str, where: str, value: Any, key: str | None = None
) -> tuple[dict[str, Any], str]:
    """A valid request with ``value`` put at ``where``; the field that names it."""
    k = key if key is not None else src.text(IDENT, 1, 6)
    if where.startswith("data"):
        req, _ = valid_request(src, uid, "data")
        data = dict(req["data"])
        if where == "data":
            req["data"] = value
            return req, "data"
        if where == "data key":
            data[value] = 1
            req["data"] = data
            return req, f"data.{value}"
        if where == "data list":
            i = src.integer(0, 2)
            data[k] = [0] * i + [value]
            req["data"] = data
            return req, f"data.{k}[{i}]"
        data[k] = value
        req["data"] = data
        return req, f"data.{k}"
    req, _ = valid_request(src, uid, "context")
    if where == "signals":
        req["signals"] = value
        return req, "signals"
    if where == "signals.k":
        req["signals"] = {k: value}
        return req, f"signals.{k}"
    if where == "signals key":
        req["signals"] = {value: 1}
        return req, f"signals.{value}"
    req[where] = value
    return req, where


def _steps(field: str) -> str:
    return f"request.{field}"


def bad_wrong_type(src: Source, uid: str) -> Bad:
    req, _ = valid_request(src, uid, "context")
    key = src.choice(("client_id", "pattern_id", "request_id", "context_id"))
    value = src.choice((5, -1, 1.5, True, False, [], ["a"], {}, {"a": 1}, None))
    req[key] = value
    # context_id None leaves neither source: the model's rule, named without "request."
    step = None if (key == "context_id" and value is None) else _steps(key)
    return Bad(f"{key} = {value!r}", req, key, step_field=step)


BAD_IDENTIFIERS = (
    "",
    "-a",
    ".a",
    "_a",
    "a b",
    "a/b",
    "a\n",
    "\na",
    "ä",
    "a" * 129,
    "a:b",
    "a@b",
    "a\x00",
    " a",
    "a\t",
    "\uff41",
    "\u0661\u0662",
    "a+b",
    "a%2F",
    "a#",
    "a?",
    "..",
    "a\u200b",
)


def bad_identifier(src: Source, uid: str) -> Bad:
    req, _ = valid_request(src, uid, "context")
    key = src.choice(("client_id", "pattern_id", "request_id", "context_id"))
    if src.boolean(0.6):
        value = src.choice(BAD_IDENTIFIERS)
    else:  # a good one with one bad character put in
        good = identifier(src, 40)
        at = src.integer(0, len(good))
        value = good[:at] + src.choice(" /\n\t:@ä\x00+#%?*,;'\"\\é") + good[at:]
    req[key] = value
    return Bad(f"{key} = {value[:40]!r}", req, key, step_field=_steps(key))


def bad_data_type(src: Source, uid: str) -> Bad:
    req, _ = valid_request(src, uid, "data")
    value = src.choice(("x", 5, [], [1], True, 1.5, {}))
    req["data"] = value
    step = None if value == {} else _steps("data")  # {}: the model's rule
    return Bad(f"data = {value!r}", req, "data", step_field=step)


def bad_signals(src: Source, uid: str) -> Bad:
    req, _ = valid_request(src, uid, "context")
    pick = src.integer(0, 3)
    if pick == 0:
        value: Any = src.choice(([], "x", 5, [1], True))
        req["signals"], name, where = value, f"signals = {value!r}", "signals"
    elif pick == 1:
        k = src.text(IDENT, 1, 8)
        req["signals"] = {k: src.choice(([1], {"a": 1}, [], {}))}
        name, where = "a signal that is a container", f"signals.{k}"
    elif pick == 2:
        k = src.text(ALNUM, 65, 90)
        req["signals"] = {k: 1}
        name, where = f"a signal name of {len(k)} characters", f"signals.{k}"
    else:
        n = src.integer(65, 80)
        req["signals"] = {f"s{i}": i for i in range(n)}
        name, where = f"{n} signals", "signals"
    return Bad(name, req, where, step_field=_steps(where))


def bad_deep(src: Source, uid: str) -> Bad:
    where = src.choice(("data", "signals.k", "client_id"))
    start = {"data": 2, "signals.k": 3, "client_id": 2}[where]  # its depth in the request
    first = 34 - start  # the first container deeper than 32 levels (the request is one)
    levels = src.choice((first, first + 1, src.integer(first, 120), src.integer(first, 500)))
    value, steps = chain_of(src, levels)
    req, base = _place(src, uid, where, value)
    name = field_of(base, steps[: first - 1])
    return Bad(f"{where} nested {levels} deep", req, name, step_field=_steps(name))


def bad_deep_extreme(src: Source, uid: str) -> Bad:
    """Deeper than any parser goes (a RecursionError): only the document can be named."""
    levels = src.integer(1500, 20000)
    enc = Encoded()
    if src.boolean():
        literal = b'{"a":' * levels + b"1" + b"}" * levels
    else:
        literal = b"[" * levels + b"1" + b"]" * levels
    req, _ = valid_request(src, uid, "data")
    req["data"] = {"deep": enc.token(literal)}
    return Bad(
        f"data nested {levels} deep",
        req,
        "body",
        text_field="request",
        step_field="body",
        encoded=enc,
    )


def bad_huge_string(src: Source, uid: str) -> Bad:
    n = src.integer(REQUEST_CAP + 1, 150000)
    char = src.choice(("x", "é", "€", "\U0001f600", "\u2028"))
    value = char * n
    where = src.choice(
        ("data.k", "data key", "client_id", "signals.k", "pattern_id", "signals key")
    )
    req, name = _place(src, uid, where, value)
    return Bad(f"a string of {n} x {char!r} at {where}", req, name, step_field=_steps(name))


def bad_oversize(src: Source, uid: str) -> Bad:
    req, _ = valid_request(src, uid, "data")
    count = src.integer(3, 5)
    req["data"] = {f"part{i}": "y" * src.integer(25000, 60000) for i in range(count)}
    return Bad(f"{count} strings over the size cap", req, "request")


def bad_surrogate(src: Source, uid: str) -> Bad:
    value = lone_surrogate_text(src)
    where = src.choice(
        ("data.k", "data key", "data list", "client_id", "signals.k", "signals key", "pattern_id")
    )
    req, name = _place(src, uid, where, value)
    # A key is named with its lone surrogate escaped (a refusal must cross JSON).
    name = name.encode("utf-8", "backslashreplace").decode("utf-8")
    return Bad(f"a lone surrogate {value!r} at {where}", req, name, step_field=_steps(name))


def bad_nonfinite(src: Source, uid: str) -> Bad:
    where = src.choice(("data.k", "data list", "signals.k", "deadline"))
    if src.boolean():
        value: Any = src.choice((math.nan, math.inf, -math.inf))
        req, name = _place(src, uid, where, value)
        return Bad(f"{value} at {where}", req, name, step_field=_steps(name))
    enc = Encoded()
    literal = src.choice(
        (
            b"1e400",
            b"-1e400",
            b"1E+999",
            b"NaN",
            b"Infinity",
            b"-Infinity",
            b"1" + b"0" * 400 + b".0",
        )
    )
    req, name = _place(src, uid, where, enc.token(literal))
    label = literal[:12].decode()
    return Bad(f"{label} at {where}", req, name, step_field=_steps(name), encoded=enc)


def bad_big_int(src: Source, uid: str) -> Bad:
    where = src.choice(("data.k", "data list", "signals.k", "deadline"))
    sign = src.choice(("", "-"))
    if src.boolean(0.6):
        digits = src.choice((33, 34, src.integer(33, 4000)))
        value = int(sign + "9" * digits)
        req, name = _place(src, uid, where, value)
        return Bad(f"a {digits}-digit integer at {where}", req, name, step_field=_steps(name))
    # Beyond Python's int-to-text limit (4300 digits): its place cannot be told.
    digits = src.integer(4301, 12000)
    enc = Encoded()
    req, _ = _place(src, uid, where, enc.token((sign + "7" * digits).encode()))
    return Bad(
        f"a {digits}-digit integer at {where}",
        req,
        "body",
        text_field="request",
        step_field="body",
        encoded=enc,
    )


def bad_marker(src: Source, uid: str) -> Bad:
    value = marker(src)
    where = src.choice(
        (
            "data.k",
            "data",
            "data list",
            "signals",
            "signals.k",
            "client_id",
            "deadline",
            "ext",
            "root",
        )
    )
    if where == "root":
        return Bad(
            f"the request is a type marker {value!r}",
            value,
            "args[0]",
            text_field="request",
            submit_field="request",
            step_field="request",
        )
    req, name = _place(src, uid, where, value)
    return Bad(f"a type marker at {where}", req, name, step_field=_steps(name))


def bad_non_object(src: Source, uid: str) -> Bad:
    value = src.choice((5, -1.5, True, False, None, [], [1, 2], [{"client_id": "a"}], 0))
    return Bad(f"the request is {value!r}", value, "request")


INVALID_JSON = (
    "",
    "{",
    "}",
    "{'client_id': 'a'}",
    '{"client_id": "a",}',
    "[1,]",
    "nul",
    "tru",
    '{"a" 1}',
    "\x00",
    '{"client_id": "a"} x',
    "NaN",
    " ",
    '{"client_id": "a" "b"}',
    "\ufeff{}",
    '{"a": 1}}',
    "[" * 3,
    "{}{}",
)


def bad_json_text(src: Source, uid: str) -> Bad:
    if src.boolean(0.7):
        text = src.choice(INVALID_JSON)
    else:  # a valid request's text, cut short
        req, _ = valid_request(src, uid)
        full = json.dumps(req)
        text = full[: src.integer(0, len(full) - 1)]
    return Bad(f"the JSON text {text[:30]!r}", None, "request", text=text)


def bad_invalid_utf8(src: Source, uid: str) -> Bad:
    enc = Encoded()
    literal = b'"' + src.text(ALNUM, 0, 3).encode() + src.choice(INVALID_UTF8) + b'"'
    where = src.choice(("data.k", "client_id", "pattern_id", "data key"))
    if where == "data key":
        req, _ = valid_request(src, uid, "data")
        req["data"] = {**req["data"], enc.token(literal): 1}
    else:
        req, _ = _place(src, uid, where, enc.token(literal))
    return Bad(
        f"invalid UTF-8 {literal!r} at {where}",
        req,
        "body",
        step_field="body",
        encoded=enc,
        text_ok=False,
    )


EXTRA_NAMES = (
    "extra",
    "Context_id",
    "requestId",
    "data2",
    "__type__",
    "__value__",
    "é",
    "a.b",
    " ",
    "context",
    "CLIENT_ID",
    "signal",
    "request",
    "",
)


def bad_extra(src: Source, uid: str) -> Bad:
    req, _ = valid_request(src, uid)
    name = src.choice(EXTRA_NAMES) if src.boolean(0.7) else "x" + src.unicode(1, 10)
    req[name] = json_value(src, 2)
    where = name or "request"  # pydantic names an unnamed extra field by the document
    return Bad(f"an extra field {name!r}", req, where, step_field=_steps(name) if name else None)


def bad_deadline(src: Source, uid: str) -> Bad:
    req, _ = valid_request(src, uid)
    value = src.choice(
        ("4102444800", "soon", "", True, False, [1], {"a": 1}, 0, -1, -0.5, 0.0, -0.0, "1e10")
    )
    req["deadline"] = value
    return Bad(f"deadline = {value!r}", req, "deadline", step_field=_steps("deadline"))


def bad_sources(src: Source, uid: str) -> Bad:
    pick = src.integer(0, 2)
    req, _ = valid_request(src, uid, "context")
    if pick == 0:
        req["data"] = json_object(src, 2, 1, 3)
        name = "both context_id and data"
    elif pick == 1:
        req.pop("context_id")
        req.pop("data", None)
        name = "neither context_id nor data"
    else:
        req["context_id"] = req["data"] = None
        name = "context_id and data both null"
    return Bad(name, req, "context_id")


def bad_missing(src: Source, uid: str) -> Bad:
    req, _ = valid_request(src, uid)
    key = src.choice(("client_id", "pattern_id"))
    req.pop(key)
    return Bad(f"no {key}", req, key, step_field=_steps(key))


REQUEST_MUTATIONS: dict[str, Callable[[Source, str], Bad]] = {
    "wrong type": bad_wrong_type,
    "bad identifier": bad_identifier,
    "data type": bad_data_type,
    "signals": bad_signals,
    "deep": bad_deep,
    "deep extreme": bad_deep_extreme,
    "huge string": bad_huge_string,
    "oversize": bad_oversize,
    "lone surrogate": bad_surrogate,
    "non-finite": bad_nonfinite,
    "big integer": bad_big_int,
    "type marker": bad_marker,
    "non-object": bad_non_object,
    "invalid JSON text": bad_json_text,
    "invalid UTF-8": bad_invalid_utf8,
    "extra field": bad_extra,
    "deadline": bad_deadline,
    "both or neither": bad_sources,
    "missing field": bad_missing,
}
REQUEST_VIAS = ("send_task", "text", "submit", "raw")


def base_headers(uid: str, task: str = ANALYZE) -> dict[str, Any]:
    """Headers as Celery writes them (protocol 2); ``x-fuzz`` finds the dead letter."""
    return {
        "x-fuzz": uid,
        "lang": "py",
        "task": task,
        "id": uid,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": uid,
        "parent_id": None,
        "argsrepr": "(...)",
        "kwargsrepr": "{}",
        "origin": "fuzz@localhost",
        "ignore_result": False,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }


def _publish_case(
    uid: str,
    kind: str,
    name: str,
    expect: Expect,
    body: bytes,
    *,
    task: str = ANALYZE,
    headers: dict[str, Any] | None = None,
    content_type: str = "application/json",
    content_encoding: str | None = "utf-8",
    context_id: str | None = None,
    inline: bool = False,
) -> Case:
    headers = base_headers(uid, task) if headers is None else headers
    task_id = uid if expect.outcome != NO_ID else None
    return Case(
        kind,
        name,
        expect,
        uid,
        "publish",
        task=task,
        headers=headers,
        content_type=content_type,
        content_encoding=content_encoding,
        body=body,
        task_id=task_id,
        context_id=context_id,
        inline_data=inline,
    )


def request_case(src: Source, force: str | None = None, via: str | None = None) -> Case:
    """A request by task name: valid (30 %) or with one thing wrong (``force``: which)."""
    uid = src.uid()
    if force == "valid" or (force is None and src.boolean(0.3)):
        with src.valid():
            req, ctx = valid_request(src, uid)
        via = via or src.choice(("send_task", "send_task", "text", "submit", "raw"))
        label = f"valid ({'context' if ctx else 'data'})"
        return _request_by(uid, via, label, Expect(VALID), req, Encoded(), ctx)
    mutation = force or src.choice(tuple(REQUEST_MUTATIONS))
    bad = REQUEST_MUTATIONS[mutation](src, uid)
    allowed = ["raw"]
    if bad.text is not None:
        allowed = ["text"]
    elif bad.encoded is None:
        allowed = ["send_task", "text", "submit", "raw"]
    elif bad.text_ok:
        allowed = ["raw", "text"]
    via = via if via in allowed else src.choice(allowed)
    if via == "text":
        text = bad.text
        if text is None:
            text = (bad.encoded or Encoded()).dumps(bad.payload).decode("ascii")
        wanted = bad.text_field or ("request" if len(text) > REQUEST_CAP else bad.field)
        return Case(
            "request",
            f"{mutation}: {bad.name}",
            Expect(BAD, wanted),
            uid,
            "send_task",
            args=[text],
            task_id=uid,
        )
    wanted = bad.submit_field or bad.field if via == "submit" else bad.field
    return _request_by(
        uid,
        via,
        f"{mutation}: {bad.name}",
        Expect(BAD, wanted),
        bad.payload,
        bad.encoded or Encoded(),
        None,
    )


def _request_by(
    uid: str, via: str, name: str, expect: Expect, payload: Any, enc: Encoded, ctx: str | None
) -> Case:
    valid = expect.outcome == VALID
    context_id, inline = (ctx, ctx is None) if valid else (None, False)
    if via == "raw":
        body = b"[[" + enc.dumps(payload) + b"], {}, " + json.dumps(EMBED).encode() + b"]"
        return _publish_case(
            uid, "request", name, expect, body, context_id=context_id, inline=inline
        )
    case = Case("request", name, expect, uid, via, context_id=context_id, inline_data=inline)
    if via == "submit":
        # submit() answers under the request_id (generated when absent: known once sent).
        case.payload = payload
        case.task_id = payload.get("request_id") if isinstance(payload, dict) else None
    else:
        text = via == "text"
        case.via, case.task_id = "send_task", uid
        case.args = [enc.dumps(payload).decode("ascii") if text else payload]
    return case


# -- task messages -------------------------------------------------------------------------------

HEADER_WRONG_TYPES: dict[str, tuple[Any, ...]] = {
    "lang": (5, [], {}),
    "root_id": (5, ["x"]),
    "parent_id": (5.5, {}),
    "group": (5, True),
    "group_index": ("1", 1.5, True),
    "meth": (5, []),
    "shadow": (5, []),
    "eta": (5, [], True),
    "expires": (5.0, {}),
    "retries": ("1", 1.5, True, [0]),
    "timelimit": ("x", 5, {}, True),
    "argsrepr": (5, []),
    "kwargsrepr": ({}, 5),
    "origin": (5, []),
    "ignore_result": ("no", 0, 1, "true"),
    "replaced_task_nesting": ("0", 1.5, False),
    "stamped_headers": ("x", 5, {}),
    "stamps": ([], "x", 5),
}
BAD_TIMELIMITS: tuple[list[Any], ...] = (
    [1, 2, 3],
    [0, None],
    [-1, 5],
    [None, "x"],
    [True, None],
    [],
    [1],
    [None, 0],
    [math.nan, None],
    [math.inf, None],
    [None, -0.5],
)
BAD_DATES = (
    "soon",
    "",
    "2020-13-01T00:00:00",
    "2020-01-01T00:00:00+25:00",
    "tomorrow",
    "1e9",
    "2020-01-01T25:00:00",
    "0000-01-01T00:00:00",
    "10000-01-01T00:00:00",
    "2020-02-30",
)
BAD_TASK_IDS: tuple[Any, ...] = (
    None,
    5,
    "",
    "a b",
    "x" * 256,
    "-x",
    ".x",
    ["x"],
    {"id": "x"},
    "é",
    "a/b",
    "a\tb",
    1.5,
)
UNKNOWN_TASKS = (
    "intent.analyse",
    "intent.nope",
    "INTENT.ANALYZE",
    "intent.analyze ",
    "tasks.pipeline.analyze",
    "x" * 300,
    "intent.analyze\n",
    "intent",
)
BAD_CONTENT_TYPES = (
    "text/plain",
    "application/x-python-serialize",
    "application/JSON",
    "application/json; charset=utf-8",
    "application/x-yaml",
    "application/data",
    "json",
    " application/json",
    "",
)
BAD_ENCODINGS: tuple[str | None, ...] = (
    "latin-1",
    "binary",
    "utf-16",
    "ascii",
    "gzip",
    "utf-8 ",
    None,
)
BAD_BODIES = (
    b"",
    b"5",
    b"null",
    b'"s"',
    b"{}",
    b"[]",
    b"[[], {}]",
    b"[[], {}, {}, 1]",
    b"true",
    b"x",
    b"[[",
    b"\x80\x04not json",
    b"[[1], {}, {}]]",
)
BAD_EMBEDS: tuple[tuple[Any, str], ...] = (
    ("x", "embed"),
    (5, "embed"),
    ([], "embed"),
    (True, "embed"),
    ({"chain": 5}, "embed.chain"),
    ({"callbacks": "x"}, "embed.callbacks"),
    ({"errbacks": [5]}, "embed.errbacks"),
    ({"chain": [{"task": 5}]}, "embed.chain[0]"),
    ({"chain": [{"task": "x", "options": 5}]}, "embed.chain[0]"),
    ({"chord": 5}, "embed.chord"),
    ({"chord": []}, "embed.chord"),
    ({"callbacks": [{"task": None}]}, "embed.callbacks[0]"),
)


def _body(args: Any, kwargs: Any = None, embed: Any = EMBED) -> bytes:
    return json.dumps([args, {} if kwargs is None else kwargs, embed]).encode()


def valid_message(src: Source, uid: str) -> Case:
    with src.valid():
        req, ctx = valid_request(src, uid)
    headers = base_headers(uid)
    body = _body([req])
    encoding = "utf-8"
    form = src.integer(0, 10)
    if form == 0:
        headers["retries"] = src.integer(0, 10)
    elif form == 1:
        headers["timelimit"] = src.choice(([None, None], [120, 100], [60.5, None], [None, 50]))
    elif form == 2:
        headers["eta"] = src.choice(
            (
                "2001-01-01T00:00:00+00:00",
                "2020-02-29T12:00:00",
                "0001-01-01T00:00:00",
                "1970-01-01T00:00:00Z",
            )
        )
    elif form == 3:
        headers["expires"] = src.choice(("2999-01-01T00:00:00+00:00", "9999-12-31T23:59:59"))
    elif form == 4:
        headers["stamped_headers"] = []
    elif form == 5:
        encoding = src.choice(("UTF-8", "utf8", "Utf-8"))
    elif form == 6:
        body = _body([], {"request": req})
    elif form == 7:
        body = _body([req], {}, src.choice((None, {})))
    elif form == 8:
        headers = {"x-fuzz": uid, "task": ANALYZE, "id": uid}
    elif form == 9:
        headers["x-custom"] = json_value(src, 3)
    return _publish_case(
        uid,
        "message",
        f"valid message (form {form})",
        Expect(VALID),
        body,
        headers=headers,
        content_encoding=encoding,
        context_id=ctx,
        inline=ctx is None,
    )


def _bad_step(src: Source, uid: str) -> tuple[str, bytes, str, Encoded]:
    """A step's message with a bad analysis: (name, body, field)."""
    if src.boolean(0.3):
        req, _ = valid_request(src, uid)
        analysis, name, where = src.choice(
            (
                (5, "the analysis is 5", "analysis"),
                ({}, "an analysis without its request", "request"),
                ({"request": req, "bogus": 1}, "an extra field in the analysis", "bogus"),
                ({"request": req, "retries": "x"}, "analysis retries 'x'", "retries"),
                ({"request": req, "status": 5}, "analysis status 5", "status"),
                ("{not json", "an analysis text that is no JSON", "analysis"),
            )
        )
        return name, _body([analysis]), where, Encoded()
    candidates = (
        "wrong type",
        "bad identifier",
        "deep",
        "huge string",
        "lone surrogate",
        "non-finite",
        "big integer",
        "type marker",
        "extra field",
        "deadline",
        "missing field",
        "signals",
        "invalid UTF-8",
        "deep extreme",
    )
    while True:
        mutation = src.choice(candidates)
        bad = REQUEST_MUTATIONS[mutation](src, uid)
        if bad.step_field is not None:
            break
    enc = bad.encoded or Encoded()
    body = b'[[{"request": ' + enc.dumps(bad.payload) + b"}], {}, " + json.dumps(EMBED).encode()
    return f"{mutation}: {bad.name}", body + b"]", bad.step_field, enc


MESSAGE_FAULTS = (
    "no id",
    "task",
    "header type",
    "timelimit",
    "date",
    "stamped",
    "retries",
    "content type",
    "encoding",
    "body",
    "args",
    "kwargs",
    "embed",
    "arguments",
    "headers deep",
    "header string",
    "header number",
    "header marker",
    "header surrogate",
    "step",
    "kwargs marker",
)


def message_case(src: Source, force: str | None = None, value: Any = None) -> Case:
    """A raw task message: valid (25 %), or one thing wrong in it (``value``: the type
    marker of a "header marker" case)."""
    uid = src.uid()
    if force == "valid" or (force is None and src.boolean(0.25)):
        return valid_message(src, uid)
    kind = force or src.choice(MESSAGE_FAULTS)
    req, _ = valid_request(src, uid, "context")
    headers = base_headers(uid)
    body = _body([req])
    ctype = "application/json"
    encoding: str | None = "utf-8"
    task = ANALYZE
    if kind == "no id":
        value = src.choice((*BAD_TASK_IDS, "missing", "newline"))
        if value == "missing":
            headers.pop("id")
        elif value == "newline":
            value = uid + "\n"  # a trailing newline: no character a task id may hold
        else:
            value = f"{uid} x" if value == "a b" else value
        if value != "missing":
            headers["id"] = value
        case = _publish_case(
            uid, "message", f"task id {value!r}", Expect(NO_ID, "headers.id"), body, headers=headers
        )
        case.stray_id = value if isinstance(value, str) and value != "missing" else None
        return case
    if kind == "task":
        value = src.choice((*UNKNOWN_TASKS, None, 5, "", [], "missing"))
        if value == "missing":
            headers.pop("task")
        else:
            headers["task"] = value
        name, where = f"task {value!r}", "headers.task"
    elif kind == "header type":
        key = src.choice(tuple(HEADER_WRONG_TYPES))
        value = src.choice(HEADER_WRONG_TYPES[key])
        headers[key] = value
        name, where = f"header {key} = {value!r}", f"headers.{key}"
    elif kind == "timelimit":
        value = src.choice(BAD_TIMELIMITS)
        headers["timelimit"] = value
        name, where = f"timelimit {value!r}", "headers.timelimit"
    elif kind == "date":
        key, value = src.choice(("eta", "expires")), src.choice(BAD_DATES)
        headers[key] = value
        name, where = f"{key} {value!r}", f"headers.{key}"
    elif kind == "stamped":
        value = src.choice(([1], [None], ["a", 5], [[]]))
        headers["stamped_headers"] = value
        name, where = f"stamped_headers {value!r}", "headers.stamped_headers"
    elif kind == "retries":
        value = src.choice((-1, -100, -(10**6)))
        headers["retries"] = value
        name, where = f"retries {value}", "headers.retries"
    elif kind == "content type":
        ctype = src.choice(BAD_CONTENT_TYPES)
        name, where = f"content type {ctype!r}", "content_type"
    elif kind == "encoding":
        encoding = src.choice(BAD_ENCODINGS)
        name, where = f"content encoding {encoding!r}", "content_encoding"
    elif kind == "body":
        pick = src.integer(0, 3)
        if pick == 0:
            body = src.choice(BAD_BODIES)
        elif pick == 1:
            body = b'[[{"client_id": "' + src.choice(INVALID_UTF8) + b'"}], {}, {}]'
        elif pick == 2:
            n = src.integer(1500, 20000)
            body = b"[" * n + b"]" * n
        else:
            body = json.dumps([[req], {}, EMBED]).encode()[: src.integer(1, 40)]
        name, where = f"body {body[:30]!r}", "body"
    elif kind == "args":
        value = src.choice((5, {}, "x", None, {"request": req}))
        body = _body(value)
        name, where = f"args {str(value)[:30]}", "args"
    elif kind == "kwargs":
        value = src.choice(([], 5, "x", None, [req]))
        body = (
            _body([req], value) if value is not None else json.dumps([[req], None, EMBED]).encode()
        )
        name, where = f"kwargs {str(value)[:30]}", "kwargs"
    elif kind == "embed":
        value, where = src.choice(BAD_EMBEDS)
        body = _body([req], {}, value)
        name = f"embed {value!r}"
    elif kind == "arguments":
        args, kwargs, name = src.choice(
            (
                ([], {}, "no arguments"),
                ([req, req], {}, "two arguments"),
                ([req], {"nope": 1}, "an unknown keyword"),
                ([], {"request": req, "x": 1}, "an extra keyword"),
                ([req], {"request": req}, "the request twice"),
            )
        )
        body, where = _body(args, kwargs), "args"
    elif kind == "kwargs marker":
        body, where = _body([], {"request": marker(src)}), "kwargs.request"
        name = "kwargs.request is a type marker"
    elif kind == "headers deep":
        levels = src.choice((8, 9, src.integer(8, 60), src.integer(8, 400)))
        value, steps = chain_of(src, levels)
        headers["x-deep"] = value
        name, where = f"a header nested {levels} deep", field_of("headers.x-deep", steps[:7])
    elif kind == "header string":
        key = src.choice(("argsrepr", "kwargsrepr", "origin", "x-long"))
        n = src.integer(8193, 30000)
        headers[key] = "h" * n
        name, where = f"header {key} of {n} characters", f"headers.{key}"
    elif kind == "header number":
        value = src.choice((math.nan, math.inf, -math.inf, int("9" * src.integer(33, 100))))
        headers["x-n"] = value
        name, where = f"header x-n = {str(value)[:20]}", "headers.x-n"
    elif kind == "header marker":
        value = marker(src) if value is None else value
        headers["x-m"] = value
        name, where = f"a header that is a type marker {value!r}", "headers.x-m"
    elif kind == "header surrogate":
        value = lone_surrogate_text(src)
        headers["x-s"] = value
        name, where = f"a header with a lone surrogate {value!r}", "headers.x-s"
    else:  # step
        task = src.choice(STEPS)
        headers = base_headers(uid, task)
        name, body, where, _ = _bad_step(src, uid)
        name = f"{task}: {name}"
    return _publish_case(
        uid,
        "message",
        name,
        Expect(BAD, where),
        body,
        task=task,
        headers=headers,
        content_type=ctype,
        content_encoding=encoding,
    )


# -- broker envelopes ---------------------------------------------------------------------------


def envelope_of(uid: str, body: str, **changes: Any) -> dict[str, Any]:
    """A kombu envelope as the Redis transport writes it (``x-fuzz`` for the dead letter)."""
    raw: dict[str, Any] = {
        "x-fuzz": uid,
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"x-fuzz": uid, "lang": "py", "task": ANALYZE, "id": uid},
        "properties": {
            "delivery_tag": f"tag-{uid}",
            "body_encoding": "utf-8",
            "delivery_info": {"exchange": "", "routing_key": "intent"},
            "priority": 0,
        },
    }
    raw.update(changes)
    return raw


def _lpush(uid: str, name: str, expect: Expect, raw: bytes, **more: Any) -> Case:
    return Case("envelope", name, expect, uid, "lpush", raw=raw, **more)


ENVELOPE_FAULTS = (
    "not json",
    "json scalar",
    "json list",
    "envelope",
    "body encoding",
    "gate",
    "gate no id",
    "deep",
    "big int",
    "header marker",
)


def envelope_case(src: Source, force: str | None = None, value: Any = None) -> Case:
    """An item on the queue's list: a valid envelope (25 %), or something else (``value``:
    the type marker of a "header marker" case)."""
    uid = src.uid()
    valid = force == "valid" or (force is None and src.boolean(0.25))
    with src.valid() if valid else contextlib.nullcontext():
        req, ctx = valid_request(src, uid, "context")
    good = _body([req]).decode()
    if valid:
        env = envelope_of(uid, good)
        form = src.integer(0, 4)
        if form == 1:
            env["properties"]["body_encoding"] = "base64"
            env["body"] = base64.b64encode(good.encode()).decode()
        elif form == 2:
            del env["properties"]["body_encoding"]
        elif form == 3:
            env["properties"]["delivery_tag"] = src.integer(0, 10**9)
        elif form == 4:
            del env["properties"]["priority"]
        raw = json.dumps(env).encode()
        return _lpush(
            uid, f"valid envelope (form {form})", Expect(VALID), raw, task_id=uid, context_id=ctx
        )
    kind = force or src.choice(ENVELOPE_FAULTS)
    dead = "envelope"
    if kind == "not json":
        raw = src.choice(
            (b"garbage", b"", b"{", b"{'a': 1}", b"[1,", b"\x00", b"x" * 100, b'{"a": 1}}')
        )
        if src.boolean(0.3):  # bytes that are no UTF-8 (kombu reads them replaced)
            raw = b'{"x-fuzz": "' + uid.encode() + b'", "x": "' + src.choice(INVALID_UTF8) + b'"}'
            return _lpush(uid, f"not UTF-8 {raw[-12:]!r}", Expect(NO_ID, dead), raw)
        reason = "JSONDecodeError"
        return _lpush(
            uid, f"not JSON {raw[:20]!r}", Expect(NO_ID, dead, reason), raw, attributable=False
        )
    if kind == "json scalar":
        raw = src.choice((b"5", b"null", b"true", b"-1.5", b"0"))
        return _lpush(
            uid,
            f"the JSON {raw!r}",
            Expect(NO_ID, dead, "must be an object"),
            raw,
            attributable=False,
        )
    if kind == "json list":
        raw = json.dumps(src.choice(([uid], [uid, 1], f"{uid} text", [{"x-fuzz": uid}]))).encode()
        return _lpush(uid, f"the JSON {raw[:40]!r}", Expect(NO_ID, dead), raw)
    if kind == "envelope":
        env = envelope_of(uid, good)
        name, change = src.choice(
            (
                ("no properties", lambda e: e.pop("properties")),
                ("properties null", lambda e: e.update(properties=None)),
                ("properties a list", lambda e: e.update(properties=[1])),
                ("properties a string", lambda e: e.update(properties="x")),
                ("no delivery tag", lambda e: e["properties"].pop("delivery_tag")),
                ("delivery tag a list", lambda e: e["properties"].update(delivery_tag=[1])),
                ("delivery tag null", lambda e: e["properties"].update(delivery_tag=None)),
                ("delivery_info a list", lambda e: e["properties"].update(delivery_info=[])),
                ("no delivery_info", lambda e: e["properties"].pop("delivery_info")),
                ("delivery_info empty", lambda e: e["properties"].update(delivery_info={})),
                ("body encoding rot13", lambda e: e["properties"].update(body_encoding="rot13")),
                ("body encoding 5", lambda e: e["properties"].update(body_encoding=5)),
                ("headers a list", lambda e: e.update(headers=["not", "an", "object"])),
                ("headers a string", lambda e: e.update(headers="x")),
                ("headers 5", lambda e: e.update(headers=5)),
                ("body 5", lambda e: e.update(body=5)),
                ("body a list", lambda e: e.update(body=[good])),
                ("body an object", lambda e: e.update(body={"a": 1})),
                ("content-type 5", lambda e: e.update({"content-type": 5})),
                ("content-encoding a list", lambda e: e.update({"content-encoding": []})),
            )
        )
        change(env)
        return _lpush(uid, f"envelope: {name}", Expect(NO_ID, dead), json.dumps(env).encode())
    if kind == "body encoding":
        env = envelope_of(uid, src.choice(("a", "abcde", "abcdefghi")))
        env["properties"]["body_encoding"] = "base64"
        return _lpush(
            uid,
            f"a base64 body that is not: {env['body']!r}",
            Expect(NO_ID, dead),
            json.dumps(env).encode(),
        )
    if kind == "gate no id":
        env = envelope_of(uid, good)
        value = src.choice(("missing", None, 5, "", "a b"))
        if value == "missing":
            del env["headers"]["id"]
        else:
            env["headers"]["id"] = value
        case = _lpush(
            uid,
            f"envelope with task id {value!r}",
            Expect(NO_ID, "headers.id"),
            json.dumps(env).encode(),
        )
        case.stray_id = value if isinstance(value, str) and value not in ("missing",) else None
        return case
    if kind == "deep":
        levels = src.integer(1500, 20000)
        text = json.dumps(envelope_of(uid, good)).encode()
        raw = text[:-1] + b', "x-deep": ' + b"[" * levels + b"]" * levels + b"}"
        return _lpush(
            uid,
            f"an envelope nested {levels} deep",
            Expect(NO_ID, dead, "Recursion"),
            raw,
            attributable=False,
        )
    if kind == "big int":
        digits = src.integer(4301, 10000)
        text = json.dumps(envelope_of(uid, good)).encode()
        raw = text[:-1] + b', "x-big": ' + b"9" * digits + b"}"
        return _lpush(
            uid,
            f"an envelope with a {digits}-digit integer",
            Expect(NO_ID, dead, "limit"),
            raw,
            attributable=False,
        )
    if kind == "header marker":
        # kombu's envelope decoder revives (or chokes on) type markers in the headers.
        if value is None:
            value = src.choice((*HEADER_MARKERS, marker(src)))
        env = envelope_of(uid, good)
        env["headers"]["x-m"] = value
        return _lpush(
            uid,
            f"a header that is a type marker {value!r}",
            Expect(BAD, "headers.x-m"),
            json.dumps(env).encode(),
            task_id=uid,
        )
    # gate: a well-formed envelope the worker's gate refuses, under its id
    env = envelope_of(uid, good)
    pick = src.integer(0, 5)
    if pick == 0:
        del env["headers"]["task"]
        name, where = "no task", "headers.task"
    elif pick == 1:
        env["content-type"] = src.choice((None, "text/plain"))
        name, where = f"content-type {env['content-type']!r}", "content_type"
    elif pick == 2:
        env["properties"]["body_encoding"] = "base64"
        env["body"] = base64.b64encode(src.choice((b"\xff\xfe", b"not json", b"[1]"))).decode()
        name, where = f"a base64 body of no message {env['body']!r}", "body"
    elif pick == 3:
        env["body"] = ""
        name, where = "an empty body", "body"
    elif pick == 4:
        levels = src.integer(8, 300)
        value, steps = chain_of(src, levels)
        env["headers"]["x-deep"] = value
        name, where = f"a header nested {levels} deep", field_of("headers.x-deep", steps[:7])
    else:
        env["headers"]["x-s"] = lone_surrogate_text(src)
        name, where = f"a header with a lone surrogate {env['headers']['x-s']!r}", "headers.x-s"
    return _lpush(
        uid, f"envelope: {name}", Expect(BAD, where), json.dumps(env).encode(), task_id=uid
    )


# -- event stream entries -----------------------------------------------------------------------


def _utf8(value: str) -> bytes:
    return value.encode("utf-8")


def valid_event_fields(src: Source, uid: str) -> dict[str, str]:
    fields = {
        "id": f"evt_{uid}",
        "type": src.choice(EVENT_TYPES),
        "pattern_id": src.unicode(0, 20) if src.boolean(0.3) else identifier(src),
        "request_id": f"req-{uid}",
        "timestamp": src.choice(("2025-01-01T00:00:00.000Z", src.unicode(0, 30))),
    }
    if src.boolean(0.8):
        fields["source"] = src.choice(("intent_service", src.unicode(0, 20)))
    if src.boolean(0.8):
        fields["schema_version"] = "1"
    if src.boolean(0.9):
        fields["data"] = json.dumps(json_object(src, 4, 0, 5), ensure_ascii=src.boolean())
    return fields


EVENT_FAULTS = (
    "missing",
    "extra",
    "data text",
    "data shape",
    "data deep",
    "data deep extreme",
    "data number",
    "data marker",
    "data big int",
    "data surrogate",
    "name bytes",
    "value bytes",
    "unknown type",
    "schema version",
    "data huge",
)


def event_case(src: Source, force: str | None = None) -> Case:
    """An entry on the event stream: a valid event (30 %), or a malformed one."""
    uid = src.uid()
    valid = force == "valid" or (force is None and src.boolean(0.3))
    with src.valid() if valid else contextlib.nullcontext():
        fields = valid_event_fields(src, uid)
    raw = {_utf8(k): _utf8(v) for k, v in fields.items()}
    if valid:
        return Case("event", "valid event", Expect(VALID), uid, "xadd", fields=raw)
    kind = force or src.choice(EVENT_FAULTS)
    reason = "malformed"
    data: bytes | None = None
    if kind == "missing":
        key = src.choice(("id", "type", "pattern_id", "request_id", "timestamp"))
        raw.pop(_utf8(key))
        name, where = f"no {key}", key
    elif kind == "extra":
        key = src.choice(("foo", "Data", "event_id", "__type__", "x" + src.text(IDENT, 1, 8)))
        raw[_utf8(key)] = b"1"
        name, where = f"an extra field {key!r}", key
    elif kind == "data text":
        data = src.choice((b"{not json", b"", b"{'a': 1}", b"[1,", b'{"a":1}x', b"\x00", b"{"))
        name, where = f"data {data!r}", "data"
    elif kind == "data shape":
        data = src.choice((b"[1, 2]", b"5", b"null", b'"x"', b"true", b"[]"))
        name, where = f"data {data!r}", "data"
    elif kind == "data deep":
        levels = src.choice((32, 33, src.integer(32, 100), src.integer(32, 500)))
        value, _ = chain_of(src, levels)
        data = json.dumps({"d": value}).encode()
        name, where = f"data nested {levels + 1} deep", "data"
    elif kind == "data deep extreme":
        levels = src.integer(1500, 20000)
        data = b"[" * levels + b"]" * levels
        name, where = f"data nested {levels} deep", "data"
    elif kind == "data number":
        literal = src.choice((b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1E+999"))
        data = b'{"n": ' + literal + b"}"
        name, where = f"data with {literal.decode()}", "data"
    elif kind == "data marker":
        data = json.dumps({"m": marker(src)}).encode()
        name, where = "data with a type marker", "data"
    elif kind == "data big int":
        digits = src.choice((33, src.integer(33, 4000), src.integer(4301, 10000)))
        data = b'{"n": ' + b"9" * digits + b"}"
        name, where = f"data with a {digits}-digit integer", "data"
    elif kind == "data surrogate":
        text = lone_surrogate_text(src)
        body = {text: 1} if src.boolean() else {"s": text}
        data = json.dumps(body).encode()
        name, where = f"data with a lone surrogate {data[:40]!r}", "data"
    elif kind == "name bytes":
        raw[b"pattern" + src.choice(INVALID_UTF8)] = b"p"
        name, where = "a field name that is not UTF-8", "a field name"
    elif kind == "value bytes":
        key = src.choice(("pattern_id", "type", "data", "id", "source", "timestamp"))
        raw[_utf8(key)] = src.text(ALNUM, 0, 3).encode() + src.choice(INVALID_UTF8)
        name, where = f"field {key} not UTF-8", f"field {key!r}"
    elif kind == "unknown type":
        value = src.choice(
            ("order_shipped", "", "PATTERN_DETECTED", "pattern_detected ", "x" * 200, "détecté")
        )
        raw[b"type"] = _utf8(value)
        name, where, reason = f"type {value[:30]!r}", "unknown event type", "unknown_type"
    elif kind == "schema version":
        # Not an integer (any integer is a version: a newer producer's, say).
        value = src.choice(("one", "", "1.5", "v1", "true", "[1]", "1e3", "0x1"))
        raw[b"schema_version"] = _utf8(value)
        name, where = f"schema_version {value!r}", "schema_version"
    else:  # data huge: over the 1 MiB an entry's data may hold
        data = b'{"s": "' + b"z" * src.integer(1 << 20, (1 << 20) + 5000) + b'"}'
        name, where = f"data of {len(data)} bytes", "data"
    if data is not None:
        raw[b"data"] = data
    return Case("event", name, Expect(BAD, where, reason), uid, "xadd", fields=raw)


# -- mixing --------------------------------------------------------------------------------------

BUILDERS: dict[str, Callable[..., Case]] = {
    "request": request_case,
    "message": message_case,
    "envelope": envelope_case,
    "event": event_case,
}
WEIGHTS = (("request", 7), ("message", 6), ("envelope", 3), ("event", 4))
_POOL = [kind for kind, weight in WEIGHTS for _ in range(weight)]


def any_case(src: Source, valid_only: bool = False) -> Case:
    kind = src.choice(_POOL)
    return BUILDERS[kind](src, "valid") if valid_only else BUILDERS[kind](src)


def generate(
    n: int, seed: int, uids: Uids | None = None, valid_only: bool = False
) -> Iterator[Case]:
    """``n`` cases from a seeded generator (no hypothesis needed); ``valid_only``: valid
    cases alone, of every kind in the same proportions."""
    src = RandomSource(random.Random(seed), uids)
    for _ in range(n):
        yield any_case(src, valid_only)


def coverage(seed: int, uids: Uids | None = None) -> list[Case]:
    """Every kind of thing wrong, once each, and valid cases of every form."""
    src = RandomSource(random.Random(seed), uids)
    out = [request_case(src, "valid", via) for via in REQUEST_VIAS]
    out += [request_case(src, m) for m in REQUEST_MUTATIONS]
    for kind, faults in (
        ("message", MESSAGE_FAULTS),
        ("envelope", ENVELOPE_FAULTS),
        ("event", EVENT_FAULTS),
    ):
        out += [BUILDERS[kind](src, force) for force in ("valid", *faults)]
    out += [message_case(src, "header marker", m) for m in HEADER_MARKERS]
    out += [envelope_case(src, "header marker", m) for m in HEADER_MARKERS]
    # Integers at the codec's bound (32 digits) are valid.
    for via, number in (("send_task", 10**32 - 1), ("submit", -(10**32 - 1)), ("raw", 9 * 10**31)):
        uid = src.uid()
        with src.valid():
            req, _ = valid_request(src, uid, "data")
        req["data"] = {**req["data"], "n": number}
        out.append(
            _request_by(uid, via, f"valid: data.n = {number}", Expect(VALID), req, Encoded(), None)
        )
    return out


def cases(uids: Uids | None = None) -> Any:
    """All four kinds, mixed, as a hypothesis strategy."""
    from hypothesis import strategies as st

    @st.composite
    def strategy(draw: Any) -> Case:
        return any_case(DrawSource(draw, uids))

    return strategy()


# == running cases ==============================================================================


@dataclass
class Verdict:
    case: Case
    outcome: str  # completed, refused, dead_lettered, ran, hung, lost, unsent, stopped...
    ok: bool  # the outcome is the one expected
    detail: str = ""  # what happened, when it was not what was expected
    field: str | None = None  # what the refusal (or dead letter) named
    blame: list[str] = dataclasses.field(default_factory=list)  # a downstream call, a retry

    @property
    def passed(self) -> bool:
        return self.ok and not self.blame

    def line(self) -> str:
        return f"{self.case!r}: {self.outcome}: {'; '.join([self.detail, *self.blame])}"


@dataclass
class Death:
    what: str  # "worker exited (code 1)", "pool process 123 replaced", "consumer stopped: ..."
    in_flight: list[Case]
    log: str = ""  # the worker's critical log line of it
    culprit: Case | None = None


@dataclass
class Results:
    verdicts: list[Verdict] = field(default_factory=list)
    deaths: list[Death] = field(default_factory=list)
    consumer_deaths: list[Death] = field(default_factory=list)
    downstream: list[str] = field(default_factory=list)  # calls no completed valid case made
    retries: list[str] = field(default_factory=list)  # worker log lines of retries, deferrals
    worker_errors: list[str] = field(default_factory=list)  # errors of the refusal machinery
    unattributed: list[str] = field(default_factory=list)  # dead letters of no case
    seconds: float = 0.0

    def failures(self) -> list[Verdict]:
        return [v for v in self.verdicts if not v.passed]


def names(text: str, place: str) -> bool:
    """Whether ``text`` (a field, or an error that opens with one) names ``place`` or a
    place inside it: ``data.items[3]`` is in ``data``, ``request_id`` is not in ``request``."""
    return text == place or (text.startswith(place) and text[len(place)] in ".[: ")


class Target:
    """What a run talks to: the Celery app and Redis, the worker (restarted when it dies),
    the event consumer (in a thread here), the reference services' request logs."""

    def __init__(
        self,
        redis_url: str,
        new_worker: Callable[[], WorkerProcess],
        context_url: str,
        prediction_url: str,
        log_path: str | None = None,
    ):
        import redis

        from intent.keys import Keys
        from intent.settings import get_settings
        from tasks.app import app

        self.app = app
        self.redis_url = redis_url
        self.redis = redis.Redis.from_url(redis_url)
        settings = get_settings()
        self.keys = Keys(settings.key_prefix)
        self.queue = settings.queue
        self.log_path = log_path
        self._new_worker = new_worker
        self.workers: list[WorkerProcess] = []  # every worker started, the current one last
        self.context_url, self.prediction_url = context_url, prediction_url
        self.group = f"fuzz-{uuid.uuid4().hex[:8]}"
        self.consumer_name = "fuzz-consumer"
        self.handled: list[str] = []  # stream ids the consumer's handler ran, in order
        self.consumer: Any = None
        self.consumer_thread: threading.Thread | None = None
        self.consumer_error: BaseException | None = None
        self._producer: Any = None
        self._connection: Any = None

    @property
    def worker(self) -> WorkerProcess:
        return self.workers[-1]

    def start(self) -> Target:
        self._start_worker()
        self.redis.xgroup_create(self.keys.events_stream, self.group, "$", mkstream=True)
        self.start_consumer()
        return self

    def _start_worker(self) -> None:
        worker = self._new_worker()
        try:
            worker.wait_ready()
        except BaseException:
            _bury(worker)
            raise
        self.workers.append(worker)

    def restart_worker(self, attempts: int = 20) -> list[str]:
        """A new worker in place of the current one; returns how each attempt that died
        before answering a ping died (another message that kills it was queued)."""
        _bury(self.worker)
        failures: list[str] = []
        for _ in range(attempts):
            try:
                self._start_worker()
                return failures
            except RuntimeError as exc:
                failures.append(str(exc))
        raise RuntimeError(f"the worker died {attempts} times in a row starting: {failures[-1]}")

    def start_consumer(self, batch_size: int = 100) -> None:
        import redis

        from intent.events import ConsumerConfig, EventConsumer, EventHandler, current_delivery
        from intent.models import IntentEvent

        def record(event: Any) -> None:
            delivery = current_delivery()
            self.handled.append(delivery.entry_id if delivery is not None else "")

        handler = EventHandler()
        for kind in IntentEvent:
            handler.register(kind, record)
        # As the consumer's own command makes its client: undecodable bytes kept as such.
        client = redis.Redis.from_url(
            self.redis_url,
            decode_responses=True,
            encoding_errors="surrogateescape",
            socket_timeout=5,
        )
        config = ConsumerConfig(
            group=self.group,
            consumer=self.consumer_name,
            batch_size=batch_size,
            block=0.1,
            start_id="$",
            unknown_type="dead_letter",
            claim_idle=30.0,
            retry_backoff=0.05,
            retry_backoff_max=0.2,
            shutdown_grace=0.0,
        )
        consumer = self.consumer = EventConsumer(client, self.keys, handler, config)
        self.consumer_error = None

        def run() -> None:
            try:
                consumer.run(install_signal_handlers=False)
            except BaseException as exc:
                self.consumer_error = exc

        self.consumer_thread = threading.Thread(target=run, daemon=True, name="fuzz-consumer")
        self.consumer_thread.start()

    def consumer_alive(self) -> bool:
        return self.consumer_thread is not None and self.consumer_thread.is_alive()

    def stop_consumer(self) -> None:
        if self.consumer is not None:
            self.consumer.stop()
        if self.consumer_thread is not None:
            self.consumer_thread.join(15)
        if self.consumer is not None:
            self.consumer.client.close()

    def consumer_pending(self) -> list[str]:
        rows = _rows(
            self.redis.xpending_range(
                self.keys.events_stream, self.group, "-", "+", 10000, self.consumer_name
            )
        )
        return sorted((_text(r["message_id"]) for r in rows), key=_stream_order)

    def close(self) -> None:
        self.stop_consumer()
        if self._connection is not None:
            self._connection.release()
        for worker in self.workers:
            _bury(worker)
        self.redis.close()

    def publish(self, case: Case) -> None:
        from kombu import Producer

        if self._producer is None:
            q = self.app.amqp.default_queue
            self._connection = self.app.connection_for_write()
            self._producer = Producer(
                self._connection, exchange=q.exchange, routing_key=q.routing_key
            )
        self._producer.publish(
            case.body,
            content_type=case.content_type,
            content_encoding=case.content_encoding,
            headers=case.headers,
            declare=[],
            serializer=None,
            retry=True,
        )

    def requests_log(self) -> list[dict[str, Any]]:
        from intent.reference import ReferenceControl

        out = []
        for url in (self.context_url, self.prediction_url):
            out += [
                r
                for r in ReferenceControl(url).requests_log()
                if str(r["path"]).startswith("/api/")
            ]
        return out

    def clear_requests_log(self) -> None:
        from intent.reference import ReferenceControl

        for url in (self.context_url, self.prediction_url):
            ReferenceControl(url).clear_requests()

    def ping(self) -> bool:
        return bool(self.app.control.ping(destination=[self.worker.name], timeout=2))


def _bury(worker: WorkerProcess) -> None:
    """Stop a worker, and kill what is left of its process group: the pool processes of a
    main process that died."""
    worker.stop()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(worker.process.pid, signal.SIGKILL)


def _rows(reply: Any) -> list[Any]:
    """A Redis reply that is a list (redis-py types every reply as maybe awaitable)."""
    return cast("list[Any]", reply)


def _text(value: Any) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)


def _stream_order(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


class Monitor(threading.Thread):
    """Watches the worker's main process and pool processes; reports every change."""

    def __init__(self, target: Target, interval: float = 0.05):
        super().__init__(daemon=True, name="fuzz-monitor")
        self.target = target
        self.interval = interval
        self.events: queue.Queue[tuple[str, bool]] = queue.Queue()  # (what, the main exited)
        self._halt = threading.Event()

    def run(self) -> None:
        watched: WorkerProcess | None = None
        kids: set[int] = set()
        alive = True
        while not self._halt.is_set():
            worker = self.target.worker
            if worker is not watched:  # started (or restarted) since the last look
                watched, kids, alive = worker, set(worker.child_pids()), True
            elif alive:
                code = worker.process.poll()
                if code is not None:
                    alive = False
                    self.events.put((f"worker exited (code {code})", True))
                else:
                    now = set(worker.child_pids())
                    if kids and now and now != kids:
                        for pid in sorted(kids - now):
                            self.events.put((f"pool process {pid} replaced", False))
                    kids = now or kids
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


@dataclass
class _Pending:
    case: Case
    deadline: float


class Engine:
    """Sends cases (``window`` in flight at once), waits for each outcome, and judges it.

    ``probing``: a culprit's probe, which only watches for a death (the first ends it)."""

    def __init__(
        self,
        target: Target,
        window: int = 100,
        answer_timeout: float = 30.0,
        valid_timeout: float = 120.0,
        find_culprits: int = 8,
        probing: bool = False,
    ):
        self.t = target
        self.window = window
        self.answer_timeout = answer_timeout
        self.valid_timeout = valid_timeout
        self.find_culprits = find_culprits
        self.probing = probing
        self.results = Results()
        self.backend = target.app.backend
        self._tasks: dict[str, _Pending] = {}  # task id -> awaiting its answer
        self._marked: dict[str, _Pending] = {}  # uid -> awaiting its dead letter (no id)
        self._blind: list[_Pending] = []  # awaiting a dead letter without its uid
        self._events: dict[str, _Pending] = {}  # stream id -> awaiting handling / dead letter
        self._by_uid: dict[str, Case] = {}
        self._judged: dict[str, Verdict] = {}  # uid -> its verdict
        self._dead_reasons: dict[str, str] = {}  # uid -> the reason of its dead letter
        self._blind_letters: list[tuple[str, str]] = []  # (field, reason) of letters of no uid
        self._handled_seen = len(target.handled)
        self._last_dead = self._last_event_dead = "0"
        self._log_offset = 0
        self._died = False
        self._criticals = 0

    # -- running ---------------------------------------------------------------------------
    def run(self, cases: Iterable[Case]) -> Results:
        started = time.monotonic()
        t = self.t
        self._last_dead = _last_id(t.redis, t.keys.dead_tasks)
        self._last_event_dead = _last_id(t.redis, t.keys.dead_letters)
        self._log_offset = _log_size(t.log_path)
        monitor = Monitor(t)
        monitor.start()
        try:
            source = iter(cases)
            exhausted = False
            while True:
                while not exhausted and self._in_flight() < self.window:
                    case = next(source, None)
                    if case is None:
                        exhausted = True
                        break
                    self._send(case)
                if self.probing and self._died:
                    break
                if exhausted and not self._in_flight() and not self._probe_waits():
                    break
                progressed = self._poll()
                self._watch(monitor)
                if not progressed:
                    time.sleep(0.02)
            if not self.probing:
                self._settle_blind()
        finally:
            monitor.stop()
        if not self.probing:
            self._after()
        self.results.seconds = time.monotonic() - started
        return self.results

    def _probe_waits(self) -> bool:
        """A probe of an item without an answer waits out its timeout for a death."""
        now = time.monotonic()
        return self.probing and any(now < p.deadline for p in self._blind)

    def _in_flight(self) -> int:
        # Items whose dead letters cannot be told apart are settled at the end, by count.
        return len(self._tasks) + len(self._marked) + len(self._events)

    def _send(self, case: Case) -> None:
        t = self.t
        self._by_uid[case.uid] = case
        wait = self.valid_timeout if case.expect.outcome == VALID else self.answer_timeout
        pending = _Pending(case, time.monotonic() + wait)
        try:
            if case.via == "send_task":
                t.app.send_task(case.task, args=case.args, task_id=case.task_id)
            elif case.via == "submit":
                from tasks import submit

                try:
                    case.task_id = submit(case.payload).id
                except Exception as exc:  # refused in this process: the answer itself
                    self._judge_answer(case, "FAILURE", exc)
                    return
            elif case.via == "publish":
                t.publish(case)
            elif case.via == "lpush":
                t.redis.lpush(t.queue, cast(bytes, case.raw))
            else:
                stream_id = t.redis.xadd(t.keys.events_stream, cast(Any, case.fields))
                self._events[_text(stream_id)] = pending
                return
        except Exception as exc:
            self._verdict(case, "unsent", False, f"could not be sent: {type(exc).__name__}: {exc}")
            return
        if case.task_id is not None:
            self._tasks[case.task_id] = pending
        elif case.attributable:
            self._marked[case.uid] = pending
        else:
            self._blind.append(pending)

    def _verdict(
        self, case: Case, outcome: str, ok: bool, detail: str = "", field: str | None = None
    ) -> None:
        if case.uid in self._judged:
            return
        verdict = Verdict(case, outcome, ok, detail, field)
        self._judged[case.uid] = verdict
        self.results.verdicts.append(verdict)

    # -- polling ---------------------------------------------------------------------------
    def _poll(self) -> bool:
        progressed = self._poll_answers()
        progressed |= self._poll_dead_tasks()
        progressed |= self._poll_events()
        now = time.monotonic()
        for store in (self._tasks, self._marked, self._events):
            for key, p in list(store.items()):
                if now > p.deadline:
                    del store[key]
                    self._timed_out(p.case)
                    progressed = True
        return progressed

    def _poll_answers(self) -> bool:
        ids = list(self._tasks)
        progressed = False
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            keys = [self.backend.get_key_for_task(i) for i in chunk]
            for task_id, raw in zip(chunk, _rows(self.t.redis.mget(keys)), strict=True):
                if raw is None:
                    continue
                case = self._tasks[task_id].case
                try:
                    meta = self.backend.decode_result(raw)
                except Exception as exc:
                    del self._tasks[task_id]
                    error = f"{type(exc).__name__}: {exc}"[:400]
                    self._verdict(case, "refused", False, f"its answer cannot be read: {error}")
                    progressed = True
                    continue
                if meta.get("status") in ("SUCCESS", "FAILURE", "REVOKED"):
                    del self._tasks[task_id]
                    self._judge_answer(case, meta["status"], meta.get("result"))
                    progressed = True
        return progressed

    def _judge_answer(self, case: Case, status: str, result: Any) -> None:
        from intent.errors import ValidationError

        e = case.expect
        if status == "SUCCESS":
            completed = isinstance(result, dict) and result.get("status") == "completed"
            if e.outcome != VALID:
                self._verdict(case, "ran", False, f"a bad input was accepted: {str(result)[:200]}")
            elif not completed:
                self._verdict(case, "ran", False, f"did not complete: {str(result)[:300]}")
            elif result.get("retries") or result.get("degraded"):
                detail = f"retries {result.get('retries')}, degraded {result.get('degraded')}"
                self._verdict(case, "completed", False, detail)
            else:
                self._verdict(case, "completed", True)
            return
        named = result.field if isinstance(result, ValidationError) else None
        error = f"{type(result).__name__}: {str(result)[:300]}"
        if e.outcome == VALID:
            self._verdict(case, "refused", False, f"a valid input was refused: {error}", named)
        elif e.outcome == NO_ID:
            self._verdict(case, "refused", False, f"answered under an unusable id: {error}")
        elif named is None:
            self._verdict(case, "refused", False, f"not a ValidationError: {error}")
        elif not names(named, e.field):
            detail = f"named {named[:200]!r}, not {e.field[:200]!r}"
            self._verdict(case, "refused", False, detail, named)
        else:
            self._verdict(case, "refused", True, field=named)

    def _poll_dead_tasks(self) -> bool:
        t = self.t
        rows = _rows(t.redis.xrange(t.keys.dead_tasks, f"({self._last_dead}", "+", count=2000))
        for stream_id, letter in rows:
            self._last_dead = _text(stream_id)
            got = _text(letter.get(b"field", b""))
            reason = _text(letter.get(b"reason", b""))
            found = {
                u.decode()
                for part in (b"headers", b"body", b"task_id")
                for u in UID.findall(letter.get(part, b""))
            }
            if not found:
                self._blind_letters.append((got, reason))
            for uid in found:
                self._dead_reasons.setdefault(uid, reason)
                pending = self._marked.pop(uid, None)
                if pending is not None:
                    self._judge_dead(pending.case, got, reason)
        return bool(rows)

    def _judge_dead(self, case: Case, got: str, reason: str) -> None:
        if case.expect.outcome == VALID:
            detail = f"a valid input was dead-lettered: {got}: {reason}"
            self._verdict(case, "dead_lettered", False, detail, got)
        elif case.expect.outcome == BAD:
            self._verdict(case, "dead_lettered", False, f"unanswered: {got}: {reason}", got)
        elif got != case.expect.field:
            self._verdict(case, "dead_lettered", False, f"field {got!r}: {reason}", got)
        else:
            self._verdict(case, "dead_lettered", True, field=got)

    def _poll_events(self) -> bool:
        t = self.t
        progressed = False
        handled = t.handled[self._handled_seen :]
        self._handled_seen += len(handled)
        for stream_id in handled:
            pending = self._events.pop(stream_id, None)
            if pending is None:
                continue
            progressed = True
            if pending.case.expect.outcome == VALID:
                self._verdict(pending.case, "completed", True)
            else:
                self._verdict(pending.case, "ran", False, "a malformed entry was handled")
        rows = _rows(
            t.redis.xrange(t.keys.dead_letters, f"({self._last_event_dead}", "+", count=2000)
        )
        for stream_id, letter in rows:
            self._last_event_dead = _text(stream_id)
            pending = self._events.pop(_text(letter.get(b"dead_original_id", b"")), None)
            if pending is None:
                continue
            progressed = True
            case, e = pending.case, pending.case.expect
            reason = _text(letter.get(b"dead_reason", b""))
            error = _text(letter.get(b"dead_error", b""))
            if e.outcome == VALID:
                detail = f"a valid event was dead-lettered: {reason}: {error}"
                self._verdict(case, "dead_lettered", False, detail)
            elif reason != e.reason or not names(error, e.field):
                detail = f"dead letter {reason}: {error[:200]}"
                self._verdict(case, "dead_lettered", False, detail, error.partition(":")[0])
            else:
                self._verdict(case, "dead_lettered", True, field=e.field)
        return progressed or bool(rows)

    def _timed_out(self, case: Case) -> None:
        if case.kind == "event":
            self._verdict(case, "hung", False, "neither handled nor dead-lettered in time")
        elif case.task_id is not None:
            detail = "no answer in time"
            if case.uid in self._dead_reasons:
                detail += f" (dead-lettered: {self._dead_reasons[case.uid][:200]})"
            self._verdict(case, "hung", False, detail)
        else:
            self._verdict(case, "lost", False, "neither dead-lettered nor run in time")

    def _settle_blind(self) -> None:
        """Dead letters that cannot hold their item's bytes, matched by field and reason."""
        if not self._blind:
            return
        deadline = max(p.deadline for p in self._blind)
        while len(self._blind_letters) < len(self._blind) and time.monotonic() < deadline:
            time.sleep(0.1)
            self._poll_dead_tasks()
        available = list(self._blind_letters)
        for p in self._blind:
            e = p.case.expect
            match = next((a for a in available if a[0] == e.field and e.reason in a[1]), None)
            if match is None:
                detail = f"no dead letter of field {e.field!r} with a reason of {e.reason!r}"
                self._verdict(p.case, "lost", False, detail)
            else:
                available.remove(match)
                self._verdict(p.case, "dead_lettered", True, field=match[0])
        self.results.unattributed = [f"{got}: {reason}" for got, reason in available]
        self._blind = []

    # -- deaths ----------------------------------------------------------------------------
    def _watch(self, monitor: Monitor) -> None:
        t = self.t
        while True:
            try:
                what, exited = monitor.events.get_nowait()
            except queue.Empty:
                break
            self.results.deaths.append(Death(what, self._flying(), self._next_critical()))
            self._died = True
            if exited:
                paused = time.monotonic()
                for failure in t.restart_worker():
                    death = Death(failure, self._flying(), self._next_critical())
                    self.results.deaths.append(death)
                self._extend(time.monotonic() - paused)
        if not t.consumer_alive():
            error = t.consumer_error
            self._recover_consumer(f"consumer stopped: {type(error).__name__}: {error}"[:300])

    def _next_critical(self) -> str:
        """The worker log's next critical line (why the latest death died), if written."""
        for _ in range(20):
            lines = [
                str(e.get("message", ""))[:300]
                for e in _log_lines(self.t.log_path, self._log_offset)
                if e.get("level") == "CRITICAL"
            ]
            if len(lines) > self._criticals:
                self._criticals += 1
                return lines[self._criticals - 1]
            time.sleep(0.05)
        return ""

    def _flying(self) -> list[Case]:
        stores = (self._tasks, self._marked, self._events)
        return [p.case for store in stores for p in store.values()] + [p.case for p in self._blind]

    def _extend(self, seconds: float) -> None:
        for store in (self._tasks, self._marked, self._events):
            for p in store.values():
                p.deadline += seconds
        for p in self._blind:
            p.deadline += seconds

    def _recover_consumer(self, what: str) -> None:
        """Start the consumer again one entry at a time: each time it stops, the entry it
        stopped on (its oldest pending) is the culprit, acknowledged so it stops it no more."""
        t = self.t
        paused = time.monotonic()
        death = Death(what, [p.case for p in self._events.values()])
        self.results.consumer_deaths.append(death)
        for _ in range(50):
            t.stop_consumer()
            t.start_consumer(batch_size=1)
            limit = time.monotonic() + 10
            while t.consumer_alive() and time.monotonic() < limit:
                if not t.consumer_pending() and _lag(t) == 0:
                    break
                time.sleep(0.05)
            if t.consumer_alive():
                break
            pending = t.consumer_pending()
            if not pending:
                break
            culprit_id = pending[0]
            t.redis.xack(t.keys.events_stream, t.group, culprit_id)
            p = self._events.pop(culprit_id, None)
            if p is not None:
                error = f"{type(t.consumer_error).__name__}: {t.consumer_error}"[:300]
                self._verdict(p.case, "stopped the consumer", False, error)
                death.culprit = death.culprit or p.case
        self._extend(time.monotonic() - paused)

    # -- after the run ---------------------------------------------------------------------
    def _after(self) -> None:
        self._check_strays()
        self._check_downstream()
        self._check_log()
        self._isolate_culprits()

    def _check_strays(self) -> None:
        """No input without a usable id may be answered (or run) under the id it had."""
        for v in self.results.verdicts:
            stray = v.case.stray_id
            if stray and self.t.redis.get(self.backend.get_key_for_task(stray)) is not None:
                v.ok, v.outcome = False, "ran"
                v.detail = f"something was stored under its unusable id {stray!r}"

    def _check_downstream(self) -> None:
        """Exactly one context call per completed valid case (GET by its id, or POST for
        its data) and one prediction each; every other call came from a bad input."""
        completed = [v.case for v in self.results.verdicts if v.ok and v.outcome == "completed"]
        tasks = [c for c in completed if c.kind != "event"]
        by_context = {c.context_id for c in tasks if c.context_id}
        inline = sum(1 for c in tasks if c.inline_data)
        seen: Counter[str] = Counter()
        posts: Counter[str] = Counter()
        problems = self.results.downstream
        for call in self.t.requests_log():
            path, status = str(call["path"]), call.get("status")
            if status != 200:
                problems.append(f"{call['method']} {path} answered {status}")
            if call["method"] == "GET" and path.startswith("/api/v1/context/"):
                context_id = path.rsplit("/", 1)[1]
                seen[context_id] += 1
                if context_id not in by_context:
                    case = self._owner(context_id)
                    problems.append(f"GET {path[:160]} by {case!r}")
                    if case is not None:
                        self._blame(case, f"called the Context Service: GET {path[:100]}")
            else:
                posts[path] += 1
        problems += [f"GET /api/v1/context/{c} {n} times" for c, n in seen.items() if n > 1]
        if posts["/api/v1/context"] != inline:
            problems.append(f"{posts['/api/v1/context']} POST /api/v1/context for {inline} cases")
        if posts["/api/v1/predict"] != len(tasks):
            count = posts["/api/v1/predict"]
            problems.append(f"{count} POST /api/v1/predict for {len(tasks)} cases")
        others = {p: n for p, n in posts.items() if p not in ("/api/v1/context", "/api/v1/predict")}
        problems += [f"POST {p} {n} times" for p, n in others.items()]

    def _owner(self, text: str) -> Case | None:
        found = UID.search(text.encode("utf-8", "backslashreplace"))
        return self._by_uid.get(found.group().decode()) if found else None

    def _blame(self, case: Case, detail: str) -> None:
        v = self._judged.get(case.uid)
        if v is not None:
            v.blame.append(detail)

    def _check_log(self) -> None:
        for entry in _log_lines(self.t.log_path, self._log_offset):
            message = str(entry.get("message", ""))
            if message.startswith(("retrying ", "deferring ")):
                case = self._owner(str(entry.get("task_id", "")))
                self.results.retries.append(f"{message[:200]} (task {entry.get('task_id')})")
                if case is not None:
                    self._blame(case, f"was retried: {message[:120]}")
            elif message.startswith("could not") or entry.get("level") == "CRITICAL":
                self.results.worker_errors.append(message[:300])

    def _isolate_culprits(self) -> None:
        """Send again, one at a time, the cases that were in flight when a worker process
        died and did not get what they expected: one that kills it again is a culprit.
        At most ``find_culprits`` probes (each waits a few seconds, or costs a restart)."""
        failed = {v.case.uid: v.outcome for v in self.results.verdicts if not v.ok}
        order = {"lost": 0, "hung": 1}
        probed: set[str] = set()
        budget = self.find_culprits
        for death in self.results.deaths:
            suspects = sorted(
                (c for c in death.in_flight if c.uid in failed and c.uid not in probed),
                key=lambda c: order.get(failed[c.uid], 2),
            )
            for case in suspects:
                if budget <= 0:
                    return
                budget -= 1
                probed.add(case.uid)
                probe = Engine(self.t, 1, 3.0, 10.0, 0, probing=True)
                again = probe.run([rebind(case, UIDS.next())])
                if again.deaths:
                    death.culprit = case
                    death.log = again.deaths[0].log or death.log
                    why = death.log or again.deaths[0].what
                    self._judged[case.uid].detail += f"; kills the worker ({why})"
                    break


def _lag(t: Target) -> int:
    for group in _rows(t.redis.xinfo_groups(t.keys.events_stream)):
        if _text(group.get("name")) == t.group:
            return int(group.get("lag") or 0)
    return 0


def _last_id(client: Any, key: str) -> str:
    rows = _rows(client.xrevrange(key, count=1))
    return _text(rows[0][0]) if rows else "0"


def _log_size(path: str | None) -> int:
    try:
        return os.path.getsize(path) if path else 0
    except OSError:
        return 0


def _log_lines(path: str | None, offset: int) -> Iterator[dict[str, Any]]:
    """The worker's JSON log lines from ``offset`` on."""
    if not path:
        return
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return
    for line in data.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            yield entry


def summary(results: Results, limit: int = 60) -> str:
    """Everything that broke an expectation, for an assertion message or a report."""
    out = []
    failures = results.failures()
    for v in failures[:limit]:
        out.append("  " + v.line()[:600])
    if len(failures) > limit:
        out.append(f"  ... and {len(failures) - limit} more")
    for d in results.deaths:
        culprit = repr(d.culprit) if d.culprit else f"one of {len(d.in_flight)} in flight"
        out.append(f"  worker: {d.what}: {culprit} {d.log[:200]}")
    for d in results.consumer_deaths:
        out.append(f"  consumer: {d.what}: {d.culprit!r}")
    out += [f"  downstream: {p}" for p in results.downstream[:20]]
    out += [f"  retry: {r}" for r in results.retries[:20]]
    out += [f"  worker log: {e}" for e in results.worker_errors[:20]]
    out += [f"  dead letter of no case: {u}" for u in results.unattributed[:20]]
    return "\n".join(out)
