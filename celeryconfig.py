"""Celery settings for the intent pipeline, all derived from ``intent.settings``.

Loaded lazily by ``tasks.app`` (``config_from_object``), so importing the app does not
need a Redis URL until the app is used.
"""

from intent.settings import get_settings as _get_settings

_settings = _get_settings()  # underscored: not a Celery setting

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

# Redis broker: an unacked message (a running task, or one waiting for its countdown) is
# redelivered after visibility_timeout; settings refuse a value below the longest
# countdown plus the hard time limit, so a scheduled retry never runs twice. An amqp://
# broker ignores the option (py-amqp drops unknown transport options); RabbitMQ's bound on
# an unacked message is its server-side consumer_timeout (README: RabbitMQ as the broker).
broker_transport_options = {"visibility_timeout": _settings.visibility_timeout}
broker_connection_retry_on_startup = True

task_default_queue = _settings.queue
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
