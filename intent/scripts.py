"""The one loader of the packaged Lua scripts: every script lives under ``intent/lua/``, named
by what it does (``intent/lua/NAME.lua``); a family of scripts sharing a prelude of helpers
lives in its own subfolder (``intent/lua/breaker/``, prelude ``_common.lua``)."""

from __future__ import annotations

from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable

import redis
from redis.commands.core import Script


def folder(family: str = "") -> Traversable:
    """Where a family's scripts are (the top folder for the service's own)."""
    lua = resources.files("intent").joinpath("lua")
    return lua.joinpath(family) if family else lua


@cache
def script_source(name: str, family: str = "", prelude: str | None = None) -> str:
    """A script's text; with ``prelude``, that script of the family (helpers, key layout)
    in front of it, as Redis runs one self-contained script per call."""
    scripts = folder(family)
    source = scripts.joinpath(f"{name}.lua").read_text()
    if prelude is None:
        return source
    return scripts.joinpath(f"{prelude}.lua").read_text() + "\n" + source


def register(
    client: redis.Redis, name: str, family: str = "", prelude: str | None = None
) -> Script:
    """A callable script: EVALSHA, falling back to EVAL when the server lost it."""
    return client.register_script(script_source(name, family, prelude))
