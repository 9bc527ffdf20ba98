"""Child processes, each the leader of its own session and process group, and the one way
they are started and stopped: SIGTERM, a grace period, then SIGKILL for the whole group
(a worker's pool included). Used by ``intent up`` and by the in-process stack."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from intent.embedded import die_with_parent

DEFAULT_GRACE = 10.0  # seconds between SIGTERM and SIGKILL
_NAME_WIDTH = 9  # "reference"
_COLOURS = ("36", "33", "32", "35", "34", "96", "93", "92")
# Stop order: the higher tier first (Redis outlives everything that talks to it).
TIER_REDIS, TIER_SERVICES, TIER_APPS = 0, 1, 2


def spawn(argv: Sequence[str], env: Mapping[str, str] | None = None, **popen: Any) -> Child:
    """Start ``argv`` in a session of its own (a terminal's Ctrl-C does not reach it), sent
    SIGTERM if this process dies (call from the main thread: that is what it is tied to)."""
    process = subprocess.Popen(
        list(argv),
        env=dict(os.environ if env is None else env),
        start_new_session=True,
        preexec_fn=die_with_parent,
        **popen,
    )
    return Child(str(argv[0]), process)


@dataclass
class Child:
    """One child process: the leader of its own session and process group."""

    name: str
    process: subprocess.Popen[bytes]
    tier: int = TIER_APPS
    reader: threading.Thread | None = None
    returncode: int | None = field(default=None, init=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def _reaped(self) -> bool:
        return self.returncode is not None or self.process.returncode is not None

    def exited(self) -> bool:
        """Whether the process has exited. It is not reaped here: until :meth:`reap`, its
        pid names its process group, so killing the group cannot hit another process."""
        if self._reaped():
            return True
        try:
            return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:  # reaped elsewhere
            return True

    def send(self, signum: int) -> None:
        if not self.exited():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def kill_group(self) -> None:
        """SIGKILL whatever is left in the process group (the leader included)."""
        if not self._reaped():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)

    def reap(self) -> int:
        if self.returncode is None:
            self.returncode = self.process.wait()
        return self.returncode

    def describe_exit(self) -> str:
        """How it ended, without reaping it (its group may still need killing)."""
        if self._reaped():
            code = self.reap()
            killed = code < 0
            code = -code if killed else code
        else:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            if info is None:
                return "still running"
            killed, code = info.si_code != os.CLD_EXITED, info.si_status
        if killed:
            with contextlib.suppress(ValueError):
                return f"killed by {signal.Signals(code).name}"
            return f"killed by signal {code}"
        return f"exit code {code}"


def stop_children(
    children: Sequence[Child],
    grace: float = DEFAULT_GRACE,
    on_kill: Callable[[Child], None] | None = None,
) -> None:
    """SIGTERM each (a worker's warm shutdown: finish, requeue the rest), then after
    ``grace`` SIGKILL each one's process group (the leader if still there, and anything it
    left), and reap them. ``on_kill`` hears of each that had not stopped by itself."""
    for child in children:
        child.send(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and not all(c.exited() for c in children):
        time.sleep(0.05)
    for child in children:
        if on_kill is not None and not child.exited():
            on_kill(child)
        child.kill_group()
        child.reap()


class Supervisor:
    """Starts children with their output prefixed by name, and stops them all."""

    def __init__(self, out: TextIO, colour: bool | None = None) -> None:
        self.out = out
        if colour is None:
            colour = out.isatty() and "NO_COLOR" not in os.environ
        self.colour = colour
        self.children: list[Child] = []
        self._lock = threading.Lock()

    def say(self, line: str) -> None:
        with self._lock, contextlib.suppress(OSError, ValueError):
            self.out.write(line + "\n")
            self.out.flush()

    def _prefix(self, name: str) -> str:
        label = f"{name:<{_NAME_WIDTH}} |"
        if not self.colour:
            return label + " "
        colour = _COLOURS[len(self.children) % len(_COLOURS)]
        return f"\x1b[{colour}m{label}\x1b[0m "

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        tier: int = TIER_APPS,
        on_line: Callable[[str], None] | None = None,
    ) -> Child:
        """Start ``argv`` with its output read line by line (from the main thread)."""
        child = spawn(
            argv,
            {**env, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        child.name, child.tier = name, tier
        prefix = self._prefix(name)
        child.reader = threading.Thread(
            target=self._pump, args=(child, prefix, on_line), name=f"up-{name}", daemon=True
        )
        self.children.append(child)
        child.reader.start()
        return child

    def _pump(self, child: Child, prefix: str, on_line: Callable[[str], None] | None) -> None:
        stream = child.process.stdout
        assert stream is not None
        with stream:
            for raw in iter(stream.readline, b""):
                line = raw.decode(errors="replace").rstrip("\r\n")
                if on_line is not None:
                    on_line(line)
                self.say(prefix + line)

    def first_exited(self) -> Child | None:
        return next((child for child in self.children if child.exited()), None)

    def stop(self, grace: float = DEFAULT_GRACE) -> None:
        """Stop each tier in turn (apps, services, Redis)."""

        def killed(child: Child) -> None:
            self.say(f"intent up: {child.name} did not stop within {grace:.0f} s: killed")

        for tier in sorted({child.tier for child in self.children}, reverse=True):
            stop_children([c for c in self.children if c.tier == tier], grace, killed)
        for child in self.children:
            if child.reader is not None:
                child.reader.join(timeout=5)
