"""High availability through Redis Sentinel: the broker, the result backend and the state
(breaker, limits, cache, pattern state, waiting room, events) all reach Redis through three
Sentinels (tests/sentinel.py: a master, a replica, quorum 2), and the master is killed
(SIGKILL to its process group) while analyses are submitted and run on a prefork worker.

The service's time settings run at the defaults x FACTOR (printed), every ratio between them
the one users have; the Sentinels' own ``down-after-milliseconds`` and ``failover-timeout``
are short (printed too), so the failover takes a few seconds rather than a minute.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import kombu
import kombu.pools
import pytest
import redis
from celery.result import AsyncResult
from kombu.transport import redis as kombu_redis

from intent.breaker import CircuitAdmin, CircuitBreaker, CircuitConfig, FallbackStore, RedisStore
from intent.connections import data_client, is_sentinel_url, stream_client
from intent.dev.stack import WorkerProcess
from intent.errors import ServiceUnavailableError
from intent.events import ConsumerConfig, EventConsumer, EventHandler, EventPublisher
from intent.keys import Keys
from intent.models import Event, IntentEvent, IntentResult
from intent.reference import ReferenceControl, ReferenceServices
from intent.runtime import reset_runtime
from intent.settings import get_settings
from tasks import submit, transport
from tasks.app import app
from tasks.submit import Analysis
from tests.helpers import Running, request, scaled_env, stream_events, wait_until
from tests.sentinel import SentinelSetup

pytestmark = pytest.mark.integration

T = TypeVar("T")

FACTOR = 0.25
ANALYSES = 60
KILL_AT = 20  # the master is killed once this many analyses were submitted
SUBMIT_PAUSE = 0.1  # between two submissions: several seconds of load on each side of the kill

# The app's settings that the URLs decide (reloaded from celeryconfig with the environment).
URL_SETTINGS = (
    "broker_url",
    "result_backend",
    "broker_transport_options",
    "result_backend_transport_options",
)


def _reconfigure() -> None:
    """The Celery app, this process's runtime and settings rebuilt from the environment: the
    app read celeryconfig when an earlier module first used it."""
    reset_runtime()
    import celeryconfig

    importlib.reload(celeryconfig)
    app.conf.update({key: getattr(celeryconfig, key) for key in URL_SETTINGS})
    app.__dict__.pop("amqp", None)
    app._pool = None
    kombu.pools.reset()
    app._backend_cache = None
    app._local = threading.local()


@contextlib.contextmanager
def through_sentinels(env: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    _reconfigure()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _reconfigure()


@pytest.fixture(scope="module")
def sentinels() -> Iterator[SentinelSetup]:
    setup = SentinelSetup().start()
    try:
        yield setup
    finally:
        setup.close()


@pytest.fixture(scope="module")
def ha_env(sentinels: SentinelSetup, reference: ReferenceServices) -> Iterator[dict[str, str]]:
    """Every URL through the Sentinels: the state in limits' form (the master's name in it),
    the broker and the results in Celery's (the master's name a setting)."""
    env = scaled_env(FACTOR)
    env.update(
        {
            "INTENT_REDIS_URL": sentinels.limits_url,
            "INTENT_BROKER_URL": sentinels.celery_url,
            "INTENT_RESULT_BACKEND_URL": sentinels.celery_url,
            "INTENT_SENTINEL_MASTER": sentinels.master_name,
        }
    )
    print(
        f"time settings at the defaults x {FACTOR}: {scaled_env(FACTOR)}; Sentinels: "
        f"down-after {sentinels.down_after_ms} ms, failover-timeout "
        f"{sentinels.failover_timeout_ms} ms, quorum 2"
    )
    with through_sentinels(env):
        yield env


@pytest.fixture(scope="module")
def ha_worker(
    ha_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """A prefork worker whose broker, results and state are through the Sentinels; its log
    (JSON lines, INFO) in ``ha_worker.logfile``."""
    logfile = tmp_path_factory.mktemp("ha-worker") / "worker.log"
    worker = WorkerProcess(4, env=ha_env, loglevel="INFO", logfile=str(logfile))
    worker.logfile = logfile  # type: ignore[attr-defined]
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.stop()


def _submit(payload: dict[str, Any], submitted: dict[str, Analysis], refused: list[float]) -> bool:
    """One try of a web app's submit(): False when Redis could not take it (nothing was
    enqueued; the app sends again, its refusals' times in ``refused``)."""
    try:
        analysis = submit(payload)
    except (ServiceUnavailableError, redis.RedisError, OSError):
        refused.append(time.monotonic())
        return False
    submitted[analysis.request_id] = analysis
    return True


