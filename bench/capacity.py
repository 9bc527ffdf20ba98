"""A capacity model: per-analysis costs measured in one run, and from them the workers and
Redis nodes needed for 1k, 10k and 100k analyses per second.

Starts three embedded Valkey servers, one per role, so that each role's commands, bytes
and CPU are its own: the broker (``INTENT_BROKER_URL``), the result backend
(``INTENT_RESULT_BACKEND_URL``) and the state (``INTENT_REDIS_URL``: breaker, rate
limits, cache, pattern state, claims, waiting room, event stream); the reference services
(no injected latency) and one prefork worker. ``INTENT_REDIS_URL`` set outside is not used.

1. Idle: every figure counted for ``--idle`` seconds with no analysis (the worker's
   heartbeats, the waiting room's releaser, the broker's polls), as a rate per second.
   The releaser looks every ``--release-interval`` seconds here (1.0; the default is
   0.1): its polling is a fixed load per worker, not a cost of an analysis, and slowed it
   stays small beside the analyses' (a CPU-starved machine runs it less often than idle).
2. Load: ``--n`` analyses submitted at once (unique contexts, so no cache hit; the rate
   limits lifted, every check still run); every figure before and after, less the idle
   rate over the same time, divided by n: the worker's CPU seconds (main process and pool,
   from /proc), each server's CPU (INFO cpu), commands executed (INFO stats, with those a
   script runs) and bytes in and out, the broker's task and event messages (LPUSH and
   PUBLISH on the broker), HTTP calls (the reference services' request logs).
3. Commands sent: MONITOR on each server over ``--monitor-n`` more analyses (commands
   run inside a script not counted; a pipeline's commands share one round trip).
4. The simple-command ceiling of a Valkey node here (redis-benchmark or valkey-benchmark,
   GET and SET, when one is installed), printed beside the model as a cross-check.

The model (:func:`plan`) turns CPU seconds per analysis into cores at a planned
utilisation: a worker core per ``worker CPU / worker utilisation`` analyses per second,
a Valkey node per ``server CPU / redis utilisation`` (its commands run on one main
thread, so a node is one core whatever the host has).

    python bench/capacity.py [--n 300] [--concurrency 4] [--idle 3] [--monitor-n 100]
                             [--release-interval 1.0] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import LIFTED_LIMITS, analyses, machine, stdout_to_stderr

ROLES = ("broker", "results", "state")
RATES = (1_000, 10_000, 100_000)


# -- the model ------------------------------------------------------------------------


@dataclass(frozen=True)
class Costs:
    """What one analysis costs, measured: CPU seconds of the worker, and of each Valkey
    role (``broker``, ``results``, ``state``)."""

    worker_cpu_s: float
    redis_cpu_s: Mapping[str, float]


@dataclass(frozen=True)
class Assumptions:
    """How hard each part is planned to run: a share of a core. A Valkey node runs its
    commands on one main thread, so its capacity is one core at ``redis_utilisation``."""

    worker_utilisation: float = 0.7
    redis_utilisation: float = 0.5
    cores_per_worker_host: int = 8


@dataclass(frozen=True)
class Plan:
    rate: float
    worker_cores: int
    worker_hosts: int
    redis_nodes: dict[str, int]  # per role
    single_redis_nodes: int  # every role on one Redis, as the default deployment runs


def per_node(costs: Costs, assume: Assumptions) -> dict[str, float]:
    """Analyses per second one worker core, one node of each Valkey role, and one Valkey
    carrying every role, each carries at its planned utilisation."""
    capacity = {"worker_core": assume.worker_utilisation / costs.worker_cpu_s}
    for role, cpu in costs.redis_cpu_s.items():
        capacity[role] = assume.redis_utilisation / cpu
    capacity["single_redis"] = assume.redis_utilisation / sum(costs.redis_cpu_s.values())
    return capacity


def _nodes(rate: float, cpu_s: float, utilisation: float) -> int:
    # A share a hair above a whole core is rounding, not a need for another node.
    return max(1, math.ceil(round(rate * cpu_s / utilisation, 6)))


def plan(costs: Costs, rate: float, assume: Assumptions) -> Plan:
    """The cores and nodes ``rate`` analyses per second need: each part's CPU seconds
    per second of traffic over its planned utilisation, rounded up."""
    cores = _nodes(rate, costs.worker_cpu_s, assume.worker_utilisation)
    return Plan(
        rate=rate,
        worker_cores=cores,
        worker_hosts=math.ceil(cores / assume.cores_per_worker_host),
        redis_nodes={
            role: _nodes(rate, cpu, assume.redis_utilisation)
            for role, cpu in costs.redis_cpu_s.items()
        },
        single_redis_nodes=_nodes(rate, sum(costs.redis_cpu_s.values()), assume.redis_utilisation),
    )


def saturates_first(costs: Costs, assume: Assumptions) -> tuple[str, float]:
    """The Valkey role that reaches its planned utilisation at the lowest rate, and that
    rate. Workers are left out: they scale out by adding processes and hosts, while
    Celery's Redis broker and result backend each run on one standalone node per fleet."""
    capacity = per_node(costs, assume)
    role = min(costs.redis_cpu_s, key=lambda name: capacity[name])
    return role, capacity[role]


