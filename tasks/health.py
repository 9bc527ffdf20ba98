"""``intent.health_check``: the periodic health snapshot, run by celery beat.

Beat sends it every ``INTENT_HEALTH_INTERVAL`` seconds with ``expires`` of one interval, so
a run that waited in the queue past its interval is dropped rather than run late (the next
one is already on its way). The schedule lives in celeryconfig (``beat_schedule``); the
scheduler is celery-redbeat's, whose Redis lock lets one beat schedule at a time.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from intent.forks import ForkLocal
from intent.health import HealthChecker
from intent.runtime import get_runtime
from tasks.app import app


def ping_workers(timeout: float) -> Iterable[str]:
    """Names of the workers that answer a broadcast ping within ``timeout`` seconds."""
    replies = app.control.ping(timeout=timeout) or []
    return [name for reply in replies for name in reply]


def _new_checker() -> HealthChecker:
    rt = get_runtime()
    return HealthChecker(
        rt.settings,
        rt.redis,
        rt.keys,
        ping_workers,
        rt.circuits,
        guard_for=lambda s: rt.breaker(s).probe,
    )


_checker: ForkLocal[HealthChecker] = ForkLocal(_new_checker)


def health_checker() -> HealthChecker:
    """This process's checker, built once (a forked child builds its own)."""
    checker = _checker.get()
    if checker.redis is not get_runtime().redis:  # the runtime was rebuilt: so is the checker
        _checker.forget()
        checker = _checker.get()
    return checker


@app.task(name="intent.health_check", ignore_result=True)
def health_check() -> dict[str, Any]:
    """Check every component, store the snapshot (TTL) and log status changes."""
    return health_checker().run()
