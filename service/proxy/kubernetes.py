"""The Kubernetes side of a profile: the edge's Ingress and the pods' stop and scale values.

`delineate proxy render ingress-nginx|aws-alb --profiles deploy/kubernetes/profiles.toml --out
deploy/kubernetes` writes overlays/<target>/ (ingress.yaml, pods.yaml, app.env); the overlay's
hand-written kustomization.yaml puts them over the base. `pods_from_manifests` reads the same
values back from rendered objects so `budget.check` can judge what would really be applied.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from service.proxy.profiles import CHECKOUT, Pods, Profile
from service.proxy.render import TEMPLATES, _Template
from service.settings import API_SHUTDOWN_GRACE_S

API = "delineate-api"  # the API's Deployment and Service
WORKER = "delineate-worker"  # the worker's Deployment and ScaledObject
STREAM_PREFIX = "/v1/download/stream/"
# What the Ingresses route: the public API, its health checks, docs and UI; never /metrics.
PUBLIC_PATHS = (
    ("/", "Exact"),
    ("/health", "Prefix"),
    ("/openapi", "Exact"),
    ("/docs", "Exact"),
    ("/ui", "Prefix"),
    ("/static", "Prefix"),
    ("/v1", "Prefix"),
)


def _fill(template: str, profile: Profile, **values: object) -> str:
    header = (
        f"Rendered by `delineate proxy render {profile.name} --profiles deploy/kubernetes/profiles.toml "
        f"--out deploy/kubernetes`:\n# edit the profile and re-render, not this file. Profile "
        f"{profile.name}: {profile.description}."
    )
    return _Template((TEMPLATES / template).read_text()).substitute(header=header, **values)


def backend(profile: Profile) -> tuple[str, int]:
    """The Service the Ingress sends to: the profile's one upstream, `service:port`."""
    service, _, port = profile.proxy.upstreams[0].rpartition(":")
    return service, int(port)


def _paths(profile: Profile, paths: Iterable[tuple[str, str]]) -> str:
    service, port = backend(profile)
    entries = [
        f"          - path: {path}\n"
        f"            pathType: {kind}\n"
        "            backend:\n"
        "              service:\n"
        f"                name: {service}\n"
        "                port:\n"
        f"                  number: {port}"
        for path, kind in paths
    ]
    return "\n".join(entries)


def _seconds(value: float) -> int:
    return max(1, round(value))


def ingress_nginx(profile: Profile) -> str:
    """Ingresses for ingress-nginx (the stream unbuffered) and the NetworkPolicy from it."""
    proxy = profile.proxy
    rate_limit = ""
    if proxy.rate_limit_rps:
        multiplier = max(1, round(proxy.rate_limit_burst / proxy.rate_limit_rps))
        rate_limit = (
            f'    nginx.ingress.kubernetes.io/limit-rps: "{proxy.rate_limit_rps:g}"\n'
            f'    nginx.ingress.kubernetes.io/limit-burst-multiplier: "{multiplier}"\n'
        )
    return _fill(
        "k8s-ingress-nginx.yaml",
        profile,
        connect_timeout=_seconds(proxy.connect_timeout_s),
        read_timeout=_seconds(proxy.read_timeout_s),
        body_limit=f"{proxy.client_max_body_kb}k",
        rate_limit=rate_limit,
        paths=_paths(profile, PUBLIC_PATHS),
        stream_paths=_paths(profile, [(STREAM_PREFIX, "Prefix")]),
        port=backend(profile)[1],
    )


def aws_alb(profile: Profile) -> str:
    """The Ingress for the AWS Load Balancer Controller and the NetworkPolicy from the VPC."""
    proxy = profile.proxy
    interval = max(5, proxy.health_check_interval_s)  # the ALB's minimum
    blocks = "\n".join(
        f"        - ipBlock:\n            cidr: {cidr}" for cidr in profile.app.trusted_proxies.split(",")
    )
    return _fill(
        "k8s-aws-alb.yaml",
        profile,
        idle_timeout=_seconds(proxy.read_timeout_s),
        deregistration_delay=proxy.deregistration_delay_s,
        health_interval=interval,
        health_timeout=min(5, interval - 1),
        paths=_paths(profile, PUBLIC_PATHS),
        ip_blocks=blocks,
        port=backend(profile)[1],
    )


def pods(profile: Profile) -> str:
    """Patches for the grace periods, the preStop pause, WORKER_DRAIN_S and KEDA's scaling."""
    assert profile.kubernetes, "a Kubernetes target's profile has a [kubernetes] section"
    derived = profile.kubernetes.pods()
    return _fill(
        "k8s-pods.yaml",
        profile,
        api_grace=derived.api_grace_s,
        api_shutdown=API_SHUTDOWN_GRACE_S,
        pre_stop=derived.pre_stop_s,
        worker_grace=derived.worker_grace_s,
        worker_drain=derived.worker_drain_s,
        min_workers=profile.kubernetes.min_workers,
        max_workers=profile.kubernetes.max_workers,
        cooldown=derived.cooldown_s,
    )


def app_env(profile: Profile) -> str:
    """The service's side of the budget, for the overlay's configMapGenerator (merged into
    delineate-config, which both Deployments read)."""
    lines = [f"# Rendered by `delineate proxy render {profile.name}` from deploy/kubernetes/profiles.toml."]
    lines += [f"{name}={value}" for name, value in profile.app_env().items()]
    return "\n".join(lines) + "\n"


def overlay_files(target: str) -> dict[str, Callable[[Profile], str]]:
    """The files render writes for a Kubernetes target, under deploy/kubernetes/."""
    edge = {"ingress-nginx": ingress_nginx, "aws-alb": aws_alb}[target]
    return {
        f"overlays/{target}/ingress.yaml": edge,
        f"overlays/{target}/pods.yaml": pods,
        f"overlays/{target}/app.env": app_env,
    }


