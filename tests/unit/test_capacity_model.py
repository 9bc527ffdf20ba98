"""The capacity model's arithmetic (bench/capacity.py), on given figures: from CPU seconds
per analysis to cores and nodes. Nothing is measured here."""

from __future__ import annotations

import pytest

from bench.capacity import (
    Assumptions,
    Costs,
    Measured,
    _net,
    figures_of,
    per_node,
    plan,
    saturates_first,
    show,
)

COSTS = Costs(worker_cpu_s=0.028, redis_cpu_s={"broker": 0.002, "results": 0.0003, "state": 0.0017})
ASSUME = Assumptions(worker_utilisation=0.7, redis_utilisation=0.5, cores_per_worker_host=8)


def test_each_part_needs_its_cpu_per_second_of_traffic_over_its_utilisation() -> None:
    at_1k = plan(COSTS, 1_000, ASSUME)
    assert at_1k.worker_cores == 40  # 1000 * 0.028 / 0.7, exactly 40: not rounded up to 41
    assert at_1k.worker_hosts == 5  # 40 cores / 8 per host
    assert at_1k.redis_nodes == {"broker": 4, "results": 1, "state": 4}  # 4.0, 0.6, 3.4
    assert at_1k.single_redis_nodes == 8  # 1000 * 0.004 / 0.5

    at_10k = plan(COSTS, 10_000, ASSUME)
    assert at_10k.worker_cores == 400
    assert at_10k.worker_hosts == 50
    assert at_10k.redis_nodes == {"broker": 40, "results": 6, "state": 34}
    assert at_10k.single_redis_nodes == 80


def test_a_part_that_is_needed_at_all_is_at_least_one_node() -> None:
    tiny = plan(COSTS, 1, ASSUME)
    assert tiny.worker_cores == 1 and tiny.worker_hosts == 1
    assert tiny.redis_nodes == {"broker": 1, "results": 1, "state": 1}
    assert tiny.single_redis_nodes == 1


def test_a_higher_utilisation_needs_fewer_nodes() -> None:
    busier = Assumptions(worker_utilisation=0.875, redis_utilisation=1.0)
    at_1k = plan(COSTS, 1_000, busier)
    assert at_1k.worker_cores == 32  # 28 core-seconds per second at 87.5 %
    assert at_1k.worker_hosts == 4
    assert at_1k.redis_nodes == {"broker": 2, "results": 1, "state": 2}


def test_per_node_capacity_is_the_utilisation_over_the_cost() -> None:
    capacity = per_node(COSTS, ASSUME)
    assert capacity["worker_core"] == pytest.approx(25.0)
    assert capacity["broker"] == pytest.approx(250.0)
    assert capacity["results"] == pytest.approx(0.5 / 0.0003)
    assert capacity["state"] == pytest.approx(0.5 / 0.0017)
    assert capacity["single_redis"] == pytest.approx(125.0)


def test_the_role_that_saturates_first_is_the_costliest_per_analysis() -> None:
    assert saturates_first(COSTS, ASSUME) == ("broker", pytest.approx(250.0))
    heavier_state = Costs(0.028, {"broker": 0.002, "results": 0.0003, "state": 0.003})
    assert saturates_first(heavier_state, ASSUME) == ("state", pytest.approx(0.5 / 0.003))


def _measured() -> Measured:
    def server(cpu_s: float) -> dict[str, float]:
        figures = {"commands": 10.0, "bytes_in": 1000.0, "bytes_out": 500.0}
        return {"cpu_s": cpu_s, "lpush": 4.0, "publish": 10.0, **figures}

    per_analysis = {
        "worker_cpu": COSTS.worker_cpu_s,
        "client_cpu": 0.004,
        "reference_cpu": 0.003,
        "http_calls": 2.0,
        "load_seconds": 10.0,
        "servers": {role: server(cpu) for role, cpu in COSTS.redis_cpu_s.items()},
    }
    idle = {"worker_cpu": 0.01, "servers": {role: server(0.0) for role in COSTS.redis_cpu_s}}
    return Measured(300, 4, per_analysis, idle, {"state": {"sent": 12.0}}, {"get": 50000.0})


def test_the_printed_table_is_the_model_on_the_measured_figures(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = figures_of(_measured(), ASSUME)
    assert out["plans"][0]["worker_cores"] == plan(COSTS, 1_000, ASSUME).worker_cores
    assert [p["rate"] for p in out["plans"]] == [1_000, 10_000, 100_000]
    assert out["plans"][2]["redis_nodes"] == plan(COSTS, 100_000, ASSUME).redis_nodes
    assert out["saturates_first"] == {"role": "broker", "analyses_per_s": 250.0}
    assert out["worker_cpu_ms"] == 28.0 and out["state_commands_sent"] == 12.0
    assert out["analyses_per_s_measured"] == 30.0  # 300 analyses in 10 s

    show(out)
    printed = capsys.readouterr().out
    assert "     1,000            40             5             4              1" in printed
    assert "saturates first  the broker node, at 250.0 analyses/s" in printed


def test_per_analysis_figures_subtract_the_idle_rate_over_the_load_time() -> None:
    def server(cpu_s: float, commands: float) -> dict[str, float]:
        return {"cpu_s": cpu_s, "commands": commands}

    load = {
        "seconds": 10.0,
        "worker_cpu": 3.0,
        "client_cpu": 0.4,
        "reference_cpu": 0.3,
        "http_calls": 200.0,
        "servers": {"state": server(0.5, 2_000.0)},
    }
    idle = {
        "seconds": 2.0,
        "worker_cpu": 0.1,  # 0.05 s a second: 0.5 s of the load's 10 s
        "client_cpu": 0.2,  # the snapshot's own work: not subtracted
        "reference_cpu": 0.0,
        "http_calls": 0.0,
        "servers": {"state": server(0.02, 100.0)},  # 50 commands a second: 500
    }
    per = _net(load, idle, 100)
    assert per["worker_cpu"] == pytest.approx(0.025)  # (3.0 - 0.5) / 100
    assert per["client_cpu"] == pytest.approx(0.004) and per["reference_cpu"] == 0.003
    assert per["http_calls"] == 2.0
    assert per["servers"]["state"]["commands"] == pytest.approx(15.0)  # (2000 - 500) / 100
    assert per["servers"]["state"]["cpu_s"] == pytest.approx(0.004)  # (0.5 - 0.1) / 100
