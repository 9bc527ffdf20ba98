"""A web application that imports ``tasks`` to submit analyses loads the app and what a
producer needs, not the worker's side (its tasks, the message gate, the releaser)."""

from __future__ import annotations

import os
import subprocess
import sys

WORKER_SIDE = ("tasks.pipeline", "tasks.batch", "tasks.steptask", "tasks.consumer", "tasks.release")


def _loaded_after(statement: str) -> set[str]:
    code = (
        f"{statement}\nimport sys\nprint(' '.join(m for m in sys.modules if m.startswith('tasks')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_submitting_loads_the_app_and_not_the_worker_side() -> None:
    loaded = _loaded_after("from tasks import submit, submit_batch")
    assert {"tasks.app", "tasks.submit", "tasks.chains"} <= loaded
    assert loaded.isdisjoint(WORKER_SIDE), sorted(loaded & set(WORKER_SIDE))


def test_the_worker_finds_every_task_and_step_by_the_app_alone() -> None:
    # What `celery -A tasks.app worker` does before it consumes: import the app's modules
    # and build its blueprints; the task names producers send must all be registered.
    code = (
        "from tasks.app import app\n"
        "app.loader.import_default_modules()\n"
        "from celery.bootsteps import Blueprint\n"
        "print(' '.join(sorted(n for n in app.tasks if n.startswith('intent.'))))\n"
        "steps = [Blueprint(steps=app.steps[k]).claim_steps() for k in ('worker', 'consumer')]\n"
        "print(' '.join(sorted(n for s in steps for n in s)))\n"
    )
    # The app reads its settings on first use; nothing here connects to this address.
    env = {**os.environ, "INTENT_REDIS_URL": "redis://127.0.0.1:9/0"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    names, steps = (line.split() for line in out.stdout.splitlines())
    from tasks.chains import ANALYSIS_STEP_TASKS, BATCH_STEP_TASKS

    expected = {*ANALYSIS_STEP_TASKS, *BATCH_STEP_TASKS, "intent.analyze", "intent.analyze_batch"}
    assert expected | {"intent.health_check"} <= set(names)
    assert "intent.noop" not in names  # the benchmark's task is the benchmark's
    assert {"tasks.release.ReleaseStep", "tasks.consumer.Watchdog"} <= set(steps)


def _run(code: str) -> str:
    # The app reads its settings on first use; nothing here connects to this address.
    env = {**os.environ, "INTENT_REDIS_URL": "redis://127.0.0.1:9/0"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    return out.stdout.strip()


def test_a_producer_sends_each_link_with_its_own_ignore_result_and_subscribes_to_none() -> None:
    # Without the task modules loaded, Celery would send the first step with its default
    # (store the result) and subscribe to it: every submit() would hold a pub/sub channel.
    code = (
        "import contextlib\n"
        "from unittest import mock\n"
        "from intent.models import IntentRequest\n"
        "from tasks import chains\n"
        "from tasks.app import app\n"
        "subscribed, sent = [], []\n"
        "def subscribe(backend, producer, task_id): subscribed.append(task_id)\n"
        "def publish(amqp, producer, name, message, **options): sent.append(name)\n"
        "def producer(given=None): return contextlib.nullcontext(mock.MagicMock())\n"
        "request = IntentRequest(request_id='r1', client_id='c', context_id='x', pattern_id='p')\n"
        "with mock.patch.object(type(app.backend), 'on_task_call', subscribe), \\\n"
        "        mock.patch.object(app, 'producer_or_acquire', producer), \\\n"
        "        mock.patch.object(type(app.amqp), 'send_task_message', publish):\n"
        "    chains.analysis_chain(request, 'r1').apply_async()\n"
        "links = chains.analysis_chain(request, 'r1').tasks\n"
        "print(sent, subscribed, [link.options.get('ignore_result') for link in links])\n"
    )
    assert _run(code) == "['intent.fetch_context'] [] [True, True, True, False]"


def test_an_error_stored_under_its_earlier_module_comes_back_as_the_trees_class() -> None:
    code = (
        "from tasks.app import app\n"
        "from intent.errors import DetectionConflict\n"
        "stored = {'exc_type': 'DetectionConflict', 'exc_module': 'intent.patterns',"
        " 'exc_message': ['too many concurrent analyses']}\n"
        "error = app.backend.exception_to_python(stored)\n"
        "print(type(error) is DetectionConflict)\n"
    )
    assert _run(code) == "True"
