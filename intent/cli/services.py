"""``intent worker``, ``beat``, ``admin``, ``flower``, ``reference`` and ``redis``: the
long-running processes of the service, each in the foreground."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

from intent.settings import get_settings


def require(*modules: str) -> None:
    """Before exec'ing into one: a missing service package is told by ``intent.cli.main``."""
    for name in modules:
        if importlib.util.find_spec(name) is None:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


def _cmd_worker(args: argparse.Namespace) -> int:
    require("celery")
    get_settings()  # a settings error is told here, not by Celery's traceback
    # The queues are the app's (celeryconfig.task_queues); Celery's own options pass on.
    argv = [sys.executable, "-m", "celery", "-A", "tasks.app", "worker"]
    argv += ["-P", args.pool, "-c", str(args.concurrency), "--loglevel", args.loglevel]
    argv += args.celery_options
    os.execv(sys.executable, argv)  # noqa: S606  # become the worker: signals reach Celery
    return 0  # pragma: no cover - execv does not return


def _cmd_beat(args: argparse.Namespace) -> int:
    require("celery", "redbeat")
    get_settings().require_redis_url()  # the schedule and its lock live in Redis
    argv = [sys.executable, "-m", "celery", "-A", "tasks.app", "beat", "--loglevel", args.loglevel]
    os.execv(sys.executable, argv)  # noqa: S606  # become beat: signals reach Celery
    return 0  # pragma: no cover - execv does not return


def _cmd_admin(args: argparse.Namespace) -> int:
    from intent.ops import admin

    return admin.run(args)


def _cmd_flower(args: argparse.Namespace) -> int:
    from intent.ops import flower

    return flower.run(args)


def _cmd_reference(args: argparse.Namespace) -> int:
    from intent.reference import run_forever

    run_forever(args.host, args.context_port, args.prediction_port)
    return 0


def _cmd_redis(args: argparse.Namespace) -> int:
    from intent.embedded import EmbeddedRedis
    from intent.lifecycle import until_stopped

    with EmbeddedRedis(port=args.port) as server:
        print(f"INTENT_REDIS_URL={server.url}", flush=True)
        until_stopped()
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    worker = sub.add_parser("worker", help="run a Celery worker for the pipeline")
    worker.add_argument("--pool", default="prefork")
    worker.add_argument("--concurrency", type=int, default=os.cpu_count() or 2)
    worker.add_argument("--loglevel", default="INFO")
    worker.epilog = (
        "Other options are Celery's (celery worker --help): -n, --max-tasks-per-child..."
    )
    worker.set_defaults(func=_cmd_worker, celery_options=[])

    beat = sub.add_parser("beat", help="run celery beat: the periodic health check (one at a time)")
    beat.add_argument("--loglevel", default="INFO")
    beat.set_defaults(func=_cmd_beat)

    admin = sub.add_parser(
        "admin", help="serve /health, /admin/circuits, /admin/ratelimits, /metrics"
    )
    admin.add_argument("--host", default=None, help="default INTENT_ADMIN_HOST (127.0.0.1)")
    admin.add_argument("--port", type=int, default=None, help="default INTENT_ADMIN_PORT (8000)")
    admin.set_defaults(func=_cmd_admin)

    flower = sub.add_parser("flower", help="run Flower, the Celery monitor (basic auth on)")
    flower.add_argument("--port", type=int, default=None, help="default INTENT_FLOWER_PORT (5555)")
    flower.add_argument(
        "--address", default=None, help="default all; without auth 127.0.0.1, loopback only"
    )
    flower.set_defaults(func=_cmd_flower)

    ref = sub.add_parser("reference", help="serve the reference Context and Prediction services")
    ref.add_argument("--host", default="127.0.0.1")
    ref.add_argument("--context-port", type=int, default=8001)
    ref.add_argument("--prediction-port", type=int, default=8002)
    ref.set_defaults(func=_cmd_reference)

    red = sub.add_parser("redis", help="run an embedded Valkey server in the foreground")
    red.add_argument("--port", type=int, default=None)
    red.set_defaults(func=_cmd_redis)
