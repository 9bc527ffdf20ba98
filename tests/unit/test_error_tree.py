"""Every exception class defined anywhere in ``intent/`` is in the one tree (intent/errors.py,
rooted at IntentError): a new one outside it fails here."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import intent
from intent import errors
from intent.errors import IntentError


def intent_modules() -> list[str]:
    return ["intent", *(m.name for m in pkgutil.walk_packages(intent.__path__, "intent."))]


def exception_classes() -> dict[str, type[BaseException]]:
    """Each exception class defined in an intent module (at module level or in a class),
    by its qualified name."""
    found: dict[str, type[BaseException]] = {}

    def collect(owner: object, module: str) -> None:
        for value in vars(owner).values():
            if inspect.isclass(value) and value.__module__ == module:
                if issubclass(value, BaseException):
                    found[f"{module}.{value.__qualname__}"] = value
                if value is not owner:
                    collect(value, module)

    for name in intent_modules():
        collect(importlib.import_module(name), name)
    return found


def test_every_exception_class_in_intent_derives_from_intent_error() -> None:
    classes = exception_classes()
    outside = sorted(name for name, cls in classes.items() if not issubclass(cls, IntentError))
    assert outside == []
    # The walk sees the whole package: the tree's own classes and those defined elsewhere.
    assert "intent.errors.ServiceUnavailableError" in classes
    assert "intent.breaker.stores.base.StoreUnavailable" in classes
    assert len(classes) > 20


def test_no_exception_class_hides_inside_a_function() -> None:
    """Classes defined in a function body escape the walk above: none may be an error."""
    root = Path(intent.__file__).parent
    hidden = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, ast.ClassDef) and any(
                    ast.unparse(base).endswith(("Error", "Exception", "Conflict", "Later"))
                    for base in inner.bases
                ):
                    hidden.append(f"{path.relative_to(root)}:{inner.lineno} {inner.name}")
    assert hidden == []


@pytest.mark.parametrize(
    ("name", "base"),
    [
        ("SettingsError", ValueError),  # as it was: callers catching ValueError still do
        ("DetectionConflict", IntentError),
    ],
)
def test_the_moved_errors_are_in_the_tree_and_keep_their_old_bases(
    name: str, base: type[BaseException]
) -> None:
    cls = getattr(errors, name)
    assert issubclass(cls, IntentError) and issubclass(cls, base)
    assert not cls.transient  # permanent: retrying a bad setting or a conflict cannot help


def test_settings_error_is_still_importable_from_settings() -> None:
    from intent.settings import SettingsError

    assert SettingsError is errors.SettingsError
