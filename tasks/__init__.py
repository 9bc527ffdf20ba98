"""Celery wiring of the intent pipeline: the app, the tasks and ``submit()``.

``from tasks import submit`` loads the app and what a producer needs (``tasks.submit``,
``tasks.chains``); the worker's task modules load when a worker starts (the app's
``include``).
"""

from tasks.submit import Analysis, AnalysisTimeout, submit, submit_batch

__all__ = ["Analysis", "AnalysisTimeout", "submit", "submit_batch"]
