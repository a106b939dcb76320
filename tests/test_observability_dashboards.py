"""Grafana provisioning and dashboards: well-formed, wired to the provisioned datasources."""

from __future__ import annotations

import json
import re

import yaml

from tests.dashboards import dashboards, variables
from tests.support import ROOT

GRAFANA = ROOT / "observability" / "grafana"


def datasources() -> dict[str, dict]:
    config = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "datasources.yml").read_text())
    return {source["uid"]: source for source in config["datasources"]}


def test_the_four_dashboards_exist_with_unique_uids_and_panel_ids():
    found = dashboards()
    assert set(found) == {"service-overview", "jobs-and-queue", "slo-burn", "proxies-eye-view"}
    assert len({d["uid"] for d in found.values()}) == 4
    for name, dashboard in found.items():
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids)) >= 5, name
        for panel in dashboard["panels"]:
            assert panel["title"] and panel["description"], (name, panel["title"])
            assert panel["targets"], (name, panel["title"])


def test_no_panel_names_a_fixed_datasource():
    """Panels read the $datasource variable: the dashboards import into a Grafana whose
    Prometheus has any uid. Its default is the datasource provisioned here, so compose works."""
    sources = datasources()
    for name, dashboard in dashboards().items():
        chosen = variables(dashboard)["datasource"]
        assert (chosen["type"], chosen["query"]) == ("datasource", "prometheus"), name
        assert sources[chosen["current"]["value"]]["type"] == "prometheus", name
        for panel in dashboard["panels"]:
            for where in (panel, *panel["targets"]):
                assert where["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, (
                    name,
                    panel["title"],
                )


def test_every_variable_is_defined_and_used():
    for name, dashboard in dashboards().items():
        defined = set(variables(dashboard))
        used = set(re.findall(r"\$\{?([a-z_]+)", json.dumps([dashboard["panels"], dashboard["links"]])))
        assert used - {"__rate_interval", "__interval", "__range"} == defined, name


def test_exemplars_link_trace_ids_to_jaeger():
    destinations = datasources()["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert {"name": "trace_id", "datasourceUid": "jaeger"} in destinations
    for dashboard in dashboards().values():
        traces = variables(dashboard)["traces"]
        assert (traces["type"], traces["query"], traces["current"]["value"]) == (
            "datasource",
            "jaeger",
            "jaeger",
        )
    jobs = dashboards()["jobs-and-queue"]
    with_exemplars = [p for p in jobs["panels"] if any(t.get("exemplar") for t in p["targets"])]
    assert any(p["type"] == "heatmap" and "job_duration" in p["targets"][0]["expr"] for p in with_exemplars)
    assert all(
        any('"datasource":"${traces}"' in link["url"] for link in d["links"]) for d in dashboards().values()
    )


def test_the_proxies_view_says_what_feeds_its_5xx_panels():
    panels = dashboards()["proxies-eye-view"]["panels"]
    by_status = next(p for p in panels if p["title"].startswith("5xx per second by status"))
    assert "sum by (status)" in by_status["targets"][0]["expr"]
    assert "524" in by_status["description"] and "504" in by_status["description"]


def test_heatmaps_read_their_buckets_as_a_heatmap():
    """Without format "heatmap" Grafana draws cumulative `le` series as unrelated time series."""
    heatmaps = [(n, p) for n, d in dashboards().items() for p in d["panels"] if p["type"] == "heatmap"]
    assert heatmaps
    for name, panel in heatmaps:
        for target in panel["targets"]:
            assert target.get("format") == "heatmap", (name, panel["title"])
            assert "_bucket" in target["expr"] and target["legendFormat"] == "{{le}}", (name, panel["title"])


def slo_alert_factors() -> dict[str, tuple[float, set[float]]]:
    """Per SLO (the alerts' `slo` label): its error budget and the burn-rate factors its alerts
    page or ticket on, read from the alert expressions (`> (14.4 * 0.001)`, `> 0.001`)."""
    groups = yaml.safe_load((ROOT / "observability" / "prometheus" / "rules" / "alerts.yml").read_text())
    found: dict[str, tuple[set[float], set[float]]] = {}
    for rule in (r for g in groups["groups"] for r in g["rules"] if "slo" in r.get("labels", {})):
        budgets, factors = found.setdefault(rule["labels"]["slo"], (set(), set()))
        for factor, budget in re.findall(r">\s*\(?(?:([\d.]+)\s*\*\s*)?([\d.]+)\)?", rule["expr"]):
            budgets.add(float(budget))
            factors.add(float(factor or 1))
    assert all(len(budgets) == 1 for budgets, _ in found.values()), found
    return {slo: (budgets.pop(), factors) for slo, (budgets, factors) in found.items()}


def threshold_lines(panel: dict) -> set[float]:
    defaults = panel["fieldConfig"]["defaults"]
    assert defaults["custom"]["thresholdsStyle"]["mode"] in ("line", "dashed"), panel["title"]
    return {step["value"] for step in defaults["thresholds"]["steps"] if step["value"] is not None}


def test_slo_panels_draw_the_targets_and_burn_rates_the_alerts_use():
    """The lines are where the alerts fire: read from alerts.yml, so the two cannot drift apart."""
    slos = slo_alert_factors()
    assert slos["availability"] == (0.001, {14.4, 6, 3, 1})
    assert slos["job-latency"] == (0.01, {14.4, 6, 3, 1})
    panels = {p["title"]: p for p in dashboards()["slo-burn"]["panels"]}
    for slo, prefix in (("availability", "Availability"), ("job-latency", "Job latency")):
        budget, factors = slos[slo]
        assert threshold_lines(panels[f"{prefix}: error ratio by window"]) == {budget}
        assert threshold_lines(panels[f"{prefix}: burn rate (1h, 6h, 1d)"]) == factors
        assert threshold_lines(panels[f"{prefix}: budget left over the last 30 days"]) == {0}
    recording = (ROOT / "observability" / "prometheus" / "rules" / "recording.yml").read_text()
    slow = float(re.search(r'delineate_job_duration_seconds_bucket\{le="([\d.]+)"', recording).group(1))
    durations = next(
        p for p in dashboards()["jobs-and-queue"]["panels"] if p["title"].startswith("Job duration p50")
    )
    assert threshold_lines(durations) == {slow}


def test_no_panel_reads_days_of_raw_samples():
    """A [30d] range over every raw series is slow and, past the retention, silently short: the
    30-day budgets come from recording rules (delineate:slo_*:*_rate30d)."""
    for name, dashboard in dashboards().items():
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                assert not re.search(r"\[\d+[dwy]\]", target["expr"]), (name, panel["title"])
    budgets = [p for p in dashboards()["slo-burn"]["panels"] if "budget left" in p["title"]]
    assert len(budgets) == 2 and all("_rate30d" in p["targets"][0]["expr"] for p in budgets)


def test_every_dashboard_marks_restarts_and_deploys():
    """One annotation per process start, placed at the start time itself (the series value), so
    a latency step or an error burst can be laid against the deploy that caused it."""
    for name, dashboard in dashboards().items():
        (annotation,) = dashboard["annotations"]["list"]
        assert annotation["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, name
        assert annotation["enable"] and annotation["useValueForTime"], name
        assert re.fullmatch(
            r"max by \(job, instance\) \(delineate_process_start_time_seconds"
            r"\{(job=~\"\$job\", )?namespace=~\"\$namespace\"\}\) \* 1000",
            annotation["expr"],
        ), (name, annotation["expr"])
        assert ("{job=~" in annotation["expr"]) == ("job" in variables(dashboard)), name
