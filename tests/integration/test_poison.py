"""No message takes a worker down: raw broker messages of every bad shape, sent to a real
prefork worker. Each is answered (a ValidationError naming what is wrong, stored under its
task id when it has one) and dead-lettered with its reason and bytes; none is delivered
again; the worker stays up (the same processes) and goes on serving analyses."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Producer

from intent.dev.stack import WorkerProcess, running_worker
from intent.errors import ValidationError
from intent.poison import DeadTasks
from intent.reference import ReferenceServices
from intent.runtime import get_runtime
from tasks import submit
from tasks.app import app
from tests.helpers import request, wait_until
from tests.integration.conftest import FAST_RETRY_ENV

pytestmark = pytest.mark.integration

GOOD_BODY = json.dumps([[request()], {}, {"callbacks": None, "errbacks": None, "chain": None}])


def nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def body_of(args: Any, kwargs: Any = None, embed: Any = None) -> str:
    embed = embed if embed is not None else {"callbacks": None, "errbacks": None, "chain": None}
    return json.dumps([args, {} if kwargs is None else kwargs, embed])


# (name, header changes, body, content type, the field the answer must name)
CASES: list[tuple[str, dict[str, Any], Any, str, str]] = [
    ("no content type", {}, GOOD_BODY, "", "content_type"),
    ("a binary content type", {}, GOOD_BODY, "application/x-python-serialize", "content_type"),
    ("an empty body", {}, b"", "application/json", "body"),
    ("a body of two elements", {}, json.dumps([[], {}]), "application/json", "body"),
    ("a body of four", {}, json.dumps([[], {}, {}, 1]), "application/json", "body"),
    ("a body 5", {}, "5", "application/json", "body"),
    ("a body null", {}, "null", "application/json", "body"),
    ("a string body", {}, json.dumps("hello"), "application/json", "body"),
    ("not JSON", {}, b"\x80\x04not json at all", "application/json", "body"),
    ("invalid UTF-8", {}, b'[["\xff\xfe"], {}, {}]', "application/json", "body"),
    ("nested 10,000 deep", {}, "[" * 10000 + "]" * 10000, "application/json", "body"),
    ("a 5,000-digit integer", {}, "[[" + "9" * 5000 + "], {}, {}]", "application/json", "body"),
    ("args nested 500 deep", {}, body_of(nested(500)), "application/json", "args[0]"),
    (
        "data nested 500 deep",
        {},
        body_of([{**request(), "context_id": None, "data": nested(500)}]),
        "application/json",
        "data",
    ),
    (
        "a type marker",
        {},
        body_of([{**request(), "signals": {"__type__": "uuid", "__value__": "x"}}]),
        "application/json",
        "signals",
    ),
    (
        "a lone surrogate",
        {},
        body_of([{**request(), "context_id": None, "data": {"name": "\ud800"}}]),
        "application/json",
        "data.name",
    ),
    ("kwargs as a list", {}, json.dumps([[request()], [1], {}]), "application/json", "kwargs"),
    ("args as an object", {}, json.dumps([{"a": 1}, {}, {}]), "application/json", "args"),
    ("too many args", {}, body_of([request(), request()]), "application/json", "args"),
    ("timelimit x", {"timelimit": "x"}, GOOD_BODY, "application/json", "headers.timelimit"),
    (
        "timelimit of three",
        {"timelimit": [1, 2, 3]},
        GOOD_BODY,
        "application/json",
        "headers.timelimit",
    ),
    (
        "stamped_headers 5",
        {"stamped_headers": 5},
        GOOD_BODY,
        "application/json",
        "headers.stamped_headers",
    ),
    ("an eta that is no date", {"eta": "soon"}, GOOD_BODY, "application/json", "headers.eta"),
    ("retries a string", {"retries": "1"}, GOOD_BODY, "application/json", "headers.retries"),
    ("an unknown task", {"task": "intent.analyse"}, GOOD_BODY, "application/json", "headers.task"),
    (
        "headers nested deep",
        {"origin": None, "x-deep": nested(50)},
        GOOD_BODY,
        "application/json",
        "headers.x-deep",
    ),
    (
        "an embed chain of numbers",
        {},
        body_of([request()], embed={"chain": [5]}),
        "application/json",
        "embed.chain",
    ),
    # A key that is no valid Unicode: named escaped, so the answer can be read back.
    (
        "a lone surrogate in a key",
        {},
        body_of([{**request(), "signals": {"k\udc80": 1}}]),
        "application/json",
        "signals.k\\udc80",
    ),
    # Type markers in a header: kombu's envelope decoder revived them, or raised what their
    # constructor raises (a Decimal's InvalidOperation, an AttributeError) and ended the worker.
    *[
        (
            f"a header that is a type marker {marker}",
            {"x-m": marker},
            GOOD_BODY,
            "application/json",
            "headers.x-m",
        )
        for marker in (
            {"__type__": "decimal", "__value__": "x"},
            {"__type__": "bytes", "__value__": 5},
            {"__type__": "set", "__value__": 5},
            {"__type__": "uuid", "__value__": {"hex": "0" * 32}},
        )
    ],
]


@pytest.fixture(scope="module")
def worker(reference: ReferenceServices) -> Iterator[WorkerProcess]:
    with running_worker(concurrency=2, env=FAST_RETRY_ENV) as process:
        yield process


def publish(body: Any, content_type: str, headers: dict[str, Any]) -> None:
    queue = app.amqp.default_queue
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    with app.connection_for_write() as conn:
        producer = Producer(conn, exchange=queue.exchange, routing_key=queue.routing_key)
        producer.publish(
            raw,
            content_type=content_type,
            content_encoding="utf-8",
            headers=headers,
            declare=[],
            serializer=None,
        )


def dead_letters() -> DeadTasks:
    rt = get_runtime()
    return DeadTasks(rt.redis, rt.keys, 1000)


@pytest.mark.parametrize(
    ("name", "changes", "body", "content_type", "field"), CASES, ids=[c[0] for c in CASES]
)
def test_a_bad_message_is_answered_and_dead_lettered_and_the_worker_stays_up(
    worker: WorkerProcess,
    redis_client: redis.Redis,
    name: str,
    changes: dict[str, Any],
    body: Any,
    content_type: str,
    field: str,
) -> None:
    pids = (worker.process.pid, sorted(worker.child_pids()))
    task_id = f"poison-{uuid.uuid4().hex[:10]}"
    headers = {"task": "intent.analyze", "id": task_id, "lang": "py", **changes}
    publish(body, content_type, headers)

    result = app.AsyncResult(task_id)
    with pytest.raises(ValidationError) as info:
        result.get(timeout=15)
    assert info.value.field.startswith(field), info.value
    kept = wait_until(
        lambda: [d for d in dead_letters().list() if d.task_id == task_id], 5, "the dead letter"
    )
    assert kept[0].field == info.value.field
    assert kept[0].reason == info.value.message
    assert (
        kept[0].body
        == (body if isinstance(body, bytes) else body.encode("utf-8", "surrogatepass"))[:65536]
    )
    # The worker answered without a death: the same main process and pool processes.
    assert (worker.process.pid, sorted(worker.child_pids())) == pids
    assert worker.process.poll() is None


def test_a_message_without_an_id_is_dead_lettered_and_the_worker_serves_on(
    worker: WorkerProcess, redis_client: redis.Redis
) -> None:
    marker = f"no-id-{uuid.uuid4().hex[:8]}"
    publish(GOOD_BODY, "application/json", {"task": "intent.analyze", "origin": marker})
    kept = wait_until(
        lambda: [d for d in dead_letters().list() if marker in d.headers], 10, "the dead letter"
    )
    assert kept[0].field == "headers.id"
    # Acked, never delivered again: one dead letter, and the worker serves the next one.
    assert submit(request()).get(timeout=30).status == "completed"
    assert len([d for d in dead_letters().list() if marker in d.headers]) == 1
    assert worker.process.poll() is None


def test_a_task_id_with_a_trailing_newline_is_no_task_id(
    worker: WorkerProcess, redis_client: redis.Redis
) -> None:
    task_id = f"poison-{uuid.uuid4().hex[:10]}\n"  # a regex's "$" matches before a last "\n"
    publish(GOOD_BODY, "application/json", {"task": "intent.analyze", "id": task_id})
    kept = wait_until(
        lambda: [d for d in dead_letters().list() if task_id.strip() in d.headers],
        10,
        "the dead letter",
    )
    assert kept[0].field == "headers.id"
    assert submit(request()).get(timeout=30).status == "completed"  # served after it
    assert redis_client.get(app.backend.get_key_for_task(task_id)) is None  # never ran
    assert worker.process.poll() is None


def envelope(**changes: Any) -> str:
    """A raw kombu envelope on the queue's list, as a hand-made message would be."""
    raw = {
        "body": GOOD_BODY,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"task": "intent.analyze", "id": str(uuid.uuid4())},
        "properties": {
            "delivery_tag": str(uuid.uuid4()),
            "body_encoding": "utf-8",
            "delivery_info": {"exchange": "", "routing_key": "intent"},
            "priority": 0,
        },
    }
    return json.dumps({**raw, **changes})


