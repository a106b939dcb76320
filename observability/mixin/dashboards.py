"""The Grafana dashboards: written once in dashboards/*.json without any installation's labels,
scoped by the mixin's config when rendered."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

from observability.mixin.config import Config
from observability.mixin.promql import scope

SOURCES = Path(__file__).parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Every series the service exports: what a label variable lists the values of.
SERVICE_SERIES = '__name__=~"delineate_.+"'


def _label_values(config: Config, label: str) -> str:
    return f"label_values({{{', '.join([SERVICE_SERIES, *config.matchers])}}}, {label})"


def _variable(config: Config, label: str) -> dict:
    """A multi-value variable over `label`. "All" is `.*`, not the list of values found: `.*`
    also matches a series without the label, so the panels keep their data on a Prometheus
    where no series carries it (compose has no namespace)."""
    query = _label_values(config, label)
    return {
        "name": label,
        "label": label.capitalize(),
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"query": query, "refId": label},
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"text": ["All"], "value": ["$__all"]},
        "options": [],
        "refresh": 2,
        "sort": 1,
        "regex": "",
        "hide": 0,
    }


def render(config: Config, source: dict) -> dict:
    """One dashboard with a variable per group_by label, and every query (annotations too)
    reading only the selector's series of the chosen values."""
    dashboard = copy.deepcopy(source)
    chosen = [f'{label}=~"${label}"' for label in config.group_by]
    raw, recorded = [*chosen, *config.matchers], chosen
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            target["expr"] = scope(target["expr"], raw, recorded)
    for annotation in dashboard["annotations"]["list"]:
        annotation["expr"] = scope(annotation["expr"], raw, recorded)
    variables = dashboard["templating"]["list"]
    for variable in variables:
        if variable["type"] == "query":
            label = re.fullmatch(r"label_values\(.*,\s*(\w+)\)", variable["definition"]).group(1)
            variable["definition"] = variable["query"]["query"] = _label_values(config, label)
    variables += [_variable(config, label) for label in config.group_by]
    return dashboard


def rendered(config: Config) -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {
        path.name: json.dumps(render(config, json.loads(path.read_text())), indent=2) + "\n"
        for path in sorted(SOURCES.glob("*.json"))
    }
