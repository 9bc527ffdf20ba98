"""The one Lua loader and its folder convention: every script under intent/lua/."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

import redis

from intent import scripts
from intent.breaker.stores.redis import SCRIPT_FAMILY, SCRIPT_PRELUDE, RedisStore

ROOT = Path(__file__).resolve().parents[2]
LUA = ROOT / "intent" / "lua"


def test_every_script_of_the_package_is_under_intent_lua() -> None:
    everywhere = sorted((ROOT / "intent").rglob("*.lua"))
    assert everywhere, "no packaged scripts found"
    assert [p for p in everywhere if LUA not in p.parents] == []


def test_the_package_data_ships_every_script() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = project["tool"]["setuptools"]["package-data"]["intent"]
    for path in LUA.rglob("*.lua"):
        relative = path.relative_to(ROOT / "intent").as_posix()
        assert any(fnmatch.fnmatch(relative, glob) for glob in globs), relative


def test_a_script_is_read_from_intent_lua() -> None:
    source = scripts.script_source("pattern_commit")
    assert source == (LUA / "pattern_commit.lua").read_text()


def test_the_breaker_store_loads_its_scripts_with_their_prelude_through_the_one_loader() -> None:
    family = LUA / SCRIPT_FAMILY
    prelude = (family / f"{SCRIPT_PRELUDE}.lua").read_text()
    store = RedisStore(redis.Redis())  # registering a script computes its SHA, sends nothing
    for name, script in [
        ("acquire", store._acquire),
        ("report", store._report),
        ("snapshot", store._snapshot),
        ("transition", store._transition),
    ]:
        assert script.script == prelude + "\n" + (family / f"{name}.lua").read_text()
        assert script.script == scripts.script_source(name, SCRIPT_FAMILY, SCRIPT_PRELUDE)
    assert scripts.folder(SCRIPT_FAMILY).joinpath("acquire.lua").is_file()
