"""A task that returns its input: the bare chain bench/pipeline.py compares against.

Registered only in the benchmark's worker (``Stack(include=["bench.noop"])``), not in the
production app."""

from typing import Any

from tasks.app import app


@app.task(name="intent.noop")
def noop(payload: Any) -> Any:
    return payload
