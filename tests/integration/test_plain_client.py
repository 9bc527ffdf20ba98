"""A web app that has only Celery: it sends ``intent.analyze`` by name, with no queue and
none of this project's code, keeps the request_id, and reads results and errors as JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import jsonschema
import pytest
import redis

from intent import schemas
from tests.helpers import request

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefork_worker")]

# Runs in its own interpreter where this project cannot be imported: what it learns, it
# learns from the result backend's JSON alone.
WEB_APP = r"""
import json, sys
sys.modules["intent"] = None  # not installed, as far as this client knows
sys.modules["tasks"] = None
from celery import Celery

url, good, bad = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
client = Celery("webapp", broker=url, backend=url)  # Celery's defaults: queue "celery"
out = {}
sent = client.send_task("intent.analyze", args=[good])
out["result"] = sent.get(timeout=60)
out["by_request_id"] = client.AsyncResult(good["request_id"]).get(timeout=10)
out["duplicate"] = client.send_task("intent.analyze", args=[good]).get(timeout=30)
refused = client.send_task("intent.analyze", args=[bad])
refused.get(timeout=30, propagate=False)
out["refused_state"] = refused.state
out["refused_args"] = refused.result.args  # the rebuilt exception, a class it never saw
print(json.dumps(out, default=repr))
"""


def run_web_app(url: str, good: dict[str, Any], bad: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", WEB_APP, url, json.dumps(good), json.dumps(bad)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_plain_celery_client_without_a_queue_gets_results_and_json_errors(
    clean: redis.Redis, redis_url: str
) -> None:
    good = request()
    bad = {**request(), "client_id": "has spaces"}
    out = run_web_app(redis_url, good, bad)

    assert out["result"]["status"] == "completed"
    assert out["result"]["request"]["request_id"] == good["request_id"]
    # Found by request_id, though the analysis ran under send_task's own id.
    assert out["by_request_id"] == out["result"]
    # A duplicate answers in the shape of every result, pointing at the first analysis.
    duplicate = out["duplicate"]
    assert duplicate["status"] == "duplicate"
    assert set(duplicate) == set(out["result"])
    assert duplicate["duplicate_of"] and duplicate["duplicate_of"] != good["request_id"]
    # The refusal is a failure whose JSON error object names the field.
    assert out["refused_state"] == "FAILURE"
    (error,) = out["refused_args"]
    assert error["type"] == "ValidationError"
    assert error["field"] == "client_id"
    assert "client_id" in error["message"]
    # Each answer is what the published schemas say.
    for name, instance in (("result", out["result"]), ("result", duplicate), ("error", error)):
        jsonschema.validate(instance, schemas.schema(name), cls=jsonschema.Draft202012Validator)
