"""The worker's pool, and the soft time limit where the pool does not enforce Celery's.

At start a worker declares its pool (``intent.pools.declare``, from ``worker_init``): a
process whose tasks share it sizes its HTTP connection pools by its concurrency (and a
gevent worker's tasks share one result backend, below). Each step of an analysis or a
batch then runs inside :func:`time_limited` (``tasks/pipeline.py``, ``tasks/batch.py``):

- prefork: nothing to add; the pool process gets ``SoftTimeLimitExceeded`` at the soft
  limit and is killed at the hard one;
- threads (and solo, eventlet): no pool can interrupt a task there, so the step runs under
  ``intent.pools.step_time_limit``: every downstream call's timeouts are cut to the time it
  has left, and a call that reaches it ends the step with ``TimeLimitReached``;
- gevent: the same, and a ``gevent.Timeout`` raises ``SoftTimeLimitExceeded`` in the task's
  greenlet at the soft limit wherever it waits (Celery's own gevent pool applies the hard
  limit only).

Either way a step that reaches its soft limit fails with the error prefork gives it
(``tasks.steptask.step_error``) and is retried.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from celery import signals
from celery.exceptions import SoftTimeLimitExceeded

from intent import pools

# Celery's pool modules (celery.concurrency.<module>) by the name -P gives them.
_KINDS = {
    "prefork": "prefork",
    "asynpool": "prefork",
    "thread": "threads",
    "gevent": "gevent",
    "eventlet": "eventlet",
    "solo": "solo",
}


def pool_kind(pool_cls: Any) -> str:
    """The ``-P`` name of a worker's pool: its class, or the name or alias Celery resolves
    to one (``worker_init`` comes before Celery resolves it); a pool of another module is
    named by its module."""
    if isinstance(pool_cls, str):
        from celery import concurrency

        pool_cls = concurrency.get_implementation(pool_cls)
    module = str(getattr(pool_cls, "__module__", "") or "").rsplit(".", 1)[-1]
    return _KINDS.get(module, module or "prefork")


def _concurrency(value: Any) -> int:
    try:
        return max(1, int(value))
    except (TypeError, ValueError):  # "auto", resolved by Celery after worker_init
        return os.cpu_count() or 1


@signals.worker_init.connect
def _declare_pool(sender: Any = None, **_: Any) -> None:
    if sender is None:
        return
    kind = pool_kind(getattr(sender, "pool_cls", None))
    pool = pools.declare(kind, _concurrency(getattr(sender, "concurrency", 1)))
    if pool.kind in ("gevent", "eventlet"):
        # Celery keeps a result backend per thread unless told it is thread-safe, and under
        # gevent a thread is a greenlet, one per task: each task built a backend (a Redis
        # client, its pool, a connection) and threw it away, a tenth of a gevent worker's
        # throughput. Celery's Redis backend is a redis-py client, which tasks may share.
        # (A threads pool reuses its threads: a backend each, built once.)
        sender.app.conf.result_backend_thread_safe = True


@signals.worker_ready.connect
def _tasks_never_join(**_: Any) -> None:
    """A gevent pool lets tasks wait for results (``task_join_will_block`` off), so each
    message a task publishes subscribes its task's result channel in the worker, for a
    result that no task of the pipeline ever waits for (a subscription and a message per
    step, read by nobody). The pipeline's tasks never join: as on prefork and threads."""
    if pools.current().kind in ("gevent", "eventlet"):
        from celery._state import _set_task_join_will_block

        _set_task_join_will_block(True)


def soft_time_limit(task: Any) -> float | None:
    """The soft time limit of the task's current run: its message's, else the task's, else
    the app's (``INTENT_TASK_SOFT_TIME_LIMIT``)."""
    limits = getattr(task.request, "timelimit", None) or (None, None)
    soft = limits[1] if len(limits) > 1 else None
    if soft is None:
        soft = task.soft_time_limit
    if soft is None:
        soft = task.app.conf.task_soft_time_limit
    return float(soft) if soft else None


@contextlib.contextmanager
def time_limited(task: Any) -> Iterator[None]:
    """Run the task under its soft time limit where the pool does not enforce it."""
    pool = pools.current()
    if pool.enforces_soft_time_limit:
        yield
        return
    limit = soft_time_limit(task)
    with contextlib.ExitStack() as stack:
        stack.enter_context(pools.step_time_limit(limit))
        if limit and pool.kind == "gevent":
            from gevent import Timeout

            stack.enter_context(Timeout(limit, SoftTimeLimitExceeded(limit)))
        yield
