"""A task that returns its input: the bare chain the pipeline benchmark compares against."""

from typing import Any

from tasks.app import app


@app.task(name="intent.noop")
def noop(payload: Any) -> Any:
    return payload
