"""The domain package stays free of Celery: importable and testable without a broker."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import intent


def test_no_intent_module_imports_celery() -> None:
    modules = [m.name for m in pkgutil.walk_packages(intent.__path__, "intent.")]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('celery', 'kombu'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
    assert len(modules) > 10
