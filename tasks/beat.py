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
from intent.settings import get_settings, is_sentinel_url, sentinel_target


def configure(app: Celery) -> None:
    """Give redbeat its Redis and key prefix (in this process's configuration only)."""
    settings = get_settings()
    url = settings.require_redis_url()
    app.conf.redbeat_key_prefix = Keys(settings.key_prefix).beat
    app.conf.redbeat_redis_options = {}  # not the broker's transport options
    if is_sentinel_url(url):
        # redbeat's own Sentinel form: a redis-sentinel:// URL, the Sentinels as options.
        target = sentinel_target(url, settings.sentinel_master)
        timeout = settings.redis_socket_timeout
        app.conf.redbeat_redis_url = "redis-sentinel://"
        app.conf.redbeat_redis_options = {
            "sentinels": list(target.sentinels),
            "service_name": target.service_name,
            "db": target.db,
            "password": target.password,
            "username": target.username,
            "socket_timeout": timeout,
            "sentinel_kwargs": {"socket_timeout": timeout, "socket_connect_timeout": timeout},
        }
        return
    app.conf.redbeat_redis_url = url


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
