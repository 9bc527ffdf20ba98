"""The one at-fork helper (intent/forks.py), across a real os.fork()."""

from __future__ import annotations

import gc
import itertools
import os
import signal
import threading
import time
from collections.abc import Callable

from intent import forks
from intent.forks import ForkLocal, after_fork_in_child, fresh_lock_in_child


def in_child(body: Callable[[], bytes], timeout: float = 10.0) -> bytes:
    """``body()`` in a forked child; what it returned. A child that hangs (a lock inherited
    held) is killed and answers b"hung"."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write, body())
        finally:
            os._exit(0)
    os.close(write)
    deadline = time.monotonic() + timeout
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read)
            return b"hung"
        time.sleep(0.01)
    with os.fdopen(read, "rb") as pipe:
        return pipe.read()


def test_a_fork_local_is_built_once_per_process() -> None:
    counter = itertools.count()
    local = ForkLocal(lambda: (os.getpid(), next(counter)))
    assert local.peek() is None and not local.built()
    first = local.get()
    assert local.get() is first and local.peek() is first and local.built()

    def child() -> bytes:
        seen = local.peek()  # the parent's value is not the child's
        mine = local.get()
        again = local.get()
        ok = seen is None and mine == (os.getpid(), 1) and again is mine
        return b"ok" if ok else repr((seen, mine, again)).encode()

    assert in_child(child) == b"ok"
    assert local.get() is first  # the parent keeps its own


def test_a_caller_may_say_how_a_missing_value_is_built() -> None:
    local = ForkLocal(lambda: "default")
    assert local.get(lambda: "the caller's") == "the caller's"
    assert local.get(lambda: "another") == "the caller's"  # built once: kept
    assert in_child(lambda: local.get().encode()) == b"default"


def test_a_child_never_gets_its_parents_value_to_close() -> None:
    local = ForkLocal(object)
    parents = local.get()

    def child() -> bytes:
        return b"ok" if local.forget() is None and local.get() is not parents else b"parent's"

    assert in_child(child) == b"ok"
    assert local.forget() is parents
    assert local.get() is not parents  # forgotten: built again


def test_set_replaces_the_value_and_a_set_none_counts_as_built() -> None:
    local: ForkLocal[str | None] = ForkLocal(lambda: "built")
    local.set(None)
    assert local.built() and local.peek() is None and local.get() is None
    assert in_child(lambda: repr((local.built(), local.get())).encode()) == b"(False, 'built')"


def test_a_fork_local_whose_lock_was_held_at_the_fork_still_builds_in_the_child() -> None:
    building, release = threading.Event(), threading.Event()

    def slow() -> int:
        building.set()
        release.wait(10)
        return os.getpid()

    local = ForkLocal(slow)
    thread = threading.Thread(target=local.get)
    thread.start()
    assert building.wait(5)  # the thread holds the lock while it builds

    def child() -> bytes:
        release.set()  # the child's copy of the event: its build need not wait
        return str(local.get() == os.getpid()).encode()

    try:
        assert in_child(child, timeout=5) == b"True"
    finally:
        release.set()
        thread.join()


def test_after_fork_in_child_renews_what_each_live_object_asks_for() -> None:
    class Store:
        def __init__(self) -> None:
            self.lock = threading.Lock()

    store = after_fork_in_child(Store(), lambda s: setattr(s, "lock", threading.Lock()))
    store.lock.acquire()  # held by the parent (as by a thread that does not exist in a child)
    try:
        assert in_child(lambda: b"free" if store.lock.acquire(timeout=2) else b"held") == b"free"
    finally:
        store.lock.release()


def test_a_live_objects_lock_is_a_fresh_one_in_a_child() -> None:
    class Store:
        def __init__(self) -> None:
            self._lock = threading.Lock()
            self.guard = threading.Lock()
            fresh_lock_in_child(self)
            fresh_lock_in_child(self, "guard")  # a second one for the same object

    store = Store()
    with store._lock, store.guard:  # both held by the parent at the fork

        def child() -> bytes:
            free = store._lock.acquire(timeout=2) and store.guard.acquire(timeout=2)
            return b"free" if free else b"held"

        assert in_child(child) == b"free"


def test_an_object_that_is_gone_is_not_renewed() -> None:
    class Thing:
        pass

    renewed: list[Thing] = []
    thing = after_fork_in_child(Thing(), renewed.append)
    key = id(thing)
    assert key in forks._renewals
    del thing
    gc.collect()
    assert key not in forks._renewals
