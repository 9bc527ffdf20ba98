"""``intent admin``: the admin endpoint wired to this deployment (workers found by a
Celery ping, metrics from every worker process)."""

from __future__ import annotations

import argparse

from intent.admin import AdminApp, serve
from intent.admin.exposition import exposition
from intent.health import HealthChecker
from intent.logs import configure_logging
from intent.runtime import get_runtime


def build_app() -> AdminApp:
    from tasks.health import ping_workers  # Celery, loaded by this command alone

    rt = get_runtime()
    settings = rt.settings
    token = settings.admin_token.get_secret_value() if settings.admin_token else None
    circuits = rt.circuits
    return AdminApp(
        health=HealthChecker(
            settings,
            rt.redis,
            rt.keys,
            ping_workers,
            circuits,
            guard_for=lambda service: rt.breaker(service).probe,
        ),
        circuits=circuits,
        rate_limits=rt.rate_limits,
        metrics=lambda: exposition(rt, circuits=circuits),
        token=token,
        waiting=rt.waiting.depth,
        drills=rt.drill_store,
        retry_budget=rt.retry_budget,
    )


def run(args: argparse.Namespace) -> int:
    settings = get_runtime().settings
    configure_logging(settings, "admin")
    host = args.host or settings.admin_host
    port = args.port or settings.admin_port
    serve(build_app(), host, port)
    return 0