class Waiting(threading.Thread):
    """A web app's request thread waiting in ``Analysis.get()`` (the result backend's
    subscription) for each of ``analyses`` in turn."""

    def __init__(self, analyses: list[Analysis], timeout: float):
        super().__init__(daemon=True)
        self.analyses, self.timeout = analyses, timeout
        self.results: dict[str, IntentResult] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for analysis in self.analyses:
                self.results[analysis.request_id] = analysis.get(timeout=self.timeout)
        except BaseException as exc:
            self.error = exc


def _held_messages(client: redis.Redis, request_ids: list[str]) -> dict[str, list[str]]:
    """Where the broker (its queues, its unacknowledged messages) or the waiting room still
    holds a message of each of ``request_ids``."""
    held: dict[str, list[str]] = {}
    try:
        for raw in client.scan_iter(count=1000):
            key = raw.decode()
            kind = client.type(raw).decode()
            if kind == "list":
                values = client.lrange(raw, 0, -1)
            elif kind == "hash" and (key == "unacked" or key.endswith(":entries")):
                values = client.hvals(raw)
            else:
                continue
            for rid in request_ids:
                if any(rid.encode() in value for value in values):
                    held.setdefault(rid, []).append(key)
    finally:
        client.close()
    return held


def _ready(handle: AsyncResult) -> bool:
    try:
        return bool(handle.ready())
    except (redis.RedisError, OSError):
        return False


def _log_lines(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line[:1] == "{"]