# -- measuring --------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int, with_reaped: bool = False) -> float:
    """CPU seconds of process ``pid`` (user + system); with its reaped children's."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After the command: state is fields[0]; utime, stime, cutime, cstime are 11..14.
    ticks = int(fields[11]) + int(fields[12])
    if with_reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _TICK


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def worker_cpu(pids: list[int]) -> float:
    """CPU seconds of the worker processes and their pool processes (those gone too)."""
    return sum(
        _proc_cpu(pid, with_reaped=True) + sum(_proc_cpu(child) for child in _children(pid))
        for pid in pids
    )


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def server_figures(client: Any) -> dict[str, float]:
    """One Valkey's counters: CPU seconds, commands executed, bytes in and out, and the
    calls of the commands that carry messages."""
    stats, cpu, commands = client.info("stats"), client.info("cpu"), client.info("commandstats")
    return {
        "cpu_s": float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
        "commands": float(stats["total_commands_processed"]),
        "bytes_in": float(stats["total_net_input_bytes"]),
        "bytes_out": float(stats["total_net_output_bytes"]),
        "lpush": float(commands.get("cmdstat_lpush", {}).get("calls", 0)),
        "publish": float(commands.get("cmdstat_publish", {}).get("calls", 0)),
    }


@dataclass
class Snapshot:
    at: float
    worker_cpu: float
    client_cpu: float
    reference_cpu: float
    servers: dict[str, dict[str, float]]
    http_calls: float = 0.0


@dataclass
class Probe:
    clients: dict[str, Any]
    worker_pids: list[int]
    reference_pid: int
    reference_urls: list[str]

    def snapshot(self) -> Snapshot:
        return Snapshot(
            at=time.perf_counter(),
            worker_cpu=worker_cpu(self.worker_pids),
            client_cpu=self_cpu(),
            reference_cpu=_proc_cpu(self.reference_pid),
            servers={role: server_figures(client) for role, client in self.clients.items()},
            http_calls=float(sum(_logged_requests(url) for url in self.reference_urls)),
        )


def _logged_requests(url: str, clear: bool = False) -> int:
    """Requests the reference service at ``url`` has logged (emptied first, ``clear``)."""
    from intent.reference.app import MAX_LOG_ENTRIES
    from intent.reference.server import ReferenceControl

    control = ReferenceControl(url)
    try:
        if clear:
            control.clear_requests()
        logged = len(control.requests_log())
    finally:
        control.close()
    if logged >= MAX_LOG_ENTRIES:
        raise RuntimeError(f"{url} logged {logged} requests, its log's bound: use a smaller --n")
    return logged


def _delta(before: Snapshot, after: Snapshot) -> dict[str, Any]:
    return {
        "seconds": after.at - before.at,
        "worker_cpu": after.worker_cpu - before.worker_cpu,
        "client_cpu": after.client_cpu - before.client_cpu,
        "reference_cpu": after.reference_cpu - before.reference_cpu,
        "http_calls": after.http_calls - before.http_calls,
        "servers": {
            role: {k: after.servers[role][k] - v for k, v in figures.items()}
            for role, figures in before.servers.items()
        },
    }


def _net(load: dict[str, Any], idle: dict[str, Any], n: int) -> dict[str, Any]:
    """Per analysis: the load's delta less the idle rate over the load's time."""
    scale = load["seconds"] / idle["seconds"]

    def per(key: str, loaded: float, quiet: float) -> float:
        return max(0.0, loaded - quiet * scale) / n

    out: dict[str, Any] = {"worker_cpu": per("worker_cpu", load["worker_cpu"], idle["worker_cpu"])}
    # This process and the services do nothing between analyses (this process's idle
    # delta is the snapshot's own work): nothing to subtract.
    for key in ("client_cpu", "reference_cpu", "http_calls"):
        out[key] = load[key] / n
    out["servers"] = {
        role: {k: per(k, v, idle["servers"][role][k]) for k, v in figures.items()}
        for role, figures in load["servers"].items()
    }
    return out


def _wait_all(n: int) -> None:
    from tasks import submit

    submitted = [submit(request) for request in analyses(n, uuid.uuid4().hex[:8])]
    for analysis in submitted:
        result = analysis.get(timeout=300)
        assert result.status == "completed", result


class Monitor:
    """MONITOR on one server, counting the commands clients send (not a script's own)."""

    def __init__(self, url: str):
        import redis

        self.count = 0
        self.by_command: dict[str, int] = {}
        self._client = redis.Redis.from_url(url)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with self._client.monitor() as monitor:
                for line in monitor.listen():
                    if self._stop.is_set():
                        return
                    if line.get("client_type") == "lua":
                        continue
                    name = str(line["command"]).split(" ", 1)[0].upper()
                    if name == "MONITOR":
                        continue
                    self.count += 1
                    self.by_command[name] = self.by_command.get(name, 0) + 1
        except Exception:
            if not self._stop.is_set():  # closed under it on stop: the count is done
                raise

    def start(self) -> Monitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._client.close()
        self._thread.join(timeout=5)


def commands_sent(urls: dict[str, str], n: int, idle: float) -> dict[str, dict[str, float]]:
    """Per analysis, per role: commands sent (MONITOR), less the idle rate."""
    monitors = {role: Monitor(url).start() for role, url in urls.items()}
    time.sleep(0.5)  # attached
    base = {role: m.count for role, m in monitors.items()}
    base_by = {role: dict(m.by_command) for role, m in monitors.items()}
    time.sleep(idle)
    quiet = {role: (m.count - base[role]) / idle for role, m in monitors.items()}
    quiet_by = {
        role: {k: (v - base_by[role].get(k, 0)) / idle for k, v in m.by_command.items()}
        for role, m in monitors.items()
    }
    mark = {role: m.count for role, m in monitors.items()}
    mark_by = {role: dict(m.by_command) for role, m in monitors.items()}
    started = time.perf_counter()
    _wait_all(n)
    time.sleep(0.3)  # the last acks and events reach the monitors
    elapsed = time.perf_counter() - started
    out: dict[str, dict[str, float]] = {}
    for role, m in monitors.items():
        sent = max(0.0, m.count - mark[role] - quiet[role] * elapsed) / n
        families = {}
        for name, calls in m.by_command.items():
            net = calls - mark_by[role].get(name, 0) - quiet_by[role].get(name, 0.0) * elapsed
            if net / n >= 0.05:
                families[name] = round(net / n, 2)
        out[role] = {"sent": sent, **{f"sent_{k.lower()}": v for k, v in families.items()}}
        out[role]["idle_sent_per_s"] = quiet[role]
    for m in monitors.values():
        m.stop()
    return out


def benchmark_ceiling() -> dict[str, float] | None:
    """GET and SET requests per second of a fresh node, from redis-benchmark (or
    valkey-benchmark) with 50 connections, no pipelining; None when neither is here."""
    tool = shutil.which("valkey-benchmark") or shutil.which("redis-benchmark")
    if tool is None:
        return None
    from intent.embedded import EmbeddedRedis

    with EmbeddedRedis() as server:
        args = [tool, "-h", "127.0.0.1", "-p", str(server.port), "-t", "get,set"]
        args += ["-n", "100000", "-c", "50", "--csv"]
        out = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True)
    rates = {}
    for line in out.stdout.splitlines():
        match = re.match(r'"(GET|SET)","([0-9.]+)"', line)
        if match:
            rates[match.group(1).lower()] = float(match.group(2))
    return rates or None


