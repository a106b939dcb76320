"""The Prometheus configuration, rules and alert unit tests, checked by promtool itself."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from tests.support import ROOT, require_binary

PROMETHEUS = ROOT / "observability" / "prometheus"
RUNBOOKS = ROOT / "docs" / "runbooks"
# the catalogue, and the scrape-time collector that sits with the queues
METRIC_MODULES = (ROOT / "service" / "telemetry" / "metrics.py", ROOT / "service" / "jobs" / "enqueue.py")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = require_binary("promtool")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120, cwd=PROMETHEUS)


def alerts() -> list[dict]:
    groups = yaml.safe_load((PROMETHEUS / "rules" / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_accepts_the_config_and_its_rule_files():
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 rule files found" in result.stdout


def test_promtool_accepts_the_rules():
    result = promtool("check", "rules", "rules/recording.yml", "rules/alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_promtool_alert_unit_tests_pass():
    result = promtool("test", "rules", "tests/alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_unit_tested_firing_and_not_firing():
    cases = yaml.safe_load((PROMETHEUS / "tests" / "alerts_test.yml").read_text())["tests"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in cases:
        for check in case["alert_rule_test"]:
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert len(names) >= 9
    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested staying quiet"


def test_every_alert_has_a_runbook_with_the_three_sections():
    for rule in alerts():
        page = RUNBOOKS / f"{rule['alert']}.md"
        assert rule["annotations"]["runbook_url"] == f"docs/runbooks/{page.name}"
        text = page.read_text()
        for section in ("## What it means", "## How to confirm", "## What to do"):
            assert section in text, f"{page.name} lacks {section!r}"


def test_rules_use_only_metrics_the_service_defines():
    """A typo in a metric name would give a rule that is valid, quiet and useless."""
    defined = {
        name for m in METRIC_MODULES for name in re.findall(r'"(delineate_[a-z0-9_]+)"', m.read_text())
    }
    suffixes = ("_total", "_bucket", "_count", "_sum")
    texts = [(PROMETHEUS / "rules" / name).read_text() for name in ("recording.yml", "alerts.yml")]
    used = {name for text in texts for name in re.findall(r"\b(delineate_[a-z0-9_]+)", text)}
    assert used
    for name in used:
        base = next((name.removesuffix(s) for s in suffixes if name.endswith(s)), name)
        assert base in defined or name in defined, f"{name} is not exported by the service"
