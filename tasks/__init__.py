"""Celery wiring of the intent pipeline: the app, the tasks and ``submit()``."""

from tasks.batch import submit_batch
from tasks.submit import Analysis, submit

__all__ = ["Analysis", "submit", "submit_batch"]