def test_the_master_killed_under_load_loses_and_duplicates_nothing(
    sentinels: SentinelSetup,
    ha_env: dict[str, str],
    ha_worker: WorkerProcess,
    prediction_service: ReferenceControl,
) -> None:
    settings = get_settings()
    assert all(is_sentinel_url(url) for url in (settings.redis_url, settings.broker_url))
    assert app.conf.broker_transport_options["master_name"] == sentinels.master_name
    old_master, replica = sentinels.master(), sentinels.data[1]
    assert old_master is sentinels.data[0]

    run = uuid.uuid4().hex[:8]
    # The breaker's shared state, made recognisable before the failover: does the new
    # master have it?
    admin = CircuitAdmin(
        RedisStore.from_url(settings.redis_url, settings.key_prefix, 0.5, settings.sentinel_master)
    )
    before = admin.reset("context-service", reason=f"before the failover {run}")
    # A breaker of this process (a producer's), called on every submission: does it run on
    # memory while there is no master, and come back to the shared state after?
    probe_interval = float(ha_env["INTENT_CIRCUIT_REDIS_PROBE_INTERVAL"])
    store = FallbackStore(
        RedisStore.from_url(
            settings.redis_url, settings.key_prefix, 0.25, settings.sentinel_master
        ),
        probe_interval=probe_interval,
    )
    breaker = CircuitBreaker(f"ha-{run}", CircuitConfig(), store=store)
    on_memory: list[bool] = []

    worker, logfile = ha_worker, ha_worker.logfile  # type: ignore[attr-defined]
    payloads = [
        request(
            request_id=f"ha-{run}-{i}", context_id=f"ctx-ha-{run}-{i}", client_id=f"ha-{run}-{i}"
        )
        for i in range(ANALYSES)
    ]
    submitted: dict[str, Analysis] = {}
    refused: list[float] = []
    # Predictions take 0.5 s: analyses queue up, so steps (and their breaker calls) are in
    # flight on every pool process while there is no master.
    prediction_service.set_faults(latency_ms=500)
    try:
        stats = (app.control.inspect([worker.name], timeout=5).stats() or {})[worker.name]
        assert stats["broker"]["transport"] == "sentinel"  # the worker's broker: the Sentinels

        killed_at = failed_over_at = 0.0
        for i, payload in enumerate(payloads):
            if i == KILL_AT:
                # The last analyses before the kill are awaited by get() across it.
                waiting = Waiting(
                    list(submitted.values())[-5:], float(ha_env["INTENT_ANALYSIS_DEADLINE"])
                )
                waiting.start()
                time.sleep(0.2)  # subscribed
                unfinished = sum(not a.ready() for a in waiting.analyses)
                old_master.kill()
                killed_at = time.monotonic()
            # Before the submission: the call right after the kill meets no master (the
            # Sentinels wait down-after-milliseconds before they even vote).
            breaker.call(lambda: None)
            on_memory.append(store.degraded)
            # Resent every 0.5 s while Redis cannot take it: each try counts against the
            # client's intake limit, in memory (a share of it) while the state is away.
            wait_until(
                lambda p=payload: _submit(p, submitted, refused), 60, f"submit #{i}", poll=0.5
            )
            if killed_at and not failed_over_at and sentinels.master_port() == replica.port:
                failed_over_at = time.monotonic()
            time.sleep(SUBMIT_PAUSE)
        if not failed_over_at:
            wait_until(lambda: sentinels.master_port() == replica.port, 30, "the failover")
            failed_over_at = time.monotonic()
        print(
            f"failover {failed_over_at - killed_at:.1f} s after the kill (at most); "
            f"{len(refused)} submits refused, the last {refused[-1] - killed_at:.1f} s after it"
            if refused
            else f"failover {failed_over_at - killed_at:.1f} s after the kill; no submit refused"
        )

        deadline = float(ha_env["INTENT_ANALYSIS_DEADLINE"])
        done: dict[str, IntentResult] = {}
        lost: list[str] = []
        for rid in submitted:
            handle = AsyncResult(rid, app=app)
            try:
                wait_until(lambda h=handle: _ready(h), deadline, f"the result of {rid}", poll=0.2)
            except AssertionError:
                lost.append(rid)
                continue
            done[rid] = IntentResult.model_validate(handle.get(timeout=10))
        waiting.join(30)
        # Where an analysis without a result is still held, if anywhere (stuck, or lost).
        held = _held_messages(data_client(settings), lost)

        # The killed master, back as a replica of the new one (what Sentinel would make it).
        sentinels.restart_as_replica(old_master, of=replica)
        wait_until(
            lambda: old_master.client().info("replication").get("master_link_status") == "up",
            30,
            "the old master to sync as a replica",
        )
        wait_until(lambda: _called(breaker, store), 10, "this breaker back on the shared state")
        new_master = data_client(settings)
        events = stream_events(new_master)
        after = admin.status("context-service")
        new_master.close()
        admin.store.close()
        store.close()
    except BaseException:
        print(sentinels.logs())
        raise

    assert sentinels.master() is replica  # the replica was promoted
    # Nothing lost: every analysis submitted completed (a message a worker had taken as the
    # master died, not yet recorded as unacknowledged, went back on its queue); none was
    # answered as a duplicate of itself (a claim whose reply was lost with the master, then
    # retried).
    assert len(submitted) == ANALYSES
    assert not lost, f"no result for {lost}; held (else lost): {held}"
    assert not any(a.duplicate for a in submitted.values()), [
        rid for rid, a in submitted.items() if a.duplicate
    ]
    # A web app waiting in get() across the failover has its results (its subscription
    # came back through the Sentinels).
    print(f"get() waited across the failover for {unfinished} unfinished analyses")
    assert unfinished > 0  # the wait did span the failover
    assert waiting.error is None, repr(waiting.error)
    assert {rid: r.status for rid, r in waiting.results.items()} == {
        a.request_id: "completed" for a in waiting.analyses
    }
    assert len(done) == ANALYSES
    assert Counter(r.status for r in done.values()) == {"completed": len(done)}
    # Nothing emitted twice, nothing missing from the stream on the new master.
    mine = [e for e in events if e.request_id in done]
    ids = [e.id for e in mine]
    assert len(ids) == len(set(ids)), Counter(ids).most_common(3)
    assert {e.request_id for e in mine} == set(done)
    assert len(mine) == sum(r.published for r in done.values())

    # The breaker's shared state survived on the new master (written before the failover,
    # replicated long before the kill) ...
    assert after.reason == before.reason and after.generation >= before.generation
    # ... while a process's breakers ran on memory with no master (this one's: its calls
    # after the kill, until the Sentinels named the new master), then on the shared state
    # again; so did every worker process that met the failover (a process busy elsewhere
    # all along, a publish retrying, never noticed).
    assert not on_memory[KILL_AT - 1] and on_memory[KILL_AT], on_memory
    assert not store.degraded
    lines = _log_lines(logfile)
    down = {line["pid"] for line in lines if "breaker store unreachable" in line["message"]}
    back = {line["pid"] for line in lines if "breaker store reachable again" in line["message"]}
    print(
        f"this process's breaker on memory for {sum(on_memory)} of {len(on_memory)} calls; "
        f"worker processes on memory: {len(down)}, back on the shared state: {len(back)}"
    )
    assert down <= back, f"never back on the shared state: {sorted(down - back)}"
    put_back = [line for line in lines if "put back" in line["message"]]
    print(f"messages taken as the master died, put back on the new master: {put_back}")


def _retried(operation: Callable[[], T], what: str) -> T:
    """``operation`` tried again while Redis refuses it, as a step's retry would."""
    deadline = time.monotonic() + 20
    while True:
        try:
            return operation()
        except (redis.ConnectionError, redis.TimeoutError, ServiceUnavailableError):
            assert time.monotonic() < deadline, f"{what}: Redis never came back"
            time.sleep(0.1)


