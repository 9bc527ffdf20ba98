"""Celery settings for the intent pipeline, all derived from ``intent.settings``.

Loaded lazily by ``tasks.app`` (``config_from_object``), so importing the app does not
need a Redis URL until the app is used.
"""

from celeryqueues import queue_settings as _queue_settings
from intent.settings import get_settings as _get_settings
from intent.settings import is_sentinel_url as _is_sentinel_url
from intent.settings import sentinel_target as _sentinel_target

_settings = _get_settings()  # underscored: not a Celery setting


def _through_sentinel(url: str, options: dict) -> str:
    """A Sentinel URL (either form, see intent.connections.sentinel_target) in Celery's
    form, the master's name and the Sentinels' timeouts added to ``options`` (the broker's
    or the result backend's transport options); any other URL as it is."""
    if not _is_sentinel_url(url):
        return url
    target = _sentinel_target(url, _settings.sentinel_master)
    timeout = _settings.redis_socket_timeout
    options["master_name"] = target.service_name
    options["sentinel_kwargs"] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    return target.celery_url()


broker_url = _settings.effective_broker_url
result_backend = _settings.effective_result_backend

# JSON only, both ways: no pickle anywhere.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# At-least-once: ack after the task ran, and requeue when the worker process died.
task_acks_late = True
task_reject_on_worker_lost = True
# I/O-bound tasks: take one message at a time, so a slow downstream does not hoard work.
worker_prefetch_multiplier = 1

task_soft_time_limit = _settings.task_soft_time_limit
task_time_limit = _settings.task_time_limit
result_expires = _settings.result_expires

# Redis broker: a message unacked for visibility_timeout (its worker died) is delivered
# again. No message waits in a worker (waiting steps are parked in Redis, intent/waiting.py),
# so the default is one run plus a margin; each worker sweeps for such messages every
# broker_restore_interval seconds (kombu's default sweep is every 100 s), and a sweeper that
# dies mid-sweep holds the sweep's lock for 15 s at most. An amqp:// broker ignores these
# (py-amqp drops unknown transport options): RabbitMQ redelivers a dead consumer's
# messages as soon as its connection drops.
broker_transport_options = {
    "visibility_timeout": _settings.effective_visibility_timeout,
    "unacked_restore_interval": _settings.broker_restore_interval,
    "unacked_restore_throttle": 1,
    "unacked_mutex_expire": 15,
    "socket_connect_timeout": _settings.redis_socket_timeout,
}
# Through Redis Sentinel (sentinel://host:port;sentinel://host:port, INTENT_SENTINEL_MASTER):
# the same options, with the master's name and the Sentinels' timeouts.
broker_url = _through_sentinel(broker_url, broker_transport_options)
broker_connection_retry_on_startup = True
# A worker whose broker went away tries again every INTENT_BROKER_RECONNECT_INTERVAL for as
# long as it takes (tasks/connection.py), rather than give up after 100 attempts.
broker_connection_max_retries = None

# A Redis restart of up to redis_outage_tolerance seconds fails nothing in flight: every
# publish (a chain's next step, a waiting step's release, submit()) retries that long, and
# so do result stores and a waiting caller's subscription.
task_publish_retry = True
task_publish_retry_policy = _settings.publish_retry_policy
result_backend_always_retry = True
result_backend_base_sleep_between_retries_ms = 100
result_backend_max_sleep_between_retries_ms = 2000
result_backend_max_retries = int(_settings.redis_outage_tolerance) + 10  # ~1 s each
result_backend_transport_options = {
    "retry_policy": {
        "max_retries": int(_settings.redis_outage_tolerance) + 10,
        "interval_start": 0,
        "interval_step": 1,
        "interval_max": 1,
    },
}
result_backend = _through_sentinel(result_backend, result_backend_transport_options)
if result_backend.startswith(("redis://", "rediss://", "unix://")):
    # The same keys as Celery's, each failure with a JSON error object too (tasks/backend.py).
    result_backend = "tasks.backend:RedisBackend+" + result_backend
elif result_backend.startswith("sentinel://"):
    result_backend = "tasks.backend:SentinelBackend+" + result_backend

task_default_queue = _settings.queue
# A worker consumes these (no -Q): INTENT_QUEUE and the client default, classic queues as a
# plain Celery client declares them, or with INTENT_QUEUE_TYPE=quorum RabbitMQ quorum
# queues, per-consumer prefetch and native delayed delivery (celeryqueues.py).
globals().update(_queue_settings(_settings))
# Every task message passes a gate before Celery handles it (tasks/consumer.py): a bad one
# is answered and dead-lettered, never able to crash or wedge the worker.
worker_consumer = "tasks.consumer:Consumer"
worker_send_task_events = True
task_send_sent_event = True

# celery beat (`intent beat`): the health check every health_interval seconds, dropped if
# it waited a whole interval. celery-redbeat keeps the schedule in Redis and holds a lock
# there, so a second beat waits instead of scheduling too; the lock lives 5 loop
# intervals, so a beat that died is replaced within that.
# (tasks.beat.Scheduler gives redbeat its Redis URL in the beat process only.)
beat_scheduler = "tasks.beat:Scheduler"
beat_max_loop_interval = min(5.0, _settings.health_interval)
beat_schedule = {
    "health-check": {
        "task": "intent.health_check",
        "schedule": _settings.health_interval,
        "options": {"expires": _settings.health_interval},
    }
}
