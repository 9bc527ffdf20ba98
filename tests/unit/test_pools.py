"""What a threads or gevent worker shares between its tasks: the runtime's members built
once however many tasks first ask at the same moment, tracing decided once, and the
running step's soft time limit (``intent.pools``) that the pool itself does not enforce."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from intent import pools, tracing
from intent.errors import TimeLimitReached
from intent.once import once_property
from intent.runtime import Runtime
from intent.settings import Settings
from tasks.pools import pool_kind, soft_time_limit, time_limited

THREADS = 32


def at_once(work: Callable[[], Any], threads: int = THREADS) -> list[Any]:
    """``work()`` in ``threads`` threads released together; their answers (errors raised)."""
    barrier = threading.Barrier(threads)
    answers: list[Any] = [None] * threads

    def run(index: int) -> None:
        barrier.wait()
        try:
            answers[index] = work()
        except BaseException as exc:
            answers[index] = exc

    started = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for thread in started:
        thread.start()
    for thread in started:
        thread.join(30)
    return answers


@pytest.fixture(autouse=True)
def prefork_afterwards() -> Any:
    yield
    pools.declare("prefork", 1)


def test_a_once_property_is_built_by_one_thread_of_many() -> None:
    built: list[object] = []

    class Holder:
        @once_property
        def member(self) -> object:
            time.sleep(0.05)  # long enough for every thread to arrive while it builds
            value = object()
            built.append(value)
            return value

    holder = Holder()
    answers = at_once(lambda: holder.member)
    assert len(built) == 1
    assert all(answer is built[0] for answer in answers)
    assert Holder().member is not built[0]  # once per object, not per class


def test_a_once_property_may_build_from_another_in_the_same_thread() -> None:
    class Holder:
        @once_property
        def inner(self) -> int:
            return 1

        @once_property
        def outer(self) -> int:
            return self.inner + 1  # the object's lock is re-entrant

    assert at_once(lambda: Holder().outer, threads=4) == [2, 2, 2, 2]


def test_the_runtime_builds_one_of_each_member_for_all_its_tasks() -> None:
    runtime = Runtime(Settings(redis_url="redis://127.0.0.1:9/0"))

    def members() -> tuple[Any, ...]:
        return (
            runtime.breaker("context-service"),
            runtime.breaker("prediction-service"),
            runtime.clients,
            runtime.rate_limits,
            runtime.drills,
            runtime.breaker_store,
            runtime.redis,
        )

    answers = at_once(members)
    assert not [a for a in answers if isinstance(a, BaseException)], answers
    first = answers[0]
    for answer in answers:
        assert all(mine is theirs for mine, theirs in zip(answer, first, strict=True))
    assert runtime.breaker("context-service") is not runtime.breaker("prediction-service")
    runtime.close()


def test_tracing_is_decided_once_however_many_tasks_start_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    builds: list[int] = []

    class Provider:
        def shutdown(self) -> None:
            pass

    def build(settings: Settings, exporter: Any, pid: int) -> Any:
        time.sleep(0.05)
        builds.append(pid)
        return tracing._Tracing(pid, Provider(), None)

    monkeypatch.setattr(tracing, "_build", build)
    tracing.stop()
    try:
        answers = at_once(lambda: tracing.start(Settings(tracing=True)))
        assert answers == [True] * THREADS  # none was told "off" while another built
        assert len(builds) == 1
    finally:
        tracing.stop()


def test_the_step_time_limit_is_each_threads_own() -> None:
    def limited(seconds: float) -> tuple[float | None, float | None]:
        with pools.step_time_limit(seconds):
            time.sleep(0.01)
            inside = pools.remaining()
        return inside, pools.remaining()

    answers = at_once(lambda: limited(float(threading.get_ident() % 7 + 1)), threads=8)
    for inside, after in answers:
        assert inside is not None and 0 < inside < 8
        assert after is None
    assert pools.remaining() is None


def test_a_step_out_of_time_is_told_so_and_its_waits_are_cut() -> None:
    with pools.step_time_limit(0.2):
        assert pools.capped(10.0)[1] is True
        assert pools.capped(10.0)[0] <= 0.2
        assert pools.capped(0.05) == (0.05, False)
        started = time.monotonic()
        with pytest.raises(TimeLimitReached) as info:
            pools.sleep(5.0, "a drill's latency")
        assert 0.15 <= time.monotonic() - started < 1.0
        with pytest.raises(TimeLimitReached):
            pools.check("a call")
    assert info.value.seconds == 0.2
    assert "a drill's latency" in str(info.value)
    pools.check("no limit outside")  # nothing raised
    assert pools.capped(10.0) == (10.0, False)
    with pools.step_time_limit(None):
        assert pools.remaining() is None


def test_the_pool_sizes_what_its_tasks_share() -> None:
    assert pools.declare("threads", 32).tasks_per_process == 32
    assert pools.current().enforces_soft_time_limit is False
    assert pools.declare("gevent", 100).tasks_per_process == 100
    assert pools.declare("prefork", 4).tasks_per_process == 1
    assert pools.current().enforces_soft_time_limit is True
    from intent.clients import ServiceClients

    settings = Settings(http_pool_size=10)
    pools.declare("threads", 32)
    clients = ServiceClients(settings)
    assert clients.context.pool_size == clients.prediction.pool_size == 32
    clients.close()
    pools.declare("prefork", 4)
    clients = ServiceClients(settings)
    assert clients.context.pool_size == 10
    clients.close()


def test_the_worker_names_its_pool_whatever_form_celery_gives_it() -> None:
    from celery.concurrency.gevent import TaskPool as GeventPool
    from celery.concurrency.prefork import TaskPool as PreforkPool
    from celery.concurrency.thread import TaskPool as ThreadPool

    assert pool_kind(ThreadPool) == "threads"
    assert pool_kind(GeventPool) == "gevent"
    assert pool_kind(PreforkPool) == "prefork"
    assert pool_kind("threads") == "threads"
    assert pool_kind("gevent") == "gevent"
    assert pool_kind("solo") == "solo"


def task(timelimit: Any = None, soft: float | None = None, conf_soft: float = 40.0) -> Any:
    return SimpleNamespace(
        request=SimpleNamespace(timelimit=timelimit),
        soft_time_limit=soft,
        app=SimpleNamespace(conf=SimpleNamespace(task_soft_time_limit=conf_soft)),
    )


def test_a_tasks_soft_limit_is_its_messages_then_its_own_then_the_apps() -> None:
    assert soft_time_limit(task((9, 7), soft=5)) == 7
    assert soft_time_limit(task((9, None), soft=5)) == 5
    assert soft_time_limit(task(None)) == 40.0


def test_the_soft_limit_is_added_only_where_the_pool_lacks_it() -> None:
    pools.declare("prefork", 4)
    with time_limited(task(conf_soft=3.0)):
        assert pools.remaining() is None  # the pool process gets Celery's signal
    pools.declare("threads", 16)
    with time_limited(task(conf_soft=3.0)):
        left = pools.remaining()
        assert left is not None and 2.5 < left <= 3.0
    assert pools.remaining() is None


def test_a_step_out_of_time_meets_the_error_prefork_gives_it() -> None:
    from celery.exceptions import SoftTimeLimitExceeded

    from intent.errors import ServiceUnavailableError
    from tasks.steptask import step_error

    reached = TimeLimitReached("prediction-service POST /api/v1/predict", 2.0)
    error, prefork = step_error("predict", reached), step_error("predict", SoftTimeLimitExceeded())
    assert isinstance(error, ServiceUnavailableError) and error.transient
    assert isinstance(prefork, ServiceUnavailableError)
    assert (error.service, error.reason) == (prefork.service, prefork.reason)
    assert str(error) == "Service predict is unavailable: soft time limit exceeded"
