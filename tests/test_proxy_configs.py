"""The rendered configs: checked-in files equal the render, and the real tools accept them
(`nginx -t`, `haproxy -c`, `cfn-lint`), with the profile's numbers where they belong."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cfnlint.decode import cfn_yaml

from service.proxy import budget, render
from service.proxy.profiles import PROXY_DIR, load_profile, load_profiles
from tests.proxies import nginx_files, nginx_test
from tests.support import ROOT, require_binary

SHIPPED = ["nginx", "cloudflare", "alb"]


@pytest.mark.parametrize("name", SHIPPED)
def test_checked_in_files_are_exactly_the_render_output(name):
    rendered = render.render(load_profile(name))
    assert rendered, f"profile {name} renders nothing"
    for relative, text in rendered.items():
        path = PROXY_DIR / relative
        assert path.exists(), f"{path} is missing: run `delineate proxy render {name}`"
        assert path.read_text() == text, (
            f"{path} drifted from its profile: run `delineate proxy render {name}`"
        )


def test_render_cli_writes_every_target_of_a_profile(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "service", "proxy", "render", "test", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    written = {str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*") if path.is_file()}
    expected = render.render(load_profile("test"))
    assert written == set(expected)
    assert {"nginx/nginx.conf", "cloudflare/emulation/nginx.conf", "alb/emulation/haproxy.cfg"} <= written
    assert (tmp_path / "nginx/nginx.conf").read_text() == expected["nginx/nginx.conf"]


@pytest.mark.parametrize("name", [name for name, p in sorted(load_profiles().items()) if nginx_files(p)])
def test_nginx_accepts_every_rendered_nginx_config(name, tmp_path):
    files = nginx_files(load_profile(name))
    for relative, text in files.items():
        conf = tmp_path / relative
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(text)
        result = nginx_test(conf, tmp_path / "prefix")
        assert result.returncode == 0, f"{relative}:\n{result.stderr}"
        assert "test is successful" in result.stderr


def test_nginx_t_rejects_a_broken_config(tmp_path):
    """The validation above can fail: a typo in a directive is caught with its line."""
    text = render.nginx_conf(load_profile("test")).replace("proxy_buffering off;", "proxy_bufering off;")
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    result = nginx_test(conf, tmp_path / "prefix")
    assert result.returncode != 0
    assert "proxy_bufering" in result.stderr


@pytest.mark.parametrize("name", ["alb", "test"])
def test_haproxy_accepts_the_alb_emulation(name, tmp_path):
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(render.alb_emulation_cfg(load_profile(name)))
    result = subprocess.run(
        [require_binary("haproxy"), "-c", "-f", str(cfg)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    idle = render.duration(load_profile(name).proxy.read_timeout_s)
    for timeout in ("client", "server", "tunnel"):
        assert f"timeout {timeout} {idle}\n" in cfg.read_text()


@pytest.mark.slow
def test_cloudformation_template_lints_and_carries_the_alb_budget():
    template = PROXY_DIR / "alb/alb.yaml"
    cfn_lint = Path(sys.executable).parent / "cfn-lint"
    result = subprocess.run([str(cfn_lint), str(template)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr

    profile = load_profile("alb")
    resources = cfn_yaml.loads(template.read_text())["Resources"]
    lb = {a["Key"]: a["Value"] for a in resources["LoadBalancer"]["Properties"]["LoadBalancerAttributes"]}
    assert int(lb["idle_timeout.timeout_seconds"]) == profile.proxy.read_timeout_s
    group = resources["TargetGroup"]["Properties"]
    assert group["HealthCheckPath"] == "/health/ready"
    attributes = {a["Key"]: a["Value"] for a in group["TargetGroupAttributes"]}
    longest_reconnect_s = profile.app.sse_max_stream_s + profile.app.sse_retry_ms / 1000
    assert int(attributes["deregistration_delay.timeout_seconds"]) > longest_reconnect_s
    assert {r["Type"] for r in resources.values()} >= {
        "AWS::ElasticLoadBalancingV2::Listener",
        "AWS::ElasticLoadBalancingV2::TargetGroup",
    }


def test_nginx_conf_carries_the_stream_and_upstream_settings():
    text = render.nginx_conf(load_profile("nginx"))
    stream = text.split("location /v1/download/stream/ {", 1)[1].split("}", 1)[0]
    for directive in ("proxy_buffering off;", "proxy_cache off;", "gzip off;"):
        assert directive in stream
    assert 'proxy_set_header Connection "";' in text and "proxy_http_version 1.1;" in text
    assert "keepalive_timeout 60s;" in text.split("upstream delineate_api", 1)[1]
    assert "proxy_read_timeout 60s;" in text and "client_max_body_size 128k;" in text
    assert "limit_req zone=delineate burst=40 nodelay;" in text
    for field in ('"request_id":"$delineate_request_id"', "$upstream_response_time", "$upstream_header_time"):
        assert field in text
    assert "limit_req" not in render.nginx_conf(load_profile("test")).split("server {", 1)[1]


def test_cloudflare_terraform_carries_the_read_timeout_and_bypasses():
    text = (PROXY_DIR / "cloudflare/main.tf").read_text()
    assert "default     = 100\n" in text
    assert 'phase       = "http_request_cache_settings"' in text and "cache = false" in text
    assert "/v1/download/stream/" in text and 'name = "none"' in text


def test_docs_table_is_the_profiles_budget():
    table = budget.budget_table(list(load_profiles().values()))
    assert table in (ROOT / "docs/proxies.md").read_text(), "regenerate the table in docs/proxies.md"
