"""A task that returns its input: the bare chain bench/pipeline.py compares against.

Registered only in the benchmark's worker (``Stack(include=["bench.noop"])``), not in the
production app."""

import time
from typing import Any

from tasks.app import app


@app.task(name="intent.noop")
def noop(payload: Any) -> Any:
    return payload


@app.task(name="intent.noop_wait")
def noop_wait(payload: Any, seconds: float) -> Any:
    """Waits ``seconds`` (as long as one downstream call, for bench/pools.py), then returns
    its input; a gevent worker's patched sleep lets its other tasks run meanwhile."""
    time.sleep(seconds)
    return payload
