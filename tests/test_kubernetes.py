"""deploy/kubernetes/, checked against the Kubernetes schemas, the CRDs' schemas and the code.

No cluster runs on these machines, so the manifests are proven by reading them: every overlay
is rendered by the real `kubectl kustomize`, every object is validated strictly (the built-in
kinds by kubernetes-validate's bundled schemas, KEDA's and the Prometheus Operator's by their
published CRDs, vendored in tests/schemas/), and names, ports, paths, queue keys and settings
are cross-checked with the code, as tests/test_compose.py does for compose. The timeout
budget's rules (`delineate proxy check`) run on the values the rendered objects carry.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from starlette.routing import Mount, Route

from service import keys
from service.api.app import routes
from service.proxy import budget, kubernetes, render
from service.proxy.profiles import KILL_MARGIN_S, ProfileError, load_profile, load_profiles
from service.settings import API_SHUTDOWN_GRACE_S, Settings, load_settings
from tests.support import ROOT, require_binary

KUBERNETES = ROOT / "deploy/kubernetes"
PROFILES = KUBERNETES / "profiles.toml"
OVERLAYS = ("ingress-nginx", "aws-alb")
# The shipped host profile (proxy/profiles.toml) whose numbers each overlay must keep.
SAME_BUDGET_AS = {"ingress-nginx": "nginx", "aws-alb": "alb"}
SCHEMAS = Path(__file__).parent / "schemas"
# The oldest Kubernetes the manifests claim (the preStop `sleep` action) and the newest bundled.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
SECRET = "delineate-secrets"
SECRET_SETTINGS = {"REDIS_URL", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY", "WEBHOOK_SECRET"}
# Measured (docs/benchmarks.md, /work/shared/notes/components.md): an idle worker's RSS and
# the memory one download in flight adds.
WORKER_IDLE_MIB = 36
DOWNLOAD_MIB = 0.1


# ---- rendering and reading ----------------------------------------------------------------


@functools.cache
def kustomize_output(overlay: str) -> str:
    """The overlay as `kubectl kustomize` renders it (once per test process)."""
    result = subprocess.run(
        [require_binary("kubectl"), "kustomize", str(KUBERNETES / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@functools.cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    return tuple(doc for doc in yaml.safe_load_all(kustomize_output(overlay)) if doc)


def objects(overlay: str) -> list[dict[str, Any]]:
    return copy.deepcopy(list(rendered(overlay)))


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def every(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod_spec(deployment)["containers"]
    return only


def config_map(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """A generated ConfigMap by its name before kustomize's hash suffix."""
    found = [
        d
        for d in every(docs, "ConfigMap")
        if re.fullmatch(rf"{name}(-[a-z0-9]{{10}})?", d["metadata"]["name"])
    ]
    assert len(found) == 1, name
    return found[0]


def container_env(docs: list[dict[str, Any]], deployment: dict[str, Any]) -> dict[str, str | None]:
    """Every variable the container gets: its ConfigMaps, then `env` (which wins); a Secret's
    value is None (the test cannot know it)."""
    box = container(deployment)
    env: dict[str, str | None] = {}
    for source in box.get("envFrom", []):
        name = source["configMapRef"]["name"]
        env.update(one(docs, "ConfigMap", name)["data"])
    for item in box.get("env", []):
        env[item["name"]] = item.get("value")
    return env


def secret_refs(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        item["name"]: item["valueFrom"]["secretKeyRef"]
        for item in container(deployment).get("env", [])
        if "secretKeyRef" in item.get("valueFrom", {})
    }


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"]["labels"]


def api_of(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "Deployment", kubernetes.API)


def worker_of(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "Deployment", kubernetes.WORKER)


