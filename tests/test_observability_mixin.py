"""The monitoring mixin (observability/mixin/): the shipped rules and dashboards are its default
output, its recording rules keep the group_by labels the dashboards filter on, and a render for
other labels is still valid rules, passing alert tests and scoped dashboards."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from observability.mixin import Config, render
from observability.mixin.promql import scope
from tests import dashboards
from tests.support import ROOT, require_binary

OBSERVABILITY = ROOT / "observability"
ALERT_TESTS = OBSERVABILITY / "prometheus" / "tests" / "alerts_test.yml"
NAMESPACE = 'namespace=~"$namespace"'
# A selector of the service's series and its matchers (braces inside quoted values included).
SELECTOR_OF = re.compile(r'\b(delineate[_:][a-z0-9_:]+|up)\b(?:\{((?:[^}"]|"(?:[^"\\]|\\.)*")*)\})?')


def promtool(*args: str, cwd=OBSERVABILITY / "prometheus") -> subprocess.CompletedProcess[str]:
    binary = require_binary("promtool")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_the_shipped_files_are_the_mixins_default_output():
    """Edit observability/mixin/ and run `python -m observability.mixin`, never the outputs."""
    drifted = [
        relative
        for relative, text in render(Config()).items()
        if (OBSERVABILITY / relative).read_text() != text
    ]
    assert not drifted, f"re-render with `python -m observability.mixin`: {drifted}"
    shipped = {
        str(path.relative_to(OBSERVABILITY))
        for path in [
            *(OBSERVABILITY / "prometheus" / "rules").glob("*.yml"),
            *(OBSERVABILITY / "grafana" / "dashboards").glob("*.json"),
        ]
    }
    assert shipped == set(render(Config()))


def test_scope_adds_matchers_to_the_services_selectors_only():
    raw, recorded = ['job=~"d.+"', NAMESPACE], [NAMESPACE]
    assert scope(
        'sum by (le) (rate(delineate_x_bucket{route!="/stream/{job_id}"}[$__rate_interval]))', raw, recorded
    ) == (
        'sum by (le) (rate(delineate_x_bucket{route!="/stream/{job_id}", job=~"d.+", '
        'namespace=~"$namespace"}[$__rate_interval]))'
    )
    assert scope("delineate:a:rate5m / 0.01 or other_metric", raw, recorded) == (
        'delineate:a:rate5m{namespace=~"$namespace"} / 0.01 or other_metric'
    )
    assert (
        scope('up{job=~"$job"} == 0', raw, []) == 'up{job=~"$job", job=~"d.+", namespace=~"$namespace"} == 0'
    )
    assert scope("delineate:a:rate5m", raw, []) == "delineate:a:rate5m"


def test_every_dashboard_filters_every_query_on_namespace():
    """$namespace's "All" is `.*`, which also matches series without the label (compose)."""
    for name, dashboard in dashboards.dashboards().items():
        namespace = dashboards.variables(dashboard)["namespace"]
        assert namespace["allValue"] == ".*" and namespace["includeAll"], name
        exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
        for expr in [*exprs, *(a["expr"] for a in dashboard["annotations"]["list"])]:
            selectors = SELECTOR_OF.findall(expr)
            assert selectors and all(NAMESPACE in m for _, m in selectors), (name, expr)


def expr_test(expr: str, samples: list[tuple[str, float]]) -> dict:
    return {
        "expr": expr,
        "eval_time": "10m",
        "exp_samples": [{"labels": labels, "value": value} for labels, value in samples],
    }


