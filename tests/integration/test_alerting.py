"""Alerting is complete: every alert is unit-tested with promtool and has a runbook section.

The promtool run itself is in test_prometheus.py (test_promtool_rule_unit_tests_pass); this file
checks that nothing escapes it: each alert of rules.yml is expected *firing* somewhere in
rules_test.yml, and its runbook_url points at a section of docs/runbook.md that exists.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
RULES_TEST = ROOT / "deploy" / "prometheus" / "rules_test.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"


def alerts() -> dict[str, dict[str, object]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


def github_anchor(heading: str) -> str:
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_has_a_unit_test_that_sees_it_fire():
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    firing: set[str] = set()
    for group in tests:
        for case in group.get("promql_expr_test", []):
            for sample in case.get("exp_samples", []):
                labels = sample["labels"]
                if 'alertstate="firing"' in labels:
                    firing.add(re.search(r'alertname="(\w+)"', labels).group(1))  # type: ignore[union-attr]
        for case in group.get("alert_rule_test", []):
            if case.get("exp_alerts"):
                firing.add(case["alertname"])
    missing = sorted(set(alerts()) - firing)
    assert not missing, f"alerts never seen firing in rules_test.yml: {missing}"


def test_every_alert_links_to_its_runbook_section():
    headings = {github_anchor(line[3:]) for line in RUNBOOK.read_text().splitlines() if line.startswith("## ")}
    for name, rule in alerts().items():
        annotations = rule["annotations"]
        assert isinstance(annotations, dict)
        assert annotations.get("runbook_url") == f"docs/runbook.md#{name.lower()}", name
        assert name.lower() in headings, f"docs/runbook.md has no section for {name}"
    # No stale section for an alert that no longer exists.
    assert headings == {name.lower() for name in alerts()}