# ---- rendered from the profiles and observability/ -----------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_checked_in_files_are_the_current_render_of_the_profile(overlay):
    for relative, text in render.render(load_profile(overlay, PROFILES)).items():
        path = KUBERNETES / relative
        assert path.exists() and path.read_text() == text, (
            f"deploy/kubernetes/{relative} drifted: run `delineate proxy render {overlay} "
            "--profiles deploy/kubernetes/profiles.toml --out deploy/kubernetes`"
        )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_budget_is_the_shipped_profile_s(overlay):
    """The Kubernetes numbers cannot drift from the nginx/ALB ones: same proxy and app budget,
    only the cluster's addresses differ."""
    ours, shipped = load_profile(overlay, PROFILES), load_profile(SAME_BUDGET_AS[overlay])
    addresses = {"listen", "upstreams"}
    assert ours.proxy.model_dump(exclude=addresses) == shipped.proxy.model_dump(exclude=addresses)
    assert ours.app.model_dump(exclude={"trusted_proxies"}) == shipped.app.model_dump(
        exclude={"trusted_proxies"}
    )
    assert ours.scenario == shipped.scenario


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheus_rules_are_the_shipped_rule_files(overlay):
    """One source: each PrometheusRule's spec is a rules file of observability/, as loaded."""
    docs = objects(overlay)
    rules = ROOT / "observability/prometheus/rules"
    shipped = yaml.safe_load((ROOT / "observability/prometheus/prometheus.yml").read_text())["rule_files"]
    assert [Path(name).name for name in shipped] == list(kubernetes.RULE_FILES)
    assert {path.name for path in rules.glob("*.yml")} == set(kubernetes.RULE_FILES)
    for name in kubernetes.RULE_FILES:
        rule = one(docs, "PrometheusRule", "delineate-" + Path(name).stem)
        assert rule["spec"] == yaml.safe_load((rules / name).read_text()), f"{name} drifted"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_dashboards_are_the_shipped_ones_for_the_grafana_sidecar(overlay):
    dashboards = one(objects(overlay), "ConfigMap", "delineate-dashboards")
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = {
        path.name: path.read_text() for path in (ROOT / "observability/grafana/dashboards").glob("*.json")
    }
    assert sorted(dashboards["data"]) == sorted(shipped), (
        "list every dashboard of observability/grafana/dashboards in base/kustomization.yaml"
    )
    assert dashboards["data"] == shipped, "re-render: `delineate proxy render ingress-nginx ...`"


# ---- strict validation ---------------------------------------------------------------------


def strict(schema: Any) -> Any:
    """A CRD's structural schema as the API server applies it: unknown fields are rejected
    (it prunes them; we fail), except where the CRD preserves them."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if "properties" in schema:
        out["properties"] = {name: strict(value) for name, value in schema["properties"].items()}
    return out


@functools.cache
def crd_validators() -> dict[tuple[str, str], jsonschema.Validator]:
    """(apiVersion, kind) -> a validator from the vendored CRD (tests/schemas/README.md)."""
    validators = {}
    for path in SCHEMAS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            schema = strict(version["schema"]["openAPIV3Schema"])
            key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
            validators[key] = jsonschema.Draft7Validator(schema)
    return validators


def crd_errors(doc: dict[str, Any]) -> list[str]:
    validator = crd_validators()[(doc["apiVersion"], doc["kind"])]
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_is_valid_strictly(overlay, version):
    """Built-in kinds against Kubernetes' own schemas, CRD kinds against their CRDs: none skipped."""
    docs = objects(overlay)
    custom = 0
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if (doc["apiVersion"], doc["kind"]) in crd_validators():
            assert not crd_errors(doc), f"{where}: {crd_errors(doc)}"
            custom += 1
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where} is invalid for Kubernetes {version}: {exc.message} at {list(exc.path)}")
        except kubernetes_validate.SchemaNotFoundError:
            pytest.fail(f"{where}: no schema (a CRD kind not vendored in tests/schemas/?)")
    kinds = {doc["kind"] for doc in docs}
    assert {"ScaledObject", "TriggerAuthentication", "PodMonitor", "PrometheusRule"} <= kinds
    assert custom >= 6


