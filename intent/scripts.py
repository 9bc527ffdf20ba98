"""Loads the packaged Lua scripts (``intent/lua/*.lua``) and registers each once per client."""

from __future__ import annotations

from functools import cache
from importlib import resources

import redis
from redis.commands.core import Script


@cache
def script_source(name: str) -> str:
    return resources.files("intent").joinpath("lua", f"{name}.lua").read_text()


def register(client: redis.Redis, name: str) -> Script:
    """A callable script: EVALSHA, falling back to EVAL when the server lost it."""
    return client.register_script(script_source(name))
