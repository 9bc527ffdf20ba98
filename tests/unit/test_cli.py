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
