"""The Celery application of the intent pipeline (``celery -A tasks.app worker``)."""

from celery import Celery

app = Celery("intent", include=["tasks.pipeline", "tasks.batch", "tasks.noop", "tasks.health"])
app.config_from_object("celeryconfig")
