"""Celery wiring of the intent pipeline: the app, the tasks and ``submit()``."""

from tasks.submit import Analysis, submit

__all__ = ["Analysis", "submit"]
