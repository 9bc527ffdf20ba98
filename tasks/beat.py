"""The beat scheduler: celery-redbeat's, told where its Redis is only in the beat process.

Celery's ``inspect conf`` (and Flower's worker page) show every configuration key and
mask only the broker and result backend URLs; a ``redbeat_redis_url`` in the shared
configuration would show the Redis password to anyone who can ask a worker.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from redbeat import RedBeatScheduler
from redbeat.schedulers import RedBeatConfig, get_redis

from intent.keys import Keys
from intent.settings import get_settings


def configure(app: Celery) -> None:
    """Give redbeat its Redis and key prefix (in this process's configuration only)."""
    settings = get_settings()
    app.conf.redbeat_redis_url = settings.require_redis_url()
    app.conf.redbeat_key_prefix = Keys(settings.key_prefix).beat
    app.conf.redbeat_redis_options = {}  # not the broker's transport options


class Scheduler(RedBeatScheduler):
    """RedBeatScheduler with its Redis and key prefix from the service's settings."""

    def __init__(self, app: Celery, **kwargs: Any):
        configure(app)
        super().__init__(app, **kwargs)


def lock_held(app: Celery) -> bool:
    """Whether some beat holds the schedule's lock, i.e. the schedule is running (the
    compose file's beat health check)."""
    configure(app)
    lock_key = RedBeatConfig(app).lock_key
    return bool(get_redis(app).exists(lock_key))
