"""``intent up``: the whole stack on one machine, without Docker.

Redis (an embedded Valkey, ``intent redis``, unless ``INTENT_REDIS_URL`` is set), the
reference Context and Prediction services (unless both service URLs are set), a worker,
beat, the admin endpoint and Flower, each a child process whose output lines are prefixed
by its name. Once every one is up it prints where they are; Ctrl-C (SIGINT) or SIGTERM
stops them all, and so does an unexpected exit of any one (``intent up`` then exits 1
naming it).

Every child runs in a session of its own, so a terminal's Ctrl-C reaches ``intent up``
alone and the children are stopped in order: worker, beat, admin and Flower first, then
the services, Redis last. Each gets SIGTERM, then SIGKILL for its whole process group
after the grace period; a child whose own children outlived it (a worker's pool) has them
killed too. If ``intent up`` itself dies, Linux sends each child SIGTERM
(``die_with_parent``).

Lives in ``tasks/`` beside the other process helpers (``tasks.stack``): it pings the
worker through Celery to know it is up.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes  # noqa: F401  # loaded before threads start: die_with_parent runs it post-fork
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from types import FrameType
from typing import TextIO
from urllib.parse import urlsplit

import redis
import requests

from intent.embedded import die_with_parent, free_port
from intent.logs import mask_url
from intent.settings import ENV_PREFIX, Settings, load_settings
from tasks.flower import AUTH_VARIABLE as FLOWER_AUTH_VARIABLE
from tasks.flower import has_credentials

DEFAULT_GRACE = 10.0  # seconds between SIGTERM and SIGKILL
START_TIMEOUT = 120.0  # seconds for every process to answer
_POLL = 0.2
_NAME_WIDTH = 9  # "reference"
# Stop order: the higher tier first (Redis outlives everything that talks to it).
_TIER_REDIS, _TIER_SERVICES, _TIER_APPS = 0, 1, 2
_COLOURS = ("36", "33", "32", "35", "34", "96", "93", "92")
_REDIS_LINE = re.compile(r"^INTENT_REDIS_URL=(\S+)$")


class StartError(RuntimeError):
    """A process did not come up."""


class ChildExited(RuntimeError):
    def __init__(self, child: Child) -> None:
        super().__init__(f"{child.name} exited")
        self.child = child


class Stopped(Exception):
    """SIGINT or SIGTERM arrived."""


@dataclass
class Child:
    """One child process: the leader of its own session and process group."""

    name: str
    process: subprocess.Popen[bytes]
    tier: int
    reader: threading.Thread | None = None
    returncode: int | None = field(default=None, init=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def exited(self) -> bool:
        """Whether the process has exited. It is not reaped here: until :meth:`reap`, its
        pid names its process group, so killing the group cannot hit another process."""
        if self.returncode is not None:
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
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)

    def reap(self) -> int:
        if self.returncode is None:
            self.returncode = self.process.wait()
        return self.returncode

    def describe_exit(self) -> str:
        """How it ended, without reaping it (its group may still need killing)."""
        if self.returncode is not None:
            code = self.returncode
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
        tier: int = _TIER_APPS,
        on_line: Callable[[str], None] | None = None,
    ) -> Child:
        """Start ``argv`` (call from the main thread: die_with_parent is tied to it)."""
        process = subprocess.Popen(
            list(argv),
            env={**env, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        child = Child(name, process, tier)
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
        """SIGTERM each tier (apps, services, Redis), SIGKILL its groups after ``grace``."""
        for tier in sorted({child.tier for child in self.children}, reverse=True):
            group = [child for child in self.children if child.tier == tier]
            for child in group:
                child.send(signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and not all(c.exited() for c in group):
                time.sleep(0.05)
            for child in group:
                if not child.exited():
                    self.say(f"intent up: {child.name} did not stop within {grace:.0f} s: killed")
                child.kill_group()  # the leader if still there, and anything it left
                child.reap()
        for child in self.children:
            if child.reader is not None:
                child.reader.join(timeout=5)


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def choose_port(host: str, requested: int | None, default: int, what: str) -> tuple[int, str]:
    """The port asked for (which must be free; 0: any free one), else the default, else a
    free one."""
    if requested == 0:
        return free_port(host), ""
    if requested is not None:
        if not _port_free(host, requested):
            raise StartError(f"{what}: port {requested} on {host} is in use")
        return requested, ""
    if _port_free(host, default):
        return default, ""
    port = free_port(host)
    return port, f"{what}: port {default} is in use, using {port}"


def _http_answers(url: str, accept: Callable[[int], bool]) -> bool:
    try:
        return accept(requests.get(url, timeout=2).status_code)
    except requests.RequestException:
        return False


def _is_ok(status: int) -> bool:
    return status == 200


def _redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _shown(host: str) -> str:
    """A host to reach a server listening on ``host`` at (every interface: loopback)."""
    return "127.0.0.1" if host in ("", "0.0.0.0") else host  # noqa: S104


def _url_port(url: str, default: int) -> int:
    return urlsplit(url).port or default


@dataclass
class Options:
    admin_port: int | None = None
    flower_port: int | None = None
    concurrency: int | None = None
    loglevel: str = "INFO"
    grace: float = DEFAULT_GRACE
    timeout: float = START_TIMEOUT


class Up:
    """One run of ``intent up``."""

    def __init__(
        self,
        settings: Settings,
        options: Options,
        environ: Mapping[str, str] | None = None,
        out: TextIO | None = None,
    ) -> None:
        self.settings = settings
        self.options = options
        self.environ = dict(os.environ if environ is None else environ)
        self.supervisor = Supervisor(out or sys.stdout)
        self.stop_requested = threading.Event()
        self.signal_name = ""
        self.env: dict[str, str] = dict(self.environ)  # what every child gets
        self.urls: list[tuple[str, str]] = []
        # What another shell needs to talk to this stack: the settings chosen here (the
        # ones the user set are theirs already), and where the admin and Flower listen.
        self.exports: dict[str, str] = {}
        self._metrics_dir: str | None = None  # ours to remove
        self._redis_url: str | None = None

    # -- the run --------------------------------------------------------------------

    def run(self) -> int:
        def on_signal(signum: int, frame: FrameType | None) -> None:
            self.signal_name = signal.Signals(signum).name
            self.stop_requested.set()

        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, on_signal) for sig in signals}
        say = self.supervisor.say
        try:
            self._start()
            self._print_ready()
            while not self.stop_requested.wait(_POLL):
                exited = self.supervisor.first_exited()
                if exited is not None:
                    raise ChildExited(exited)
            say(f"intent up: {self.signal_name}: stopping")
            return 0
        except Stopped:
            say(f"intent up: {self.signal_name} while starting: stopping")
            return 0
        except ChildExited as exc:
            child = exc.child
            say(
                f"intent up: {child.name} exited unexpectedly ({child.describe_exit()}); "
                "stopping the others"
            )
            return 1
        except StartError as exc:
            say(f"intent up: {exc}; stopping")
            return 1
        finally:
            self.supervisor.stop(self.options.grace)
            if self._metrics_dir is not None:
                shutil.rmtree(self._metrics_dir, ignore_errors=True)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            say("intent up: stopped " + ", ".join(c.name for c in self.supervisor.children))

    def _intent(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "intent.cli", *args]

    def _wait(self, what: str, ready: Callable[[], bool], timeout: float | None = None) -> None:
        """Until ``ready()``; a signal, a child's exit or the timeout ends the wait."""
        limit = timeout or self.options.timeout
        deadline = time.monotonic() + limit
        while True:
            if self.stop_requested.is_set():
                raise Stopped
            exited = self.supervisor.first_exited()
            if exited is not None:
                raise ChildExited(exited)
            if ready():
                return
            if time.monotonic() > deadline:
                raise StartError(f"{what} did not answer within {limit:.0f} s")
            self.stop_requested.wait(_POLL)

    def _start(self) -> None:
        host = self.settings.admin_host
        flower_host = self._flower_host()
        opts = self.options
        admin_port, note = choose_port(host, opts.admin_port, self.settings.admin_port, "admin")
        notes = [note]
        flower_port, note = choose_port(
            flower_host, opts.flower_port, self.settings.flower_port, "flower"
        )
        notes.append(note)
        if flower_host != host:
            notes.append(f"flower: no {FLOWER_AUTH_VARIABLE}: on {flower_host} only, not {host}")
        for note in filter(None, notes):
            self.supervisor.say(f"intent up: {note}")

        self._start_redis()
        self._start_reference()

        if self.settings.metrics_dir is None:
            self._metrics_dir = tempfile.mkdtemp(prefix="intent-metrics-")
            self.env[f"{ENV_PREFIX}METRICS_DIR"] = self._metrics_dir
        child_settings = load_settings(**self._overrides())

        worker = ["worker", "--loglevel", opts.loglevel]
        if opts.concurrency:
            worker += ["--concurrency", str(opts.concurrency)]
        self.supervisor.start("worker", self._intent(*worker), self.env)
        self.supervisor.start("beat", self._intent("beat", "--loglevel", opts.loglevel), self.env)
        self.supervisor.start(
            "admin", self._intent("admin", "--host", host, "--port", str(admin_port)), self.env
        )
        self.supervisor.start("flower", *self._flower_command(flower_port))

        admin_url = f"http://{_shown(host)}:{admin_port}"
        flower_url = f"http://{_shown(flower_host)}:{flower_port}"
        # 503 is an answer: the admin is up and names what is not (yet).
        self._wait("admin", lambda: _http_answers(admin_url + "/health", lambda s: s in (200, 503)))
        self._wait("flower", lambda: _http_answers(flower_url + "/healthcheck", _is_ok))
        self._wait_worker(child_settings)
        self.urls[:0] = [("admin", admin_url), ("flower", flower_url)]
        self.urls.append(("metrics", child_settings.metrics_dir or ""))
        self.exports["INTENT_ADMIN_URL"] = admin_url
        self.exports["INTENT_FLOWER_URL"] = flower_url

    def _flower_host(self) -> str:
        """Where Flower listens: the admin's host, but loopback only without credentials
        (its API, open then, can shut workers down; ``intent flower`` refuses otherwise)."""
        return self.settings.admin_host if has_credentials(self.settings) else "127.0.0.1"

    def _flower_command(self, port: int) -> tuple[list[str], dict[str, str]]:
        """Flower's command line and environment."""
        env = dict(self.env)
        if f"{ENV_PREFIX}ENVIRONMENT" not in self.environ:
            # Local development: Flower without basic auth (on 127.0.0.1). An environment
            # the user chose keeps its rules (production: basic auth required).
            env[f"{ENV_PREFIX}ENVIRONMENT"] = "development"
        argv = self._intent("flower", "--port", str(port), "--address", self._flower_host())
        return argv, env

    def _overrides(self) -> dict[str, object]:
        """The settings the children get that differ from this process's."""
        names = {
            "redis_url": "REDIS_URL",
            "context_service_url": "CONTEXT_SERVICE_URL",
            "prediction_service_url": "PREDICTION_SERVICE_URL",
            "metrics_dir": "METRICS_DIR",
        }
        return {
            field: self.env[ENV_PREFIX + var]
            for field, var in names.items()
            if ENV_PREFIX + var in self.env
        }

    def _start_redis(self) -> None:
        url = self.settings.redis_url
        if url:
            self._wait(f"Redis at {mask_url(url)}", partial(_redis_answers, url), timeout=15)
        else:

            def on_line(line: str) -> None:
                match = _REDIS_LINE.match(line)
                if match and self._redis_url is None:
                    self._redis_url = match.group(1)

            self.supervisor.start("redis", self._intent("redis"), self.env, _TIER_REDIS, on_line)
            self._wait("redis", lambda: self._redis_url is not None, timeout=30)
            url = self._redis_url
            assert url is not None
            self._wait("redis", partial(_redis_answers, url), timeout=15)
            self.env[f"{ENV_PREFIX}REDIS_URL"] = url
            self.exports[f"{ENV_PREFIX}REDIS_URL"] = url  # embedded: no password in it
        self.urls.append(("redis", mask_url(url)))

    def _start_reference(self) -> None:
        """The reference services, for each service URL that is not set."""
        context_var = f"{ENV_PREFIX}CONTEXT_SERVICE_URL"
        prediction_var = f"{ENV_PREFIX}PREDICTION_SERVICE_URL"
        if context_var in self.environ and prediction_var in self.environ:
            self.urls.append(("context", mask_url(self.settings.context_service_url)))
            self.urls.append(("prediction", mask_url(self.settings.prediction_service_url)))
            return
        host = "127.0.0.1"
        context_port, note_c = choose_port(
            host,
            None,
            _url_port(Settings.model_fields["context_service_url"].default, 8001),
            "context service",
        )
        prediction_port, note_p = choose_port(
            host,
            None,
            _url_port(Settings.model_fields["prediction_service_url"].default, 8002),
            "prediction service",
        )
        if prediction_port == context_port:
            prediction_port = free_port(host)
        for note in filter(None, (note_c, note_p)):
            self.supervisor.say(f"intent up: {note}")
        self.supervisor.start(
            "reference",
            self._intent(
                "reference",
                "--host",
                host,
                "--context-port",
                str(context_port),
                "--prediction-port",
                str(prediction_port),
            ),
            self.env,
            _TIER_SERVICES,
        )
        reference = {
            context_var: f"http://{host}:{context_port}",
            prediction_var: f"http://{host}:{prediction_port}",
        }
        for var, url in reference.items():
            if var not in self.environ:
                self.env[var] = url
                self.exports[var] = url
            self._wait(f"reference service {url}", partial(_http_answers, url + "/health", _is_ok))
        self.urls.append(("context", mask_url(self.env[context_var])))
        self.urls.append(("prediction", mask_url(self.env[prediction_var])))

    def _wait_worker(self, settings: Settings) -> None:
        """Until this stack's worker (node celery@<this host>) answers a ping."""
        from celery import Celery

        app = Celery("intent-up", broker=settings.effective_broker_url)
        node = f"celery@{socket.gethostname()}"

        def answers() -> bool:
            try:
                replies = app.control.ping(timeout=1.0) or []
            except Exception:  # the broker is not reachable yet: not ready
                return False
            return any(node in reply for reply in replies)

        try:
            self._wait("worker", answers)
        finally:
            app.close()

    def _print_ready(self) -> None:
        say = self.supervisor.say
        say("intent up: ready")
        for name, url in self.urls:
            say(f"  {name:<11}{url}")
        say("intent up: for another shell (intent submit, intent circuits, the README's curl):")
        for var, value in self.exports.items():
            say(f"  export {var}={shlex.quote(value)}")
        say("intent up: Ctrl-C stops everything")


def run(args: argparse.Namespace) -> int:
    options = Options(
        admin_port=args.admin_port,
        flower_port=args.flower_port,
        concurrency=args.concurrency,
        loglevel=args.loglevel,
        grace=DEFAULT_GRACE if args.grace is None else args.grace,
        timeout=args.timeout or START_TIMEOUT,
    )
    return Up(load_settings(), options).run()