OBSERVABILITY = CHECKOUT / "observability"
RULE_FILES = ("recording.yml", "alerts.yml")  # the shipped prometheus.yml's rule_files order


def prometheus_rule(rule_file: Path) -> str:
    """A rules file as a PrometheusRule: its `groups:` document becomes the spec, comments and
    all (indented, not re-serialised, so block scalars and the runbook templates stay exact)."""
    name = "delineate-" + rule_file.stem
    body = "".join(f"  {line}" if line.strip() else line for line in rule_file.read_text().splitlines(True))
    header = [
        f"# Generated from observability/prometheus/rules/{rule_file.name} by `delineate proxy render`",
        "# of a Kubernetes profile: edit the rules file and re-render, not this file.",
        "apiVersion: monitoring.coreos.com/v1",
        "kind: PrometheusRule",
        "metadata:",
        f"  name: {name}",
        "spec:",
    ]
    return "\n".join(header) + "\n" + body


def monitoring_files() -> dict[str, str]:
    """base/monitoring/: the PrometheusRules and the Grafana dashboards (a configMapGenerator
    reads them: kustomize loads nothing from outside its directory), copied from observability/.
    Only a checkout has observability/; an installed package renders the overlays alone."""
    if not OBSERVABILITY.is_dir():
        return {}
    rules = OBSERVABILITY / "prometheus/rules"
    files = {
        f"base/monitoring/prometheus-rule-{name.removesuffix('.yml')}.yaml": prometheus_rule(rules / name)
        for name in RULE_FILES
    }
    for dashboard in sorted((OBSERVABILITY / "grafana/dashboards").glob("*.json")):
        files[f"base/monitoring/dashboards/{dashboard.name}"] = dashboard.read_text()
    return files


def _find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o.get("kind") == kind and o["metadata"]["name"] == name]
    if len(found) != 1:
        raise ValueError(f"expected one {kind} {name}, found {len(found)}")
    return found[0]


def _container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def pods_from_manifests(objects: list[dict[str, Any]]) -> Pods:
    """The stop and scale values as rendered objects carry them (`kubectl kustomize` output,
    parsed), so the check judges what would be applied, hand edits included."""
    api = _find(objects, "Deployment", API)
    worker = _find(objects, "Deployment", WORKER)
    scaled = _find(objects, "ScaledObject", WORKER)
    drain = next(e["value"] for e in _container(worker, "worker")["env"] if e["name"] == "WORKER_DRAIN_S")
    behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    return Pods(
        pre_stop_s=int(_container(api, "api")["lifecycle"]["preStop"]["sleep"]["seconds"]),
        api_grace_s=int(api["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]),
        worker_drain_s=int(drain),
        worker_grace_s=int(worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]),
        cooldown_s=int(scaled["spec"]["cooldownPeriod"]),
        scale_down_window_s=int(behavior["scaleDown"]["stabilizationWindowSeconds"]),
    )


def _attributes(annotation: str) -> dict[str, str]:
    """`a=1,b=2` (the AWS Load Balancer Controller's attribute annotations) as a dict."""
    return dict(item.split("=", 1) for item in annotation.split(","))


def profile_from_manifests(profile: Profile, objects: list[dict[str, Any]]) -> Profile:
    """The profile with the edge's timeouts as the rendered Ingresses carry them."""
    notes = _find(objects, "Ingress", API)["metadata"]["annotations"]
    if "aws-alb" in profile.targets:
        balancer = _attributes(notes["alb.ingress.kubernetes.io/load-balancer-attributes"])
        group = _attributes(notes["alb.ingress.kubernetes.io/target-group-attributes"])
        return profile.with_proxy(
            read_timeout_s=float(balancer["idle_timeout.timeout_seconds"]),
            deregistration_delay_s=int(group["deregistration_delay.timeout_seconds"]),
            health_check_interval_s=int(notes["alb.ingress.kubernetes.io/healthcheck-interval-seconds"]),
        )
    nginx = "nginx.ingress.kubernetes.io/"
    read_timeouts = {
        float(_find(objects, "Ingress", name)["metadata"]["annotations"][nginx + "proxy-read-timeout"])
        for name in (API, API + "-stream")
    }
    return profile.with_proxy(
        read_timeout_s=min(read_timeouts),
        connect_timeout_s=float(notes[nginx + "proxy-connect-timeout"]),
        client_max_body_kb=int(notes[nginx + "proxy-body-size"].removesuffix("k")),
    )


def read_manifests(text: str) -> list[dict[str, Any]]:
    """Multi-document YAML (`kubectl kustomize` output) as objects. PyYAML is a dev dependency,
    not a runtime one: this runs where manifests are rendered (CI, a laptop), not in the image."""
    try:
        import yaml
    except ImportError:
        raise ValueError("reading manifests needs PyYAML (pip install pyyaml)") from None
    try:
        return [doc for doc in yaml.safe_load_all(text) if isinstance(doc, dict)]
    except yaml.YAMLError as exc:
        raise ValueError(f"the manifests are not YAML: {exc}") from None


def judged(profile: Profile, text: str) -> tuple[Profile, Pods]:
    """The profile and pod values as rendered manifests carry them, for `proxy check --manifests`."""
    if profile.kubernetes is None:
        raise ValueError(f"profile {profile.name} has no [kubernetes] section to check manifests against")
    objects = read_manifests(text)
    try:
        return profile_from_manifests(profile, objects), pods_from_manifests(objects)
    except (KeyError, StopIteration, TypeError) as exc:
        raise ValueError(f"the manifests lack a value the check needs: {exc!r}") from None