def test_the_crd_validation_rejects_unknown_and_mistyped_fields():
    """The schema check can fail: a typo'd field, a wrong type, a missing trigger type."""
    scaled = one(objects("ingress-nginx"), "ScaledObject")
    typo = copy.deepcopy(scaled)
    typo["spec"]["cooldownPeriods"] = 300
    assert any("cooldownPeriods" in error for error in crd_errors(typo))
    wrong = copy.deepcopy(scaled)
    wrong["spec"]["minReplicaCount"] = "one"
    assert crd_errors(wrong)
    untyped = copy.deepcopy(scaled)
    del untyped["spec"]["triggers"][0]["type"]
    assert crd_errors(untyped)
    monitor = copy.deepcopy(one(objects("ingress-nginx"), "PodMonitor", kubernetes.API))
    monitor["spec"]["podMetricsEndpoints"][0]["targetPort"] = {"nested": True}
    assert crd_errors(monitor)


# ---- the budget, judged on the rendered values ---------------------------------------------


CHECK = (sys.executable, "-m", "service", "proxy", "check")


def proxy_check(overlay: str, manifests: str) -> subprocess.CompletedProcess[str]:
    """`kubectl kustomize OVERLAY | delineate proxy check OVERLAY --profiles ... --manifests -`"""
    return subprocess.run(
        [*CHECK, overlay, "--profiles", str(PROFILES), "--manifests", "-"],
        input=manifests,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_proxy_check_passes_on_the_rendered_values(overlay):
    docs = objects(overlay)
    profile = kubernetes.profile_from_manifests(load_profile(overlay, PROFILES), docs)
    pods = kubernetes.pods_from_manifests(docs)
    assert pods == load_profile(overlay, PROFILES).kubernetes.pods(), "the overlay's patches did not apply"
    assert not [f.sentence for f in budget.check(profile, pods) if f.severity == "violation"]
    cli = proxy_check(overlay, kustomize_output(overlay))
    assert cli.returncode == 0 and "budget ok" in cli.stdout, cli.stdout + cli.stderr


def test_proxy_check_cli_fails_on_manifests_that_break_the_budget():
    docs = objects("aws-alb")
    pod = one(docs, "Deployment", kubernetes.WORKER)["spec"]["template"]["spec"]
    pod["terminationGracePeriodSeconds"] = 60
    cli = proxy_check("aws-alb", yaml.safe_dump_all(docs))
    assert cli.returncode == 1, cli.stdout + cli.stderr
    assert "terminationGracePeriodSeconds (60 s) does not outlast WORKER_DRAIN_S (180 s)" in cli.stdout
    unreadable = proxy_check("aws-alb", "kind: Something\n")
    assert unreadable.returncode == 2 and "Ingress delineate-api" in unreadable.stderr


ANNOTATIONS = "metadata.annotations."
NGINX_READ = "nginx.ingress.kubernetes.io/proxy-read-timeout"
ALB_ATTRIBUTES = "alb.ingress.kubernetes.io/load-balancer-attributes"


def with_value(
    docs: list[dict[str, Any]], kind: str, name: str, path: str, value: object
) -> list[dict[str, Any]]:
    """A copy of the rendered objects with one field changed (a hand edit). `path` is dotted;
    an annotation's key (which has dots of its own) is everything after `metadata.annotations.`."""
    docs = copy.deepcopy(docs)
    node = one(docs, kind, name)
    if path.startswith(ANNOTATIONS):
        node["metadata"]["annotations"][path.removeprefix(ANNOTATIONS)] = value
        return docs
    *parents, last = path.split(".")
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[int(last) if last.isdigit() else last] = value
    return docs


@pytest.mark.parametrize(
    ("overlay", "kind", "name", "path", "value", "rule"),
    [
        (
            "ingress-nginx",
            "Deployment",
            kubernetes.WORKER,
            "spec.template.spec.terminationGracePeriodSeconds",
            180,
            "worker-grace",
        ),
        (
            "aws-alb",
            "Deployment",
            kubernetes.API,
            "spec.template.spec.terminationGracePeriodSeconds",
            30,
            "api-grace",
        ),
        (
            "aws-alb",
            "Deployment",
            kubernetes.API,
            "spec.template.spec.containers.0.lifecycle.preStop.sleep.seconds",
            400,
            "pre-stop",
        ),
        ("ingress-nginx", "ScaledObject", kubernetes.WORKER, "spec.cooldownPeriod", 60, "cooldown"),
        ("ingress-nginx", "Ingress", kubernetes.API + "-stream", ANNOTATIONS + NGINX_READ, "10", "heartbeat"),
        (
            "aws-alb",
            "Ingress",
            kubernetes.API,
            ANNOTATIONS + ALB_ATTRIBUTES,
            "idle_timeout.timeout_seconds=10",
            "heartbeat",
        ),
    ],
)
def test_proxy_check_fails_on_a_hand_edited_manifest(overlay, kind, name, path, value, rule):
    docs = with_value(objects(overlay), kind, name, path, value)
    profile = kubernetes.profile_from_manifests(load_profile(overlay, PROFILES), docs)
    found = budget.check(profile, kubernetes.pods_from_manifests(docs))
    assert rule in {f.rule for f in found if f.severity == "violation"}, [f.sentence for f in found]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_grace_period_is_derived_from_its_drain(overlay):
    docs = objects(overlay)
    worker = worker_of(docs)
    drain = int(container_env(docs, worker)["WORKER_DRAIN_S"])
    assert drain == Settings.model_fields["worker_drain_s"].default, "drains as the default does"
    assert pod_spec(worker)["terminationGracePeriodSeconds"] == drain + KILL_MARGIN_S
    api = api_of(docs)
    pause = container(api)["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod_spec(api)["terminationGracePeriodSeconds"] == pause + API_SHUTDOWN_GRACE_S + KILL_MARGIN_S


def test_a_kubernetes_profile_needs_its_pods_section(tmp_path):
    text = PROFILES.read_text()
    broken = tmp_path / "profiles.toml"
    broken.write_text(re.sub(r"\[aws-alb\.kubernetes\][^\[]*", "", text))
    result = subprocess.run(
        [sys.executable, "-m", "service", "proxy", "check", "aws-alb", "--profiles", str(broken)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 2 and "kubernetes" in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        ('targets = ["aws-alb"]', 'targets = ["alb"]', "needs an ingress-nginx or aws-alb target"),
        (
            'targets = ["aws-alb"]',
            'targets = ["aws-alb", "nginx"]',
            "mix Kubernetes Ingresses with host proxies",
        ),
        ("min_workers = 1\nmax_workers = 20\n", "min_workers = 5\nmax_workers = 2\n", "min_workers"),
        ("worker_drain_s = 180", "worker_drain_s = -1", "worker_drain_s"),
    ],
)
def test_a_kubernetes_section_is_validated(tmp_path, old, new, error):
    text = PROFILES.read_text()
    assert old in text
    broken = tmp_path / "profiles.toml"
    broken.write_text(text.replace(old, new))
    with pytest.raises(ProfileError, match=error):
        load_profiles(broken)


# ---- KEDA ----------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_scales_the_workers_on_the_code_s_queue_lists(overlay):
    docs = objects(overlay)
    scaled = one(docs, "ScaledObject", kubernetes.WORKER)
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker_of(docs)["metadata"]["name"]
    triggers = scaled["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"redis"}
    assert sorted(t["metadata"]["listName"] for t in triggers) == sorted(
        keys.rq_queue(q) for q in keys.QUEUES
    )
    concurrency = container_env(docs, worker_of(docs))["WORKER_CONCURRENCY"]
    assert {t["metadata"]["listLength"] for t in triggers} == {concurrency}, (
        "a pod per WORKER_CONCURRENCY waiting"
    )
    for trigger in triggers:
        auth = one(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        params = {ref["parameter"]: ref for ref in auth["spec"]["secretTargetRef"]}
        assert set(params) == {"address", "password"} and {ref["name"] for ref in params.values()} == {SECRET}
    budget_ = load_profile(overlay, PROFILES)
    assert scaled["spec"]["minReplicaCount"] == budget_.kubernetes.min_workers >= 1, "one worker stays"
    assert scaled["spec"]["maxReplicaCount"] == budget_.kubernetes.max_workers
    longest_s = budget_.scenario.download_delay_max_ms / 1000
    assert scaled["spec"]["cooldownPeriod"] > longest_s


def test_the_worker_serves_every_queue_keda_watches():
    """The worker pods run `delineate worker` with no --queues: all of keys.QUEUES."""
    worker = worker_of(objects("ingress-nginx"))
    assert container(worker)["args"] == ["worker"]


# ---- names, ports, paths and settings against the code -------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_container_env_are_settings_that_validate(overlay, monkeypatch):
    docs = objects(overlay)
    fields = {name.upper() for name in Settings.model_fields}
    for deployment in (api_of(docs), worker_of(docs)):
        env = container_env(docs, deployment)
        assert set(env) <= fields, f"unknown variables: {sorted(set(env) - fields)}"
        assert set(secret_refs(deployment)) == SECRET_SETTINGS
        for name, ref in secret_refs(deployment).items():
            assert ref["name"] == SECRET and ref["key"] == name
            assert ref.get("optional", False) == (name != "REDIS_URL"), f"{name}: only REDIS_URL is required"
        for name in Settings.model_fields:
            monkeypatch.delenv(name.upper(), raising=False)
        values = {k.lower(): v for k, v in env.items() if v is not None}
        settings = load_settings(redis_url="redis://redis:6379/0", **values)
        assert settings.log_format == "json"
    assert not every(docs, "Secret"), "secrets are referenced, never shipped"
    config = config_map(docs, "delineate-config")["data"]
    assert not set(config) & (SECRET_SETTINGS | {"REDIS_PASSWORD", "REDIS_ADDRESS"})


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_budget_env_comes_from_the_profile(overlay):
    profile = load_profile(overlay, PROFILES)
    docs = objects(overlay)
    for deployment in (api_of(docs), worker_of(docs)):
        env = container_env(docs, deployment)
        for name, value in profile.app_env().items():
            assert env[name] == value, f"{name}: {env[name]} but the profile says {value}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_probes_and_ports_match_the_code(overlay):
    docs = objects(overlay)
    api, worker = api_of(docs), worker_of(docs)
    env = container_env(docs, api)
    ports = {p["name"]: p["containerPort"] for p in container(api)["ports"]}
    assert ports == {"http": int(env["PORT"])}
    paths = {route.path for route in routes() if isinstance(route, Route)}
    for probe in ("readinessProbe", "livenessProbe"):
        check = container(api)[probe]["httpGet"]
        assert check["path"] in paths and check["port"] in ports
    assert container(api)["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container(api)["livenessProbe"]["httpGet"]["path"] == "/health/live"
    service = one(docs, "Service", kubernetes.API)
    assert selects(service["spec"]["selector"], pod_labels(api))
    assert not selects(service["spec"]["selector"], pod_labels(worker))
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in ports
    worker_ports = {p["name"]: p["containerPort"] for p in container(worker)["ports"]}
    assert worker_ports == {"metrics": int(container_env(docs, worker)["WORKER_METRICS_PORT"])}
    assert container(worker)["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    for ingress in every(docs, "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend["name"] == service["metadata"]["name"]
                assert backend["port"]["number"] == port["port"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_ingress_routes_every_public_path_and_not_metrics(overlay):
    docs = objects(overlay)
    routed = [
        (path["path"], path["pathType"])
        for ingress in every(docs, "Ingress")
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    ]

    def reached(url: str) -> bool:
        return any(
            url == prefix
            if kind == "Exact"
            else url == prefix.rstrip("/") or url.startswith(prefix.rstrip("/") + "/")
            for prefix, kind in routed
        )

    for route in routes():
        url = re.sub(r"\{\w+\}", "x", route.path) + ("/app.js" if isinstance(route, Mount) else "")
        assert reached(url) == (route.path != "/metrics"), url


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_reach_the_pods_they_mean(overlay):
    docs = objects(overlay)
    api, worker = api_of(docs), worker_of(docs)
    for deployment in (api, worker):
        assert selects(deployment["spec"]["selector"]["matchLabels"], pod_labels(deployment))
        assert "replicas" not in deployment["spec"], "an autoscaler owns the count: apply must not reset it"
    pdbs = {
        p["metadata"]["name"]: p["spec"]["selector"]["matchLabels"]
        for p in every(docs, "PodDisruptionBudget")
    }
    assert selects(pdbs[kubernetes.API], pod_labels(api)) and not selects(
        pdbs[kubernetes.API], pod_labels(worker)
    )
    assert selects(pdbs[kubernetes.WORKER], pod_labels(worker))
    hpa = one(docs, "HorizontalPodAutoscaler", kubernetes.API)
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": kubernetes.API,
    }
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    shipped = yaml.safe_load((ROOT / "observability/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"] for job in shipped["scrape_configs"]}
    for deployment, job in ((api, "delineate-api"), (worker, "delineate-worker")):
        monitor = one(docs, "PodMonitor", deployment["metadata"]["name"])
        assert job in jobs
        assert selects(monitor["spec"]["selector"]["matchLabels"], pod_labels(deployment))
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        assert endpoint["port"] in {p["name"] for p in container(deployment)["ports"]}
        assert endpoint["path"] == "/metrics"
        assert {"action": "replace", "targetLabel": "job", "replacement": job} in endpoint["relabelings"]
    assert one(docs, "Namespace")["metadata"]["name"] == "delineate"
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"delineate"}


def policy_ports(policy: dict[str, Any]) -> set[int]:
    return {port["port"] for rule in policy["spec"].get("ingress", []) for port in rule.get("ports", [])}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_let_only_the_edge_reach_the_api_and_nothing_the_workers(overlay):
    docs = objects(overlay)
    api, worker = api_of(docs), worker_of(docs)
    policies = every(docs, "NetworkPolicy")
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")]
    assert deny and deny[0]["spec"]["policyTypes"] == ["Ingress"], "no default deny"
    metrics_port = int(container_env(docs, worker)["WORKER_METRICS_PORT"])
    api_port = int(container_env(docs, api)["PORT"])
    for policy in policies:
        selector = policy["spec"]["podSelector"].get("matchLabels", {})
        if selects(selector, pod_labels(worker)) and policy.get("spec", {}).get("ingress"):
            assert policy_ports(policy) <= {metrics_port, api_port}
            for rule in policy["spec"]["ingress"]:
                (peer,) = rule["from"]
                assert peer["namespaceSelector"]["matchLabels"] == {
                    "kubernetes.io/metadata.name": "monitoring"
                }
    edge = one(docs, "NetworkPolicy", "delineate-api-from-edge")
    assert selects(edge["spec"]["podSelector"]["matchLabels"], pod_labels(api))
    assert not selects(edge["spec"]["podSelector"]["matchLabels"], pod_labels(worker))
    assert policy_ports(edge) == {api_port}
    (rule,) = edge["spec"]["ingress"]
    profile = load_profile(overlay, PROFILES)
    if overlay == "aws-alb":  # target type ip: the ALB's VPC addresses, which the API trusts
        assert [peer["ipBlock"]["cidr"] for peer in rule["from"]] == profile.app.trusted_proxies.split(",")
    else:
        (peer,) = rule["from"]
        assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "ingress-nginx"}


# ---- pods: security and size ---------------------------------------------------------------


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    number, unit = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", quantity).groups()
    return int(number) * units[unit]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_non_root_read_only_without_capabilities(overlay):
    docs = objects(overlay)
    version = (ROOT / "pyproject.toml").read_text().split('version = "', 1)[1].split('"', 1)[0]
    dockerfile_uid = re.search(r"--uid (\d+)", (ROOT / "Dockerfile").read_text()).group(1)
    for deployment in (api_of(docs), worker_of(docs)):
        spec, box = pod_spec(deployment), container(deployment)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert str(spec["securityContext"]["runAsUser"]) == dockerfile_uid
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False
        context = box["securityContext"]
        assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        mounts = {m["mountPath"]: m["name"] for m in box["volumeMounts"]}
        assert "emptyDir" in next(v for v in spec["volumes"] if v["name"] == mounts["/tmp"]), (
            "a writable /tmp"
        )
        assert box["image"] == f"delineate:{version}"
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(box["resources"][kind]), f"{kind} missing"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_memory_is_sized_for_its_concurrency(overlay):
    docs = objects(overlay)
    worker = worker_of(docs)
    concurrency = int(container_env(docs, worker)["WORKER_CONCURRENCY"])
    needed = WORKER_IDLE_MIB + DOWNLOAD_MIB * concurrency
    resources = container(worker)["resources"]
    assert mebibytes(resources["requests"]["memory"]) >= 2 * needed
    assert mebibytes(resources["limits"]["memory"]) >= mebibytes(resources["requests"]["memory"])


def millicores(quantity: str) -> float:
    return float(quantity[:-1]) if quantity.endswith("m") else float(quantity) * 1000


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_api_outweighs_a_worker_for_cpu_as_in_compose(overlay):
    """Cgroup CPU weights follow requests: the API's must be to a worker's as compose's
    cpu_shares are (1024 by default against the worker's), so that a burst of downloads starting
    or ending yields the CPU to the API in both deployments (WORKER_NICE works within a pod
    only)."""
    docs = objects(overlay)
    api, worker = (container(d)["resources"]["requests"]["cpu"] for d in (api_of(docs), worker_of(docs)))
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    shares = {name: compose[name].get("cpu_shares", 1024) for name in ("api", "worker")}
    assert shares["api"] > shares["worker"], "compose: the API outweighs a worker"
    assert millicores(api) / millicores(worker) == shares["api"] / shares["worker"]


def test_docs_say_the_manifests_are_validated_not_run_on_a_cluster():
    text = (ROOT / "docs/kubernetes.md").read_text()
    assert "not yet been exercised on a live cluster" in text
    for step in ("KEDA", "Prometheus Operator", "ingress-nginx", "AWS Load Balancer Controller"):
        assert step in text


# ---- the redis-sentinel component ----------------------------------------------------------


SENTINEL_COMPONENT = KUBERNETES / "components/redis-sentinel"
SENTINEL_SECRETS = {"REDIS_PASSWORD", "REDIS_SENTINEL_PASSWORD"}


@pytest.fixture(scope="module", params=OVERLAYS)
def sentinel_overlay(request, tmp_path_factory) -> tuple[str, list[dict[str, Any]]]:
    """Each overlay with the component opted in (a kustomization of one's own on top of it, as
    docs/kubernetes.md tells), rendered by the real `kubectl kustomize`."""
    overlay = request.param
    root = tmp_path_factory.mktemp("sentinel-overlay")
    relative = Path(os.path.relpath(KUBERNETES, root))
    (root / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [str(relative / "overlays" / overlay)],
                "components": [str(relative / "components/redis-sentinel")],
            }
        )
    )
    result = subprocess.run(
        [require_binary("kubectl"), "kustomize", str(root)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return overlay, [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_the_sentinel_component_is_a_kustomize_component():
    component = yaml.safe_load((SENTINEL_COMPONENT / "kustomization.yaml").read_text())
    assert component["kind"] == "Component"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_sentinel_overlay_is_valid_strictly(sentinel_overlay, version):
    _, docs = sentinel_overlay
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if (doc["apiVersion"], doc["kind"]) in crd_validators():
            assert not crd_errors(doc), f"{where}: {crd_errors(doc)}"
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where} is invalid for Kubernetes {version}: {exc.message} at {list(exc.path)}")


def test_the_sentinel_pods_get_settings_that_follow_sentinel(sentinel_overlay, monkeypatch):
    """No REDIS_URL; the sentinels from config, the passwords from the Secret only; the env
    validates and configures Sentinel with one replica acknowledging each new job."""
    _, docs = sentinel_overlay
    fields = {name.upper() for name in Settings.model_fields}
    config = config_map(docs, "delineate-config")["data"]
    assert not set(config) & (SECRET_SETTINGS | SENTINEL_SECRETS | {"REDIS_ADDRESS"})
    assert not every(docs, "Secret")
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    for deployment in (api_of(docs), worker_of(docs)):
        env = container_env(docs, deployment)
        assert set(env) <= fields, f"unknown variables: {sorted(set(env) - fields)}"
        assert "REDIS_URL" not in env
        refs = secret_refs(deployment)
        assert set(refs) == (SECRET_SETTINGS - {"REDIS_URL"}) | SENTINEL_SECRETS
        for name, ref in refs.items():
            assert ref["name"] == SECRET and ref["key"] == name and ref.get("optional") is True
        values = {k.lower(): v for k, v in env.items() if v is not None}
        settings = load_settings(**values)
        assert settings.redis_url is None and len(settings.sentinel_addresses) == 3
        assert settings.redis_sentinel_master == config["REDIS_SENTINEL_MASTER"]
        assert settings.replicas_ack == 1


def test_keda_follows_sentinel_on_the_same_queue_lists(sentinel_overlay):
    overlay, docs = sentinel_overlay
    worker = worker_of(docs)
    env = container_env(docs, worker)
    scaled = one(docs, "ScaledObject", kubernetes.WORKER)
    triggers = scaled["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"redis-sentinel"}
    assert sorted(t["metadata"]["listName"] for t in triggers) == sorted(
        keys.rq_queue(q) for q in keys.QUEUES
    )
    for trigger in triggers:
        metadata = trigger["metadata"]
        assert metadata["listLength"] == env["WORKER_CONCURRENCY"]
        # KEDA resolves *FromEnv in the scale target's containers: the app's own values.
        assert env[metadata["sentinelMasterFromEnv"]] == env["REDIS_SENTINEL_MASTER"]
        assert env[metadata["addressesFromEnv"]] == env["REDIS_SENTINELS"]
        auth = one(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        params = {ref["parameter"]: (ref["name"], ref["key"]) for ref in auth["spec"]["secretTargetRef"]}
        assert params == {
            "password": (SECRET, "REDIS_PASSWORD"),
            "sentinelPassword": (SECRET, "REDIS_SENTINEL_PASSWORD"),
        }
    plain = one(objects(overlay), "ScaledObject", kubernetes.WORKER)["spec"]
    assert {**scaled["spec"], "triggers": None} == {**plain, "triggers": None}, "only the triggers change"
    assert kubernetes.pods_from_manifests(docs) == load_profile(overlay, PROFILES).kubernetes.pods()


def test_docs_tell_how_to_run_with_sentinel():
    text = (ROOT / "docs/kubernetes.md").read_text()
    assert "## Redis with Sentinel" in text and "components/redis-sentinel" in text
    assert "kubernetes.md" in (ROOT / "docs/runbooks/redis-failover.md").read_text()
