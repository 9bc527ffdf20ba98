"""The ``intent`` command: one module per command group, as ``celery/bin/`` has.

``import intent.cli`` pulls in no Celery: the commands that need it import ``tasks`` when
they run.
"""

from intent.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