def test_recording_rules_keep_the_namespace_the_dashboards_filter_on(tmp_path):
    """Two namespaces, errors in one only: each keeps its own ratios (0, not absent, where there
    were no errors), so a panel fed by a recording rule shows the chosen namespace's data."""
    series = [
        (
            'delineate_http_requests_total{namespace="a",route="/v1/download/initiate",status="2xx"}',
            "0+60x20",
        ),
        (
            'delineate_http_requests_total{namespace="a",route="/v1/download/initiate",status="5xx"}',
            "0+60x20",
        ),
        (
            'delineate_http_requests_total{namespace="b",route="/v1/download/initiate",status="2xx"}',
            "0+60x20",
        ),
        ('delineate_queue_depth{namespace="a",instance="api-1",queue="downloads-small"}', "3x20"),
        ('delineate_queue_depth{namespace="a",instance="api-2",queue="downloads-small"}', "3x20"),
        ('delineate_queue_depth{namespace="b",instance="api-1",queue="downloads-small"}', "7x20"),
    ]
    slo = dashboards.dashboards()["slo-burn"]
    error_ratio = next(
        t["expr"] for p in slo["panels"] for t in p["targets"] if "error_ratio_rate5m" in t["expr"]
    )
    route = '{namespace="%s",route="/v1/download/initiate"}'
    cases = [
        expr_test(
            "delineate:http_errors:ratio_rate5m",
            [
                ("delineate:http_errors:ratio_rate5m" + route % "a", 0.5),
                ("delineate:http_errors:ratio_rate5m" + route % "b", 0),
            ],
        ),
        expr_test(
            "delineate:slo_availability:error_ratio_rate5m",
            [
                ('delineate:slo_availability:error_ratio_rate5m{namespace="a"}', 0.5),
                ('delineate:slo_availability:error_ratio_rate5m{namespace="b"}', 0),
            ],
        ),
        expr_test(
            "delineate:slo_availability:errors:rate5m",
            [
                ('delineate:slo_availability:errors:rate5m{namespace="a"}', 1),
                ('delineate:slo_availability:errors:rate5m{namespace="b"}', 0),
            ],
        ),
        expr_test(
            "delineate:queue_depth:max",
            [
                ('delineate:queue_depth:max{namespace="a",queue="downloads-small"}', 3),
                ('delineate:queue_depth:max{namespace="b",queue="downloads-small"}', 7),
            ],
        ),
        # the SLO panel, as Grafana runs it with $namespace set to b
        expr_test(
            dashboards.expand(error_ratio, slo, {"namespace": "b"}),
            [
                ('delineate:slo_availability:error_ratio_rate5m{namespace="b"}', 0),
            ],
        ),
    ]
    test_file = {
        "rule_files": [str(OBSERVABILITY / "prometheus" / "rules" / "recording.yml")],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series],
                "promql_expr_test": cases,
            }
        ],
    }
    path = tmp_path / "namespaces_test.yml"
    path.write_text(yaml.safe_dump(test_file))
    result = promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


SELECTOR = 'job=~"delineate-.+"'


@pytest.mark.slow
def test_a_render_for_other_labels_is_valid_and_scoped(tmp_path):
    """The CLI with a scrape-job selector and a cluster label: promtool accepts the rules, the
    alert unit tests pass on them (their series given a job the selector matches), and every
    dashboard query reads only the selector's series of the chosen cluster and namespace."""
    out = tmp_path / "out"
    rendered = subprocess.run(
        [
            sys.executable,
            "-m",
            "observability.mixin",
            "--out",
            str(out),
            "--selector",
            SELECTOR,
            "--group-by",
            "cluster,namespace",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert rendered.returncode == 0, rendered.stderr
    rules = out / "prometheus" / "rules"
    checked = promtool("check", "rules", str(rules / "recording.yml"), str(rules / "alerts.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    recording = (rules / "recording.yml").read_text()
    assert "sum by (route, cluster, namespace) (rate(delineate_http_requests_total{" + SELECTOR in recording

    cases = yaml.safe_load(ALERT_TESTS.read_text())
    cases["rule_files"] = [str(rules / "recording.yml"), str(rules / "alerts.yml")]
    for case in cases["tests"]:
        for item in case["input_series"]:
            if "job=" not in item["series"]:
                item["series"] = item["series"].replace("{", '{job="delineate-api",', 1)
    (tmp_path / "alerts_test.yml").write_text(yaml.safe_dump(cases))
    tested = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr

    chosen = ['cluster=~"$cluster"', NAMESPACE]
    for path in sorted((out / "grafana" / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text())
        variables = dashboards.variables(dashboard)
        assert {"cluster", "namespace"} <= set(variables), path.name
        for name in ("cluster", "namespace"):
            assert SELECTOR in variables[name]["definition"], path.name
        exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
        exprs += [a["expr"] for a in dashboard["annotations"]["list"]]
        for expr in exprs:
            for name, matchers in SELECTOR_OF.findall(expr):
                wanted = chosen if ":" in name else [*chosen, SELECTOR]
                assert all(m in matchers for m in wanted), (path.name, expr)
