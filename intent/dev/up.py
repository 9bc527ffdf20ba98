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

The children are started and stopped by :mod:`intent.dev.supervisor`; the worker is known
to be up when it answers Celery's ping (``tasks.health.worker_answers``).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TextIO
from urllib.parse import urlsplit

import redis
import requests

from intent.connections import probe_client
from intent.dev.supervisor import (
    DEFAULT_GRACE,
    TIER_REDIS,
    TIER_SERVICES,
    Child,
    Supervisor,
)
from intent.embedded import free_port
from intent.errors import IntentError
from intent.lifecycle import on_signals
from intent.logs import mask_url
from intent.ops.flower import AUTH_VARIABLE as FLOWER_AUTH_VARIABLE
from intent.ops.flower import has_credentials
from intent.settings import ENV_PREFIX, Settings, load_settings

START_TIMEOUT = 120.0  # seconds for every process to answer
_POLL = 0.2
_REDIS_LINE = re.compile(r"^INTENT_REDIS_URL=(\S+)$")


class StartError(IntentError):
    """A process did not come up."""


class ChildExited(IntentError):
    def __init__(self, child: Child) -> None:
        super().__init__(f"{child.name} exited")
        self.child = child


class Stopped(IntentError):
    """SIGINT or SIGTERM arrived."""


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
    client = probe_client(url, timeout=2.0)
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
        def on_signal(sig: signal.Signals) -> None:
            self.signal_name = sig.name
            self.stop_requested.set()

        with on_signals(on_signal):
            return self._run()

    def _run(self) -> int:
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

            self.supervisor.start("redis", self._intent("redis"), self.env, TIER_REDIS, on_line)
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
            TIER_SERVICES,
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
        from tasks.health import worker_answers

        node = f"celery@{socket.gethostname()}"
        self._wait("worker", partial(worker_answers, node, 1.0, settings.effective_broker_url))

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
