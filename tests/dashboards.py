"""Reading the Grafana dashboards in tests: their panels' queries, and those queries expanded as
Grafana would run them (built-in variables for a short time range, template variables at their
defaults), so they can be sent to a real Prometheus or promtool."""

from __future__ import annotations

import json

from tests.support import ROOT

DASHBOARDS = ROOT / "observability" / "grafana" / "dashboards"
# Grafana's built-in variables, as Grafana would expand them for a short time range.
BUILTIN_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


def dashboards() -> dict[str, dict]:
    """Every dashboard, by file stem."""
    return {path.stem: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def expand(expr: str, dashboard: dict) -> str:
    """`expr` with Grafana's built-ins and the dashboard's template variables at their defaults."""
    for name, value in BUILTIN_VARIABLES.items():
        expr = expr.replace(name, value)
    for variable in dashboard.get("templating", {}).get("list", []):
        expr = expr.replace(f"${variable['name']}", str(variable.get("current", {}).get("value", "")))
    return expr


def queries() -> list[tuple[str, dict, dict, str]]:
    """(dashboard stem, panel, target, expanded expr) for every Prometheus target."""
    found = []
    for stem, dashboard in dashboards().items():
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                found.append((stem, panel, target, expand(target["expr"], dashboard)))
    return found
