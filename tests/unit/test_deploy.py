"""The shipped alert rules and dashboard: promtool checks and unit-tests the rules, and
every metric they query is one the code exports (intent.metrics.FAMILIES)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from intent import metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "intent-pipeline.json"
# A metric name in PromQL: intent_..., optionally a histogram's or counter's suffix.
METRIC = re.compile(r"\bintent_[a-z_]+")
SUFFIXES = ("_bucket", "_sum", "_count")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is not installed (.ci/run installs Debian's prometheus)")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return found


def test_promtool_checks_the_rules() -> None:
    out = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 9 rules found" in out.stdout


def test_promtool_unit_tests_the_rules() -> None:
    out = subprocess.run(
        [promtool(), "test", "rules", str(RULE_TESTS)],
        capture_output=True,
        text=True,
        check=False,
        cwd=RULE_TESTS.parent,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def exported_names() -> set[str]:
    names = set()
    for family in metrics.FAMILIES:
        names.add(family.exposed)
        if family.kind == "histogram":
            names.update(family.name + suffix for suffix in SUFFIXES)
    return names


def queried(expressions: list[str]) -> set[str]:
    return {name for expr in expressions for name in METRIC.findall(expr)}


def test_every_metric_the_rules_query_is_exported() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    names = queried([rule["expr"] for rule in rules])
    assert names and names <= exported_names(), names - exported_names()
    for rule in rules:
        assert re.fullmatch(r"Intent[A-Z][A-Za-z]+", rule["alert"]), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_every_metric_the_dashboard_queries_is_exported_and_every_family_is_shown() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    names = queried(expressions)
    assert names <= exported_names(), names - exported_names()
    shown = {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}
    every = {f.exposed if f.kind != "histogram" else f.name for f in metrics.FAMILIES}
    assert every - shown == set()
