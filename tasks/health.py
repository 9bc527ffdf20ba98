"""``intent.health_check``: the periodic health snapshot, run by celery beat.

Beat sends it every ``INTENT_HEALTH_INTERVAL`` seconds with ``expires`` of one interval, so
a run that waited in the queue past its interval is dropped rather than run late (the next
one is already on its way). The schedule lives in celeryconfig (``beat_schedule``); the
scheduler is celery-redbeat's, whose Redis lock lets one beat schedule at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError

from intent.forks import ForkLocal
from intent.health import HealthChecker
from intent.runtime import get_runtime
from tasks.app import app


def ping_workers(
    timeout: float, destination: Sequence[str] | None = None, via: Celery | None = None
) -> list[str]:
    """Names of the workers (of ``destination``, else all) that answer a ping within
    ``timeout`` seconds, through ``via`` (default: this app and its broker)."""
    control = (via or app).control
    replies = control.ping(destination=list(destination) if destination else None, timeout=timeout)
    return [name for reply in replies or [] for name in reply]


def worker_answers(name: str, timeout: float = 0.5, broker_url: str | None = None) -> bool:
    """Whether worker ``name`` answers a ping; ``False`` while its broker cannot be reached
    (one that restarted: the next ping reconnects). ``broker_url`` asks another broker than
    this process's settings name (``intent up``'s children get theirs at start)."""
    via = Celery("intent-probe", broker=broker_url) if broker_url else app
    try:
        return name in ping_workers(timeout, [name], via)
    except (OperationalError, *via.connection_for_write().connection_errors):
        return False
    finally:
        if via is not app:
            via.close()


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
