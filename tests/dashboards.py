"""Reading the Grafana dashboards in tests: their panels' queries, and those queries expanded as
Grafana would run them (built-in variables for a short time range, template variables at their
defaults), so they can be sent to a real Prometheus or promtool."""

from __future__ import annotations

import json

import yaml

from tests.support import ROOT

DASHBOARDS = ROOT / "observability" / "grafana" / "dashboards"
# Grafana's built-in variables, as Grafana would expand them for a short time range.
BUILTIN_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


def dashboards() -> dict[str, dict]:
    """Every dashboard, by file stem."""
    return {path.stem: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def variables(dashboard: dict) -> dict[str, dict]:
    """The dashboard's template variables, by name."""
    return {variable["name"]: variable for variable in dashboard["templating"]["list"]}


def expand(expr: str, dashboard: dict, values: dict[str, str] | None = None) -> str:
    """`expr` with Grafana's built-ins and the dashboard's template variables at their defaults.

    A variable whose default is "All" has no value until Grafana asks the datasource, unless
    it has a custom `allValue` (the group_by variables' `.*`): pass it in `values` (a regex, as
    Grafana writes "All" of a multi-value variable).
    """
    for name, value in BUILTIN_VARIABLES.items():
        expr = expr.replace(name, value)
    for name, variable in variables(dashboard).items():
        references = (f"${{{name}}}", f"${name}")
        if not any(reference in expr for reference in references):
            continue
        if name in (values or {}):
            value = values[name]
        else:
            value = variable["current"]["value"]
            if value in ("$__all", ["$__all"]):
                value = variable.get("allValue")  # Grafana writes a custom "All" value as is
                assert value, f"${name} defaults to All: pass its value"
        for reference in references:
            expr = expr.replace(reference, value)
    return expr


def all_of(options: list[str]) -> str:
    """A multi-value variable set to "All", as Grafana writes it into a Prometheus query."""
    return "(" + "|".join(sorted(options)) + ")"


def shipped_jobs() -> list[str]:
    """The scrape jobs of the shipped prometheus.yml: what $job's "All" finds on such a Prometheus."""
    config = yaml.safe_load((ROOT / "observability" / "prometheus" / "prometheus.yml").read_text())
    return [job["job_name"] for job in config["scrape_configs"]]


def queries(values: dict[str, str] | None = None) -> list[tuple[str, dict, dict, str]]:
    """(dashboard stem, panel, target, expanded expr) for every Prometheus target, annotation
    queries included (as a panel titled after the annotation, refId "annotation")."""
    found = []
    for stem, dashboard in dashboards().items():
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                found.append((stem, panel, target, expand(target["expr"], dashboard, values)))
        for annotation in dashboard["annotations"]["list"]:
            where = {"title": f"annotation {annotation['name']}"}
            target = {"refId": "annotation", "expr": annotation["expr"]}
            found.append((stem, where, target, expand(annotation["expr"], dashboard, values)))
    return found
