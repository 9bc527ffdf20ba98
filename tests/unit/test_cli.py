"""``intent`` command-line parsing that needs no running stack."""

from __future__ import annotations

import pytest

from intent import cli


class Exec(Exception):
    pass


def worker_argv(monkeypatch: pytest.MonkeyPatch, *given: str) -> list[str]:
    def fake_exec(path: str, argv: list[str]) -> None:
        raise Exec(argv)

    monkeypatch.setattr("os.execv", fake_exec)
    with pytest.raises(Exec) as caught:
        cli.main(["worker", *given])
    return list(caught.value.args[0])


def test_intent_worker_passes_celerys_own_options_on(monkeypatch: pytest.MonkeyPatch) -> None:
    argv = worker_argv(
        monkeypatch, "--concurrency", "3", "-n", "w1@%h", "--max-tasks-per-child", "50"
    )
    ours = ["worker", "-P", "prefork", "-c", "3", "--loglevel", "INFO"]
    assert argv[argv.index("worker") :] == [*ours, "-n", "w1@%h", "--max-tasks-per-child", "50"]
    # No -Q: the worker consumes the app's queues (INTENT_QUEUE and the client default).
    assert "-Q" not in argv


def test_other_commands_still_refuse_unknown_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["redis", "--max-tasks-per-child", "5"])
    assert caught.value.code == 2
    assert "unrecognized arguments: --max-tasks-per-child 5" in capsys.readouterr().err


def test_intent_circuits_shows_the_bulkheads_limit_beside_the_calls_in_flight() -> None:
    """Operators see the fleet's calls in flight against the limit (admin route: the same
    fields, as_dict), and the consecutive trips the open time grows with."""
    from intent.breaker import BreakerStatus, CircuitConfig, MemoryStore
    from intent.cli.circuits import _table

    store = MemoryStore()
    limited = CircuitConfig(max_concurrent_calls=3)
    store.acquire("context-service", "a", limited)
    store.acquire("context-service", "b", limited)
    store.acquire("prediction-service", "a", CircuitConfig())
    statuses = [BreakerStatus.of(n, store.snapshot(n)) for n in store.names()]
    assert [(s.name, s.in_flight, s.bulkhead, s.trips) for s in statuses] == [
        ("context-service", 2, 3, 0),
        ("prediction-service", 1, 0, 0),
    ]
    assert statuses[0].as_dict()["bulkhead"] == 3
    context_row, prediction_row = _table(statuses).splitlines()[1:]
    assert " 2/3 " in context_row
    assert " 1 " in prediction_row and "/" not in prediction_row.split("closed")[1][:20]
