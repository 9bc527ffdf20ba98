"""The README's runnable commands, run as printed against ``intent up``.

A fenced block right after a ``<!-- runnable -->`` line is run line by line (a trailing
backslash continues a line) with bash, from the repository's root, in a shell that has
only the ``export`` lines ``intent up`` printed plus the two secrets the README tells the
user to set. Each command must exit 0 (the curl lines use ``-f``: an HTTP error fails).
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from intent.embedded import die_with_parent

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MARKER = "<!-- runnable -->"
EXPORT = re.compile(r"^\s+export (INTENT_[A-Z_]+)=(\S+)$")
SECRETS = {
    "INTENT_ADMIN_TOKEN": f"tok-{uuid.uuid4().hex}",
    "INTENT_FLOWER_BASIC_AUTH": f"ops:pw-{uuid.uuid4().hex}",
}


def runnable_commands(text: str) -> list[str]:
    """Every command of the blocks marked runnable, in the README's order."""
    commands: list[str] = []
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        fence = lines[index + 1]
        assert fence.startswith("```"), f"README line {index + 2}: {MARKER} needs a fence next"
        pending = ""
        for body in lines[index + 2 :]:
            if body.startswith("```"):
                break
            if body.endswith("\\"):
                pending += body[:-1] + " "
                continue
            command = (pending + body).strip()
            pending = ""
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def clean_environment() -> dict[str, str]:
    """This machine's environment without any INTENT_ setting: a user's fresh shell."""
    return {k: v for k, v in os.environ.items() if not k.startswith("INTENT_")}


@pytest.fixture(scope="module")
def stack() -> Iterator[dict[str, str]]:
    """``intent up`` as a user runs it; the environment its printed exports give."""
    env = {**clean_environment(), **SECRETS}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "intent.cli",
            "up",
            "--admin-port",
            "0",
            "--flower-port",
            "0",
            "--concurrency",
            "2",
            "--loglevel",
            "WARNING",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    assert process.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x) for x in process.stdout], daemon=True)
    reader.start()
    exports: dict[str, str] = {}
    seen: list[str] = []
    deadline = time.monotonic() + 120
    try:
        while "Ctrl-C stops everything" not in (seen[-1] if seen else ""):
            left = deadline - time.monotonic()
            assert left > 0 and process.poll() is None, "intent up not ready:\n" + "".join(seen)
            try:
                seen.append(lines.get(timeout=min(left, 1.0)))
            except queue.Empty:
                continue
            match = EXPORT.match(seen[-1].rstrip("\n"))
            if match:
                exports[match.group(1)] = match.group(2).strip("'")
        yield {**clean_environment(), **SECRETS, **exports}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_the_readme_marks_its_commands_runnable_and_none_uses_a_bare_port() -> None:
    text = README.read_text()
    commands = runnable_commands(text)
    assert sum(c.startswith("curl") for c in commands) >= 10, commands
    assert sum(c.startswith(".venv/bin/intent") for c in commands) >= 6, commands
    # `curl :8000/...` is a bad URL to curl 7.88 (Debian 12): a URL names its host.
    assert not re.search(r"curl[^\n]*\s['\"]?:\d+", text)


def test_intent_up_prints_what_another_shell_must_export(stack: dict[str, str]) -> None:
    for name in (
        "INTENT_REDIS_URL",
        "INTENT_ADMIN_URL",
        "INTENT_FLOWER_URL",
        "INTENT_CONTEXT_SERVICE_URL",
        "INTENT_PREDICTION_SERVICE_URL",
    ):
        assert stack.get(name, "").startswith(("redis://", "http://")), (name, stack.get(name))
    # --admin-port 0 / --flower-port 0: a free port each, printed as it is (not ":0").
    for name in ("INTENT_ADMIN_URL", "INTENT_FLOWER_URL"):
        assert int(stack[name].rsplit(":", 1)[1]) > 0


@pytest.mark.parametrize("command", runnable_commands(README.read_text()))
def test_a_readme_command_runs_as_printed(stack: dict[str, str], command: str) -> None:
    done = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", command],
        cwd=ROOT,
        env=stack,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{command}\nstdout: {done.stdout[-2000:]}\nstderr: {done.stderr}"
