"""The Prometheus configuration, rules and alert unit tests, checked by promtool itself."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from tests import dashboards
from tests.support import ROOT, require_binary

PROMETHEUS = ROOT / "observability" / "prometheus"
RUNBOOKS = ROOT / "docs" / "runbooks"
# Where the service defines its metrics: the instrumentation, and the scrape-time queue collector.
METRICS_MODULES = (ROOT / "service" / "telemetry" / "metrics.py", ROOT / "service" / "jobs" / "enqueue.py")


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
    # the unit tests render runbook links with the base prometheus.yml gives them
    assert all(case["external_labels"]["runbook_base"] == runbook_base() for case in cases)
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in cases:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert len(names) >= 9
    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested staying quiet"


def runbook_base() -> str:
    """The one base of every runbook link: the external label `runbook_base` of prometheus.yml."""
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    return config["global"]["external_labels"]["runbook_base"]


def test_every_alert_has_a_runbook_with_the_three_sections():
    """Alertmanager and Slack need absolute links: each is the one base plus the page's name."""
    base = runbook_base()
    assert base.startswith("https://") and base.endswith("/docs/runbooks/"), base
    for rule in alerts():
        page = RUNBOOKS / f"{rule['alert']}.md"
        assert rule["annotations"]["runbook_url"] == "{{ $externalLabels.runbook_base }}" + page.name
        text = page.read_text()
        for section in ("## What it means", "## How to confirm", "## What to do"):
            assert section in text, f"{page.name} lacks {section!r}"


def test_rules_use_only_metrics_the_service_defines():
    """A typo in a metric name would give a rule that is valid, quiet and useless."""
    defined = {n for m in METRICS_MODULES for n in re.findall(r'"(delineate_[a-z0-9_]+)"', m.read_text())}
    suffixes = ("_total", "_bucket", "_count", "_sum")
    texts = [(PROMETHEUS / "rules" / name).read_text() for name in ("recording.yml", "alerts.yml")]
    used = {name for text in texts for name in re.findall(r"\b(delineate_[a-z0-9_]+)", text)}
    assert used
    for name in used:
        base = next((name.removesuffix(s) for s in suffixes if name.endswith(s)), name)
        assert base in defined or name in defined, f"{name} is not exported by the service"


# Read from Redis by every API process at scrape time (service/jobs/enqueue.py, QueueCollector):
# each API process exports the same value, so a sum counts it once per process.
SCRAPE_TIME_GAUGES = re.compile(r"\bdelineate_(queue_depth|rq_workers|redis_memory_[a-z_]+)\b")
# $job as Grafana resolves "All" on a Prometheus with the shipped scrape jobs.
JOBS = {"job": dashboards.all_of(dashboards.shipped_jobs())}
SUM = re.compile(r"\bsum\s*(?:(?:by|without)\s*\([^)]*\)\s*)?\(")


def summed_scrape_time_gauges(expr: str) -> list[str]:
    """The scrape-time gauges inside the argument of any `sum` in `expr`."""
    found = []
    for match in SUM.finditer(expr):
        depth, end = 1, match.end()
        while depth and end < len(expr):
            depth += {"(": 1, ")": -1}.get(expr[end], 0)
            end += 1
        found += [m.group(0) for m in SCRAPE_TIME_GAUGES.finditer(expr[match.end() : end])]
    return found


def test_summed_scrape_time_gauges_are_detected():
    assert summed_scrape_time_gauges("sum by (state) (delineate_rq_workers)") == ["delineate_rq_workers"]
    assert summed_scrape_time_gauges("sum(max by (queue) (delineate_queue_depth))") == [
        "delineate_queue_depth"
    ]
    assert summed_scrape_time_gauges("max by (state) (delineate_rq_workers) + sum(rate(x[5m]))") == []


def test_no_dashboard_or_rule_sums_a_gauge_every_api_process_exports():
    """Use max (as the queue-depth panels do): a sum doubles the value with two API processes."""
    exprs = [
        (f"{stem}: {panel['title']}", target["expr"]) for stem, panel, target, _ in dashboards.queries(JOBS)
    ]
    for name in ("recording.yml", "alerts.yml"):
        groups = yaml.safe_load((PROMETHEUS / "rules" / name).read_text())["groups"]
        exprs += [(f"{name}: {r.get('record') or r['alert']}", r["expr"]) for g in groups for r in g["rules"]]
    summed = [(where, expr) for where, expr in exprs if summed_scrape_time_gauges(expr)]
    assert not summed, summed


# Two API processes exporting the same Redis state, as QueueCollector does: the panels over
# these gauges must show the state once. (panel title, refId) -> the samples it must show.
TWO_API_PROCESSES = [
    *(
        f'delineate_rq_workers{{job="delineate-api",instance="{i}",state="{state}"}}'
        for i in ("api-1:3000", "api-2:3000")
        for state in ("busy", "idle")
    ),
    *(
        f'delineate_queue_depth{{job="delineate-api",instance="{i}",queue="downloads-small"}}'
        for i in ("api-1:3000", "api-2:3000")
    ),
    *(
        f'delineate_redis_memory_{kind}_bytes{{job="delineate-api",instance="{i}"}}'
        for i in ("api-1:3000", "api-2:3000")
        for kind in ("used", "max")
    ),
]
VALUES = {"busy": 2, "idle": 1, "queue_depth": 5, "used": 300, "max": 1000}
SHOWN_ONCE = {
    ("Workers by state (RQ)", "A"): [("{state='busy'}", 2), ("{state='idle'}", 1)],
    ("Queue depth", "A"): [("{queue='downloads-small'}", 5)],
    ("Redis memory used / maxmemory", "A"): [("{}", 300)],
    ("Redis memory used / maxmemory", "B"): [("{}", 1000)],
}


def series_value(series: str) -> int:
    for key, value in VALUES.items():
        if f'"{key}"' in series or f"_{key}" in series:
            return value
    raise AssertionError(series)


@pytest.mark.slow
def test_panels_over_scrape_time_gauges_count_the_redis_state_once(tmp_path):
    """Evaluated by promtool with the recording rules, as Prometheus would with two API processes."""
    targets = {
        (panel["title"], target["refId"]): expr
        for _, panel, target, expr in dashboards.queries(
            {"job": dashboards.all_of(dashboards.shipped_jobs())}
        )
        if SCRAPE_TIME_GAUGES.search(expr) or re.search(r"delineate:(queue_depth|rq_workers)", expr)
    }
    assert set(targets) == set(SHOWN_ONCE)
    test_file = {
        "rule_files": [str(PROMETHEUS / "rules" / "recording.yml")],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": f"{series_value(s)}x10"} for s in TWO_API_PROCESSES],
                "promql_expr_test": [
                    {
                        "expr": f"({targets[key]}) * 1",  # * 1 drops the metric name
                        "eval_time": "5m",
                        "exp_samples": [
                            {"labels": labels.replace("'", '"'), "value": value} for labels, value in samples
                        ],
                    }
                    for key, samples in SHOWN_ONCE.items()
                ],
            }
        ],
    }
    path = tmp_path / "two_api_processes_test.yml"
    path.write_text(yaml.safe_dump(test_file))
    result = promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