ENVELOPES = [
    ("headers a list", envelope(headers=["not", "an", "object"])),
    ("headers a string", envelope(headers="x")),
    ("no properties", envelope(properties=None)),
    ("a body that is a number", envelope(body=5)),
    (
        "a base64 body that is not",
        envelope(properties={"delivery_tag": "t", "body_encoding": "base64"}, body="x"),
    ),
    ("not JSON", "garbage"),
    ("a list", json.dumps([1, 2])),
    ("nested 20,000 deep", envelope()[:-1] + ', "x": ' + "[" * 20000 + "]" * 20000 + "}"),
]


@pytest.mark.parametrize("raw", [e[1] for e in ENVELOPES], ids=[e[0] for e in ENVELOPES])
def test_an_item_on_the_queue_that_is_no_message_is_dead_lettered(
    worker: WorkerProcess, redis_client: redis.Redis, raw: str
) -> None:
    pids = (worker.process.pid, sorted(worker.child_pids()))
    before = len(dead_letters().list(1000))
    redis_client.lpush(app.amqp.default_queue.name, raw)
    wait_until(lambda: len(dead_letters().list(1000)) > before, 10, "the dead letter")
    assert dead_letters().list(1)[0].field == "envelope"
    assert submit(request()).get(timeout=30).status == "completed"
    assert (worker.process.pid, sorted(worker.child_pids())) == pids


