"""JSON Schemas of what integrators send and read, generated from the models.

- ``request``: the argument of ``intent.analyze`` (a request dict);
- ``batch-request``: the argument of ``intent.analyze_batch`` (a list of request dicts);
- ``result``: what ``intent.analyze`` answers (also for a duplicate: ``status`` and
  ``duplicate_of``);
- ``batch-result``: what ``intent.analyze_batch`` answers;
- ``error``: a failure's error object (a failed task's ``error``, the rebuilt exception's
  ``args[0]`` for a Celery client without this project's code, a batch item's ``error``).

They are published in ``schemas/`` (``make schemas`` writes them; a test keeps them
equal to the models) and served by the admin endpoint at ``/schemas/{name}.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, TypeAdapter

from intent.models import BatchResult, ErrorInfo, IntentRequest, IntentResult

BASE_URI = "urn:intent-pipeline:schemas:"
Mode = Literal["validation", "serialization"]
_SOURCES: dict[str, tuple[Any, Mode, str]] = {
    "request": (IntentRequest, "validation", "An analysis request: intent.analyze's argument."),
    "batch-request": (
        list[IntentRequest],
        "validation",
        "A batch of analysis requests: intent.analyze_batch's argument.",
    ),
    "result": (IntentResult, "serialization", "An analysis result: what intent.analyze answers."),
    "batch-result": (
        BatchResult,
        "serialization",
        "A batch result: what intent.analyze_batch answers.",
    ),
    "error": (ErrorInfo, "serialization", "A failure's error object."),
}
NAMES = tuple(_SOURCES)


def schema(name: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) called ``name``; KeyError for an unknown name."""
    source, mode, title = _SOURCES[name]
    if isinstance(source, type) and issubclass(source, BaseModel):
        body = source.model_json_schema(mode=mode)
    else:
        body = TypeAdapter(source).json_schema(mode=mode)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"{BASE_URI}{name}",
        "title": title,
        **{key: value for key, value in body.items() if key != "title"},
    }


def text(name: str) -> str:
    return json.dumps(schema(name), indent=2, sort_keys=True) + "\n"


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in NAMES:
        path = directory / f"{name}.json"
        path.write_text(text(name))
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write(Path(sys.argv[1] if len(sys.argv) > 1 else "schemas")):
        print(path)
