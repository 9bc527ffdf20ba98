"""Fuzzing every way in, bounded: a few hundred generated inputs (tests/strategies.py) of
all four kinds, sent concurrently to one real prefork worker and one event consumer.

Every case must meet its expectation: a bad input with a task id is answered with a
ValidationError naming its field (never a hang), one without an id is dead-lettered and
never answered, a valid one completes; a malformed event is dead-lettered with its reason,
a valid one handled. And after the run: the worker has the same main and pool processes
and answers a ping, the consumer thread is alive, and no bad input called a downstream
service or was retried (the reference services' request logs hold exactly one context
call and one prediction per completed valid case).

One run (module fixture) is judged by the tests below, each on one property, so a failure
names the property and lists every input that broke it. The cases are deterministic: one
of each kind of fault from a fixed seed, then hypothesis's draws with ``derandomize``.
``bench/fuzz.py`` runs the same cases by the ten thousand.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from intent.dev.stack import WorkerProcess
from intent.reference import ReferenceServices
from tests.integration.conftest import FAST_RETRY_ENV
from tests.strategies import (
    BAD,
    KINDS,
    NO_ID,
    VALID,
    Case,
    Engine,
    Results,
    Target,
    Verdict,
    cases,
    coverage,
    summary,
)

pytestmark = pytest.mark.integration

SEED = 20240601
DRAWN = 220  # hypothesis examples, on top of the ~90 coverage cases


def drawn_cases(n: int) -> list[Case]:
    """``n`` cases as hypothesis draws them, the same ones on every run."""
    out: list[Case] = []

    @settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(cases())
    def collect(case: Case) -> None:
        out.append(case)

    collect()
    return out


@dataclass
class FuzzRun:
    cases: list[Case]
    results: Results
    pids: tuple[int, list[int]]
    target: Target


@pytest.fixture(scope="module")
def target(
    reference: ReferenceServices, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    log = str(Path(tmp_path_factory.mktemp("fuzz")) / "worker.log")

    def new_worker() -> WorkerProcess:
        # INFO: the retry and deferral lines the run looks for.
        return WorkerProcess(concurrency=2, env=FAST_RETRY_ENV, loglevel="INFO", logfile=log)

    url = os.environ["INTENT_REDIS_URL"]
    fuzz = Target(url, new_worker, reference.context_url, reference.prediction_url, log)
    fuzz.clear_requests_log()
    fuzz.start()
    try:
        yield fuzz
    finally:
        fuzz.close()


@pytest.fixture(scope="module")
def run(target: Target) -> FuzzRun:
    worker = target.worker
    pids = (worker.process.pid, sorted(worker.child_pids()))
    all_cases = coverage(SEED) + drawn_cases(DRAWN)
    engine = Engine(target, window=60, answer_timeout=20, valid_timeout=60, find_culprits=6)
    return FuzzRun(all_cases, engine.run(all_cases), pids, target)


def broken(run: FuzzRun, keep: Callable[[Case], bool]) -> list[Verdict]:
    return [v for v in run.results.failures() if keep(v.case)]


def report(verdicts: list[Verdict], run: FuzzRun) -> str:
    lines = [f"{len(verdicts)} of {len(run.cases)} cases broke their expectation:"]
    lines += ["  " + v.line()[:700] for v in verdicts[:80]]
    if run.results.deaths:
        lines.append("worker deaths (which may leave other cases unanswered):")
        for d in run.results.deaths:
            culprit = f" {d.culprit!r}" if d.culprit else ""
            lines.append(f"  {d.what}:{culprit} {d.log[:300]}")
    return "\n".join(lines)


def test_the_run_is_a_few_hundred_cases_of_every_kind(run: FuzzRun) -> None:
    kinds = {c.kind for c in run.cases}
    outcomes = {c.expect.outcome for c in run.cases}
    assert kinds == set(KINDS)
    assert outcomes == {VALID, BAD, NO_ID}
    assert 250 <= len(run.cases) <= 400
    assert len(run.results.verdicts) == len(run.cases)  # every case judged


def test_every_bad_input_with_an_id_is_answered_with_a_validation_error_naming_its_field(
    run: FuzzRun,
) -> None:
    failed = broken(run, lambda c: c.expect.outcome == BAD and c.kind != "event")
    assert len(failed) == 0, report(failed, run)


def test_every_bad_input_without_an_id_is_dead_lettered_and_never_answered(run: FuzzRun) -> None:
    failed = broken(run, lambda c: c.expect.outcome == NO_ID)
    assert len(failed) == 0, report(failed, run)
    unexpected = run.results.unattributed
    assert len(unexpected) == 0, f"dead letters of no case: {unexpected}"


def test_every_malformed_event_is_dead_lettered_with_its_reason(run: FuzzRun) -> None:
    failed = broken(run, lambda c: c.expect.outcome == BAD and c.kind == "event")
    assert len(failed) == 0, report(failed, run)


def test_every_valid_input_completes(run: FuzzRun) -> None:
    failed = broken(run, lambda c: c.expect.outcome == VALID)
    assert len(failed) == 0, report(failed, run)


def test_no_bad_input_reached_a_service_or_was_retried(run: FuzzRun) -> None:
    downstream, retries = run.results.downstream, run.results.retries
    errors = run.results.worker_errors  # the refusal's own machinery failing
    assert len(downstream) == 0, "\n".join(downstream[:50])
    assert len(retries) == 0, "\n".join(retries[:50])
    assert len(errors) == 0, "\n".join(errors[:50])


def test_the_worker_kept_its_processes_and_answers_ping(run: FuzzRun) -> None:
    deaths = len(run.results.deaths)
    assert deaths == 0, summary(run.results)
    worker = run.target.worker
    alive = worker.process.poll() is None
    assert alive
    same = (worker.process.pid, sorted(worker.child_pids())) == run.pids
    assert same, f"{run.pids} then {(worker.process.pid, sorted(worker.child_pids()))}"
    assert run.target.ping()


def test_the_consumer_is_alive_and_handled_every_valid_entry(run: FuzzRun) -> None:
    target = run.target
    stops = len(run.results.consumer_deaths)
    assert stops == 0, summary(run.results)
    alive = target.consumer_alive()
    assert alive, repr(target.consumer_error)
    valid = [
        v for v in run.results.verdicts if v.case.kind == "event" and v.case.expect.outcome == VALID
    ]
    failed = [v for v in valid if not v.passed]
    assert len(valid) > 0
    assert len(failed) == 0, report(failed, run)
    failures = target.consumer.stats.failures
    assert failures == 0