def test_a_good_analysis_after_all_of_them_completes(worker: WorkerProcess) -> None:
    assert submit(request()).get(timeout=30).status == "completed"
    assert worker.process.poll() is None


def test_a_lone_surrogate_is_refused_never_retried_and_the_breaker_never_hears_of_it(
    worker: WorkerProcess, redis_client: redis.Redis, reference: ReferenceServices
) -> None:
    from intent.breaker import CircuitAdmin
    from intent.reference import ReferenceControl
    from tests.integration.conftest import api_calls

    control = ReferenceControl(reference.context_url)
    control.clear_requests()
    bad = {**request(), "context_id": None, "data": {"name": "\ud800"}}
    for _ in range(5):  # as many as would trip the breaker, were they failures
        result = app.send_task("intent.analyze", args=[bad])
        with pytest.raises(ValidationError) as info:
            result.get(timeout=15)
        assert info.value.field == "data.name"
    assert api_calls(control) == []
    status = CircuitAdmin(get_runtime().breaker_store).status("context-service")
    assert (status.state, status.failures) == ("closed", 0)
    assert submit(request()).get(timeout=30).status == "completed"


def test_a_stopping_worker_that_hangs_exits_after_the_watchdogs_bound(tmp_path: Any) -> None:
    """The watchdog a stopping worker arms ends a process stuck in its shutdown."""
    import subprocess
    import sys
    import time

    script = tmp_path / "wedged.py"
    script.write_text(
        "import time, tasks.consumer as c\n"
        "c.WEDGE_GRACE = 0.5\n"
        "dog = object.__new__(c.Watchdog); dog._armed = False; dog.arm()\n"
        "time.sleep(120)  # a shutdown that never ends\n"
    )
    env = {
        **os.environ,
        "INTENT_TASK_SOFT_TIME_LIMIT": "0.5",
        "INTENT_TASK_TIME_LIMIT": "1",
        "INTENT_REDIS_OUTAGE_TOLERANCE": "0.2",
    }
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(script)], env=env, timeout=60, check=False)
    assert done.returncode == 1
    assert time.monotonic() - started < 30
