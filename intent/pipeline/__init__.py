"""An analysis as plain functions: its steps, the batch's steps, intake, the one recovery
decision for a failed step, and the in-process run (``intent submit --local``).

Imports point down only: the Celery layer (``tasks/``) calls in here, never the reverse.
"""