def test_an_operators_failover_sends_every_client_to_the_new_master(
    sentinels: SentinelSetup, ha_env: dict[str, str], ha_worker: WorkerProcess
) -> None:
    """``SENTINEL FAILOVER``: the old master still runs, demoted, and answers the connections
    still open to it with READONLY, a blocked read (the worker's BRPOP, the consumer's
    XREADGROUP) with an UNBLOCKED error. The worker, the breaker's raw EVALSHA, the data
    client and the consumer's pipelined read each drop such a connection and ask the
    Sentinels for the new master. Nothing is written while both are masters (the Sentinels
    demote the old one up to 10 s later; here the test does it at once): what such writes
    cost is in the README."""
    sentinels.wait_ready()
    settings = get_settings()
    keys = Keys(settings.key_prefix)
    run = uuid.uuid4().hex[:8]
    client = data_client(settings)
    publisher = EventPublisher(client, keys, maxlen=10_000, dedup_ttl=600)
    handled: list[str] = []  # the analyses' events too
    handler = EventHandler()
    for kind in IntentEvent:
        handler.register(kind, lambda event: handled.append(event.id))

    def mine() -> list[str]:
        return [i for i in handled if i.startswith(f"evt_ha_{run}_")]

    config = ConsumerConfig(group=f"ha-{run}", consumer="c1", block=0.1, start_id="$")
    consumer = Running(EventConsumer(stream_client(settings, config.block), keys, handler, config))
    shared = RedisStore.from_url(
        settings.redis_url or "", settings.key_prefix, 0.25, settings.sentinel_master
    )
    store = FallbackStore(shared, probe_interval=0.2)
    breaker = CircuitBreaker(f"ha-{run}", CircuitConfig(), store=store)
    worker = ha_worker
    consumer.thread.start()
    try:
        before = _analyses(run, "before", 4)
        wait_until(lambda: _has_group(client, keys, config.group), 10, "the consumer's group")
        first = [_event(run, i) for i in range(10)]
        publisher.publish(first)
        for _ in range(5):
            breaker.call(lambda: None)
        wait_until(lambda: len(mine()) == 10, 10, "the first events handled")
        done_before = [_result(rid, 60) for rid in before]
        assert client.execute_command("WAIT", 1, 5000) == 1  # all of it on the replica

        old, new = sentinels.failover()
        print(f"promoted {new.name}, demoted {old.name}")
        second = [_event(run, i) for i in range(10, 20)]
        _retried(lambda: publisher.publish(second), "publishing")
        wait_until(lambda: len(mine()) == 20 or consumer.error, 20, "the events after the failover")
        assert consumer.error is None, f"{type(consumer.error).__name__}: {consumer.error}"
        # The breaker's calls meet the demoted master: on memory for a moment, if at all,
        # then back on the shared state (the next probe after the new master answers).
        wait_until(lambda: _called(breaker, store), 10, "the breaker back on the shared state")
        for _ in range(5):
            breaker.call(lambda: None)
        after = _analyses(run, "after", 4)
        done_after = [_result(rid, 60) for rid in after]
        assert not worker.child.exited(), worker.child.describe_exit()  # the same worker
        stream = [f[b"data"] for _, f in new.client(decode=False).xrange(keys.events_stream)]
        snapshot = shared.snapshot(breaker.name, CircuitConfig())
    finally:
        consumer.stop()
        consumer.consumer.client.close()
        client.close()
        store.close()
    assert [r.status for r in done_before + done_after] == ["completed"] * 8
    assert consumer.error is None, repr(consumer.error)
    assert sorted(mine()) == sorted(e.id for e in first + second)  # each once
    assert len(handled) == len(set(handled))
    assert len(stream) >= 20  # on the new master (with the earlier tests' events)
    # The calls made before (replicated) and the five since it came back, on the new master.
    assert snapshot.calls is not None and snapshot.calls >= 10
    assert not store.degraded


def _analyses(run: str, tag: str, count: int) -> list[str]:
    return [
        _retried(
            lambda i=i: (
                submit(
                    request(
                        request_id=f"ha-{run}-{tag}-{i}",
                        context_id=f"ctx-ha-{run}-{tag}-{i}",
                        client_id=f"ha-{run}-{tag}",
                    )
                ).request_id
            ),
            "a submit",
        )
        for i in range(count)
    ]


