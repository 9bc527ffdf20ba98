"""Starting and stopping the processes an analysis needs on one machine: Redis (embedded
Valkey unless ``INTENT_REDIS_URL`` is set), the reference services and Celery workers.

Used by ``intent demo``, the benchmarks and the tests; every process started here is
stopped on exit, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence

import requests

from intent.dev.supervisor import Child, spawn, stop_children
from intent.embedded import EmbeddedRedis, free_port
from intent.lifecycle import Background
from intent.runtime import reset_runtime


def _wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(url, timeout=1).ok:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")
        time.sleep(0.05)


STOP_GRACE = 15.0  # seconds a worker has for its warm shutdown


class WorkerProcess:
    """``celery worker -P <pool>`` (prefork unless told) as a child process, in its own
    process group."""

    def __init__(
        self,
        concurrency: int = 2,
        pool: str = "prefork",
        env: Mapping[str, str] | None = None,
        loglevel: str = "WARNING",
        logfile: str | None = None,
        include: Sequence[str] = (),
    ):
        self.name = f"intent-{uuid.uuid4().hex[:8]}@localhost"
        args = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tasks.app",
            "--quiet",
            "worker",
            "-P",
            pool,
            "-c",
            str(concurrency),
            "-n",
            self.name,
            "--loglevel",
            loglevel,
            "--without-gossip",
            "--without-mingle",
        ]
        if logfile:
            args += ["--logfile", logfile]
        if include:  # task modules beyond the app's (a benchmark's own tasks)
            args += ["--include", ",".join(include)]
        self.child = spawn(args, {**os.environ, **(env or {})})
        self.process = self.child.process

    def wait_ready(self, timeout: float = 60.0) -> None:
        from tasks.health import worker_answers

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.child.exited():
                raise RuntimeError(
                    f"worker {self.name} ended before it answered: {self.child.describe_exit()}"
                )
            if worker_answers(self.name):
                return
            time.sleep(0.1)
        raise RuntimeError(f"worker {self.name} did not answer a ping within {timeout:.0f} s")

    def child_pids(self) -> list[int]:
        """The pool's processes (the children of the worker's main process)."""
        try:
            with open(f"/proc/{self.process.pid}/task/{self.process.pid}/children") as fh:
                return [int(pid) for pid in fh.read().split()]
        except OSError:
            return []

    def stop(self) -> None:
        stop_children([self.child], STOP_GRACE)


@contextlib.contextmanager
def running_worker(
    concurrency: int = 2,
    env: Mapping[str, str] | None = None,
    loglevel: str = "WARNING",
    pool: str = "prefork",
    logfile: str | None = None,
) -> Iterator[WorkerProcess]:
    """A worker subprocess (prefork unless ``pool`` says) that answers pings, stopped on
    exit."""
    worker = WorkerProcess(concurrency, pool=pool, env=env, loglevel=loglevel, logfile=logfile)
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.stop()


class Stack(Background):
    """Redis + reference services + worker, as a context manager.

    Sets ``INTENT_REDIS_URL`` and the service URLs in this process's environment (so the
    Celery app and the children see them) and restores the environment on exit.
    """

    def __init__(
        self,
        workers: int = 1,
        concurrency: int = 2,
        reference: bool = True,
        env: Mapping[str, str] | None = None,
        loglevel: str = "WARNING",
        logfile: str | None = None,
        include: Sequence[str] = (),
        pool: str = "prefork",
    ):
        self.logfile = logfile
        self.pool = pool
        self.worker_count = workers
        self.concurrency = concurrency
        self.with_reference = reference
        self.extra_env = dict(env or {})
        self.loglevel = loglevel
        self.include = tuple(include)
        self.redis: EmbeddedRedis | None = None
        self.reference: Child | None = None
        self.workers: list[WorkerProcess] = []
        self._saved_env: dict[str, str | None] = {}
        self.context_url = ""
        self.prediction_url = ""

    def _setenv(self, name: str, value: str) -> None:
        self._saved_env.setdefault(name, os.environ.get(name))
        os.environ[name] = value

    def start(self) -> Stack:
        """Start everything; on a failure part-way, stop what did start, then raise."""
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        for name, value in self.extra_env.items():
            self._setenv(name, value)
        if not os.environ.get("INTENT_REDIS_URL"):
            self.redis = EmbeddedRedis().start()
            self._setenv("INTENT_REDIS_URL", self.redis.url)
        if self.with_reference:
            ports = free_port(), free_port()
            self.reference = spawn(
                [
                    sys.executable,
                    "-m",
                    "intent.cli",
                    "reference",
                    "--context-port",
                    str(ports[0]),
                    "--prediction-port",
                    str(ports[1]),
                ],
                stdout=subprocess.DEVNULL,
            )
            self.context_url = f"http://127.0.0.1:{ports[0]}"
            self.prediction_url = f"http://127.0.0.1:{ports[1]}"
            self._setenv("INTENT_CONTEXT_SERVICE_URL", self.context_url)
            self._setenv("INTENT_PREDICTION_SERVICE_URL", self.prediction_url)
            _wait_http(self.context_url + "/health", 20)
            _wait_http(self.prediction_url + "/health", 20)
        # The Celery app reads its configuration on first use: nothing here has used it
        # yet, so it sees the URLs set above.
        reset_runtime()
        self.workers = [
            WorkerProcess(
                self.concurrency,
                pool=self.pool,
                loglevel=self.loglevel,
                logfile=self.logfile,
                include=self.include,
            )
            for _ in range(self.worker_count)
        ]
        for worker in self.workers:
            worker.wait_ready()

    def stop(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(Exception):
                worker.stop()
        if self.reference is not None:
            stop_children([self.reference], STOP_GRACE)
        if self.redis is not None:
            self.redis.close()
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        reset_runtime()