@dataclass
class Measured:
    n: int
    concurrency: int
    per_analysis: dict[str, Any]
    idle_per_s: dict[str, Any]
    sent: dict[str, dict[str, float]] = field(default_factory=dict)
    ceiling: dict[str, float] | None = None


def measure(
    n: int, concurrency: int, idle: float, monitor_n: int, release_interval: float
) -> Measured:
    import redis

    from intent.dev.stack import Stack
    from intent.embedded import EmbeddedRedis

    with ExitStack() as stack:
        servers = {role: stack.enter_context(EmbeddedRedis()) for role in ROLES}
        urls = {role: server.url for role, server in servers.items()}
        env = {
            **LIFTED_LIMITS,
            "INTENT_REDIS_URL": urls["state"],
            "INTENT_BROKER_URL": urls["broker"],
            "INTENT_RESULT_BACKEND_URL": urls["results"],
            # The waiting room's releaser polls the state at a fixed pace whatever the
            # traffic; slowed here, so that what is subtracted as idle stays small.
            "INTENT_RELEASE_INTERVAL": str(release_interval),
        }
        saved = os.environ.pop("INTENT_REDIS_URL", None)
        try:
            running = stack.enter_context(Stack(concurrency=concurrency, env=env))
        finally:
            if saved is not None:
                os.environ["INTENT_REDIS_URL"] = saved
        assert running.reference is not None
        clients = {role: redis.Redis.from_url(url) for role, url in urls.items()}
        probe = Probe(
            clients,
            [worker.process.pid for worker in running.workers],
            running.reference.pid,
            [running.context_url, running.prediction_url],
        )
        _wait_all(max(20, n // 5))  # warm: every process has its connections and scripts
        quiet_start = probe.snapshot()
        time.sleep(idle)
        quiet = _delta(quiet_start, probe.snapshot())
        for url in probe.reference_urls:  # its log is bounded: counted from empty
            _logged_requests(url, clear=True)
        before = probe.snapshot()
        _wait_all(n)
        time.sleep(0.3)  # the last acks and events
        load = _delta(before, probe.snapshot())
        per_analysis = _net(load, quiet, n)
        per_analysis["load_seconds"] = load["seconds"]
        idle_per_s = {
            "worker_cpu": quiet["worker_cpu"] / quiet["seconds"],
            "servers": {
                role: {k: v / quiet["seconds"] for k, v in figures.items()}
                for role, figures in quiet["servers"].items()
            },
        }
        sent = commands_sent(urls, monitor_n, min(idle, 2.0)) if monitor_n > 0 else {}
    idle_per_s["release_interval"] = release_interval
    return Measured(n, concurrency, per_analysis, idle_per_s, sent, benchmark_ceiling())


# -- output ---------------------------------------------------------------------------


def figures_of(measured: Measured, assume: Assumptions) -> dict[str, Any]:
    per = measured.per_analysis
    costs = Costs(per["worker_cpu"], {role: per["servers"][role]["cpu_s"] for role in ROLES})
    role, rate = saturates_first(costs, assume)
    capacity = per_node(costs, assume)
    servers = per["servers"]
    out: dict[str, Any] = {
        "n": measured.n,
        "concurrency": measured.concurrency,
        "analyses_per_s_measured": round(measured.n / per["load_seconds"], 1),
        "worker_cpu_ms": round(per["worker_cpu"] * 1000, 2),
        "client_cpu_ms": round(per["client_cpu"] * 1000, 2),
        "reference_cpu_ms": round(per["reference_cpu"] * 1000, 2),
        "http_calls": round(per["http_calls"], 2),
        "broker_task_messages": round(servers["broker"]["lpush"], 2),
        "broker_event_messages": round(servers["broker"]["publish"], 2),
    }
    for name in ROLES:
        figures = servers[name]
        out[f"{name}_cpu_ms"] = round(figures["cpu_s"] * 1000, 3)
        out[f"{name}_commands_executed"] = round(figures["commands"], 1)
        out[f"{name}_bytes_in"] = round(figures["bytes_in"])
        out[f"{name}_bytes_out"] = round(figures["bytes_out"])
        for key, value in measured.sent.get(name, {}).items():
            out[f"{name}_commands_{key}"] = round(value, 2)
    out["idle_worker_cpu_ms_per_s"] = round(measured.idle_per_s["worker_cpu"] * 1000, 2)
    interval = measured.idle_per_s.get("release_interval")
    state_idle = measured.sent.get("state", {}).get("idle_sent_per_s")
    if interval and state_idle is not None:
        # What each worker's releaser sends per look: a fixed load on the state per worker
        # (10 looks a second at the default INTENT_RELEASE_INTERVAL of 0.1 s).
        out["release_interval_measured_s"] = interval
        out["releaser_state_commands_per_look"] = round(state_idle * interval, 1)
    for name in ROLES:
        idle = measured.idle_per_s["servers"][name]
        out[f"idle_{name}_commands_per_s"] = round(idle["commands"], 1)
    if measured.ceiling:
        for op, value in measured.ceiling.items():
            out[f"benchmark_{op}_per_s"] = round(value)
    out["assumptions"] = asdict(assume)
    out["per_node_analyses_per_s"] = {k: round(v, 1) for k, v in capacity.items()}
    out["plans"] = [asdict(plan(costs, r, assume)) for r in RATES]
    out["saturates_first"] = {"role": role, "analyses_per_s": round(rate, 1)}
    return out


def show(out: dict[str, Any]) -> None:
    print(f"machine          {machine()}")
    print(
        f"measured         {out['n']} analyses at once on prefork -c {out['concurrency']}: "
        f"{out['analyses_per_s_measured']} analyses/s; idle rates subtracted"
    )
    print("per analysis")
    print(f"  worker CPU     {out['worker_cpu_ms']:8.2f} ms  (main process and pool)")
    print(f"  client CPU     {out['client_cpu_ms']:8.2f} ms  (submit and wait, this process)")
    print(f"  reference CPU  {out['reference_cpu_ms']:8.2f} ms  (both services)")
    print(f"  HTTP calls     {out['http_calls']:8.2f}")
    print(
        f"  broker msgs    {out['broker_task_messages']:8.2f} task messages, "
        f"{out['broker_event_messages']:.2f} event messages (Celery's task events)"
    )
    print("  Valkey         CPU ms   executed   sent    bytes in  bytes out")
    for name in ROLES:
        sent = out.get(f"{name}_commands_sent", float("nan"))
        print(
            f"  {name:<14} {out[f'{name}_cpu_ms']:6.3f} {out[f'{name}_commands_executed']:10.1f}"
            f" {sent:6.1f} {out[f'{name}_bytes_in']:10d} {out[f'{name}_bytes_out']:10d}"
        )
        kinds = {
            k.removeprefix(f"{name}_commands_sent_"): v
            for k, v in out.items()
            if k.startswith(f"{name}_commands_sent_")
        }
        if kinds:
            shown = ", ".join(f"{k.upper()} {v}" for k, v in sorted(kinds.items()))
            print(f"  {'':<14} sent: {shown}")
    idle = ", ".join(f"{name} {out[f'idle_{name}_commands_per_s']}" for name in ROLES)
    print(f"idle             worker {out['idle_worker_cpu_ms_per_s']} ms CPU/s; commands/s: {idle}")
    if "releaser_state_commands_per_look" in out:
        print(
            f"releaser         {out['releaser_state_commands_per_look']} state commands sent per "
            f"look, each worker (measured at INTENT_RELEASE_INTERVAL="
            f"{out['release_interval_measured_s']}; 10 looks/s at the default 0.1)"
        )
    if "benchmark_get_per_s" in out:
        print(
            f"node ceiling     GET {out['benchmark_get_per_s']}/s, SET "
            f"{out.get('benchmark_set_per_s', 0)}/s (benchmark tool, 50 connections, this machine)"
        )
    a = out["assumptions"]
    print(
        f"assumptions      a worker core at {a['worker_utilisation']:.0%}, a Valkey node "
        f"(one main thread) at {a['redis_utilisation']:.0%} of a core, "
        f"{a['cores_per_worker_host']} cores per worker host"
    )
    cap = out["per_node_analyses_per_s"]
    print(
        "per node         analyses/s: "
        + ", ".join(f"{k.replace('_', ' ')} {cap[k]}" for k in ("worker_core", *ROLES))
        + f"; one Valkey for every role {cap['single_redis']}"
    )
    print()
    print(
        "analyses/s  worker cores  worker hosts  broker nodes  results nodes  state nodes"
        "  one-Redis nodes"
    )
    for p in out["plans"]:
        nodes = p["redis_nodes"]
        print(
            f"{p['rate']:>10,.0f}  {p['worker_cores']:>12}  {p['worker_hosts']:>12}"
            f"  {nodes['broker']:>12}  {nodes['results']:>13}  {nodes['state']:>11}"
            f"  {p['single_redis_nodes']:>15}"
        )
    first = out["saturates_first"]
    print()
    print(
        f"saturates first  the {first['role']} node, at {first['analyses_per_s']} analyses/s "
        f"(one Valkey for every role: at {cap['single_redis']})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="analyses measured under load")
    parser.add_argument("--concurrency", type=int, default=4, help="worker pool processes")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds measured idle")
    parser.add_argument(
        "--monitor-n", type=int, default=100, help="analyses whose commands MONITOR counts"
    )
    parser.add_argument(
        "--release-interval",
        type=float,
        default=1.0,
        help="INTENT_RELEASE_INTERVAL of the measured worker (its fixed polling is idle load)",
    )
    parser.add_argument("--worker-utilisation", type=float, default=0.7)
    parser.add_argument("--redis-utilisation", type=float, default=0.5)
    parser.add_argument("--cores-per-worker-host", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    assume = Assumptions(
        args.worker_utilisation, args.redis_utilisation, args.cores_per_worker_host
    )
    with stdout_to_stderr():
        measured = measure(
            args.n, args.concurrency, args.idle, args.monitor_n, args.release_interval
        )
    out = figures_of(measured, assume)
    if args.json:
        print(json.dumps(out))
    else:
        show(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