def _result(rid: str, timeout: float) -> IntentResult:
    handle = AsyncResult(rid, app=app)
    wait_until(lambda: _ready(handle), timeout, f"the result of {rid}", poll=0.2)
    return IntentResult.model_validate(handle.get(timeout=10))


def _event(run: str, i: int) -> Event:
    return Event(
        id=f"evt_ha_{run}_{i}",
        type=IntentEvent.CONTEXT_CHANGED,
        pattern_id="checkout",
        data={"context_id": f"ctx-{run}-{i}"},
        timestamp="2025-01-01T00:00:00.000Z",
        request_id=f"ha-{run}-{i}",
    )


def _has_group(client: redis.Redis, keys: Keys, group: str) -> bool:
    try:
        groups = client.xinfo_groups(keys.events_stream)
    except redis.ResponseError:
        return False
    return any(g["name"] in (group, group.encode()) for g in groups)


def _called(breaker: CircuitBreaker, store: FallbackStore) -> bool:
    breaker.call(lambda: None)
    return not store.degraded


def test_beat_finds_its_lock_through_the_sentinels(
    sentinels: SentinelSetup, ha_env: dict[str, str]
) -> None:
    """redbeat (celery beat's schedule and lock) reads the master the Sentinels name."""
    from celery import Celery
    from redbeat.schedulers import RedBeatConfig

    from tasks import beat

    sentinels.wait_ready()
    probe = Celery("intent-beat-probe")
    assert beat.lock_held(probe) is False
    client = data_client(get_settings())
    lock_key = RedBeatConfig(probe).lock_key
    try:
        client.set(lock_key, "a beat", ex=30)
        assert beat.lock_held(probe) is True
    finally:
        client.delete(lock_key)
        client.close()


def test_a_message_taken_as_the_master_dies_goes_back_on_the_new_master(
    sentinels: SentinelSetup, ha_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """kombu takes a message with BRPOP, then records it as unacknowledged with a second
    write. Here the master is killed between the two, once the pop has reached the replica:
    the record fails, and the promoted replica holds the message nowhere. The consumer keeps
    it and, once it reaches the new master, puts it back at the head of its queue: the next
    consume delivers it again, marked redelivered."""
    sentinels.wait_ready()
    old_master = sentinels.master()
    replica = next(s for s in sentinels.data if s is not old_master)
    name = f"take-{uuid.uuid4().hex[:8]}"
    queue = kombu.Queue(name, kombu.Exchange(name), routing_key=name)
    killed: list[str] = []
    record = kombu_redis.QoS.append

    def master_dies_before_the_record(qos: Any, message: Any, delivery_tag: Any) -> None:
        if not killed:
            wait_until(lambda: replica.client().llen(name) == 0, 5, "the pop on the replica")
            old_master.kill()
            killed.append(message.headers.get("id") or delivery_tag)
        record(qos, message, delivery_tag)

    monkeypatch.setattr(kombu_redis.QoS, "append", master_dies_before_the_record)
    received: list[kombu.Message] = []
    try:
        with app.connection_for_write() as connection:
            connection.Producer().publish(
                {"n": 1},
                exchange=queue.exchange,
                routing_key=name,
                declare=[queue],
                serializer="json",
                headers={"id": name},
            )
        assert old_master.client().execute_command("WAIT", 1, 5000) == 1  # on the replica
        assert replica.client().llen(name) == 1
        with (
            app.connection_for_read() as connection,
            connection.Consumer(queue, callbacks=[lambda _, m: received.append(m)]),
            pytest.raises(connection.connection_errors),
        ):
            connection.drain_events(timeout=10)
        assert killed == [name] and received == []
        assert len(transport.RESCUED) == 1  # neither run nor recorded: held by the consumer
        wait_until(lambda: sentinels.master_port() == replica.port, 30, "the failover")
        assert replica.client().llen(name) == 0  # nowhere on the new master but here

        with (
            app.connection_for_read() as connection,
            connection.Consumer(queue, callbacks=[lambda _, m: received.append(m)]),
        ):
            _retried(lambda: connection.drain_events(timeout=10), "consuming again")
            assert [m.payload for m in received] == [{"n": 1}]
            assert received[0].headers["id"] == name
            assert received[0].delivery_info["redelivered"] is True
            received[0].ack()
        assert len(transport.RESCUED) == 0
        assert replica.client().llen(name) == 0
        assert replica.client().hlen("unacked") == 0 or not any(
            name.encode() in v for v in replica.client(decode=False).hvals("unacked")
        )
    except BaseException:
        print(sentinels.logs())
        raise
    finally:
        transport.RESCUED.take()  # what a failed run left would leak into later tests
        if not old_master.running:
            sentinels.restart_as_replica(old_master, of=replica)
