"""The rendered configs: checked-in files equal the render, and the real tools accept them
(`nginx -t`, `haproxy -c`, `cfn-lint`), with the profile's numbers where they belong."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import hcl2
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


def test_alb_template_redirects_logs_alarms_and_hands_out_the_target_group():
    """What an SRE adopting the ALB needs besides the budget: HTTP->HTTPS with a certificate,
    access logs to S3, alarms on the ALB's own 5XX/504 and the response time, and the security
    group the targets run with."""
    profile = load_profile("alb")
    template = cfn_yaml.loads((PROXY_DIR / "alb/alb.yaml").read_text())
    resources = template["Resources"]

    (action,) = resources["HttpListener"]["Properties"]["DefaultActions"]
    condition, with_certificate, without = action["Fn::If"]
    assert template["Conditions"][condition] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "CertificateArn"}, ""]}]}
    assert with_certificate["Type"] == "redirect"
    assert with_certificate["RedirectConfig"] == {
        "Protocol": "HTTPS",
        "Port": "443",
        "Host": "#{host}",
        "Path": "/#{path}",
        "Query": "#{query}",
        "StatusCode": "HTTP_301",
    }
    assert without == {"Type": "forward", "TargetGroupArn": {"Ref": "TargetGroup"}}
    assert resources["HttpsListener"]["Condition"] == condition

    lb = {a["Key"]: a["Value"] for a in resources["LoadBalancer"]["Properties"]["LoadBalancerAttributes"]}
    assert lb["access_logs.s3.enabled"] == {"Fn::If": ["HasAccessLogBucket", "true", "false"]}
    assert lb["access_logs.s3.bucket"]["Fn::If"][1] == {"Ref": "AccessLogBucket"}

    alarms = {
        r["Properties"]["MetricName"]: r["Properties"]
        for r in resources.values()
        if r["Type"] == "AWS::CloudWatch::Alarm"
    }
    assert set(alarms) == {"HTTPCode_ELB_5XX_Count", "HTTPCode_ELB_504_Count", "TargetResponseTime"}
    for alarm in alarms.values():
        assert alarm["Namespace"] == "AWS/ApplicationELB"
        assert alarm["Dimensions"] == [
            {"Name": "LoadBalancer", "Value": {"Fn::GetAtt": ["LoadBalancer", "LoadBalancerFullName"]}}
        ]
        assert alarm["AlarmActions"]["Fn::If"][0] == "HasAlarmTopic"
    assert alarms["HTTPCode_ELB_504_Count"]["Threshold"] == 1, "any 504 from the ALB breaks the budget"
    assert alarms["TargetResponseTime"]["ExtendedStatistic"] == "p99"
    assert alarms["TargetResponseTime"]["Threshold"] == profile.app.request_timeout_ms / 1000

    targets = resources["TargetSecurityGroup"]["Properties"]
    (ingress,) = targets["SecurityGroupIngress"]
    assert (
        ingress["SourceSecurityGroupId"] == {"Ref": "LoadBalancerSecurityGroup"} and "CidrIp" not in ingress
    )
    assert ingress["FromPort"] == ingress["ToPort"] == {"Ref": "TargetPort"}
    assert template["Outputs"]["TargetSecurityGroupId"]["Value"] == {"Ref": "TargetSecurityGroup"}


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


def terraform_resources(document: dict) -> dict[tuple[str, str], dict]:
    """(type, name) -> body of every resource in a python-hcl2 document (labels unquoted)."""
    return {
        (kind.strip('"'), name.strip('"')): body
        for item in document["resource"]
        for kind, named in item.items()
        for name, body in named.items()
    }


def nested_blocks(body: dict, where: str = "") -> list[str]:
    """Paths of blocks nested in a resource body: v5 takes attributes (`x = {...}`) instead."""
    found = []
    for key, value in body.items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                if item.get("__is_block__"):
                    found.append(f"{where}{key}")
                found += nested_blocks(item, f"{where}{key}.")
    return found


def test_cloudflare_terraform_is_provider_v5_with_the_profile_s_timeout():
    """Parsed HCL (terraform validate cannot download the provider here): v5's resources and
    attribute syntax, and the numbers and paths of the `cloudflare` profile."""
    profile = load_profile("cloudflare")
    text = (PROXY_DIR / "cloudflare/main.tf").read_text()
    document = hcl2.loads(text, serialization_options=hcl2.SerializationOptions(strip_string_quotes=True))
    provider = document["terraform"][0]["required_providers"][0]["cloudflare"]
    assert provider["source"] == "cloudflare/cloudflare"
    assert re.fullmatch(r"~> 5\.\d+", provider["version"]), provider["version"]
    resources = terraform_resources(document)
    assert {kind for kind, _ in resources} == {"cloudflare_zone_setting", "cloudflare_ruleset"}, (
        "v5 removed cloudflare_zone_settings_override: one cloudflare_zone_setting per setting"
    )
    for (kind, name), body in resources.items():
        assert not nested_blocks(body), (
            f"{kind}.{name}: v5 takes attributes, not blocks {nested_blocks(body)}"
        )

    variables = {name.strip('"'): body for item in document["variable"] for name, body in item.items()}
    assert variables["proxy_read_timeout_s"]["default"] == profile.proxy.read_timeout_s
    settings = {
        body["setting_id"]: body for (kind, _), body in resources.items() if kind == "cloudflare_zone_setting"
    }
    assert settings["proxy_read_timeout"]["value"] == "${var.proxy_read_timeout_s}"
    assert settings["response_buffering"]["value"] == "off"
    assert all(body["count"] == "${var.enterprise_plan ? 1 : 0}" for body in settings.values()), (
        "Enterprise only"
    )

    rulesets = {body["phase"]: body for (kind, _), body in resources.items() if kind == "cloudflare_ruleset"}
    assert set(rulesets) == {"http_request_cache_settings", "http_response_compression"}
    for body in rulesets.values():
        assert body["kind"] == "zone" and body["zone_id"] == "${var.zone_id}"
        assert len(body["rules"]) == 1 and body["rules"][0]["enabled"] is True
    (cache,) = rulesets["http_request_cache_settings"]["rules"]
    assert cache["action"] == "set_cache_settings" and cache["action_parameters"] == {"cache": False}
    assert '"/v1/"' in cache["expression"] and '"/health"' in cache["expression"]
    (compression,) = rulesets["http_response_compression"]["rules"]
    assert compression["action"] == "compress_response"
    assert compression["action_parameters"] == {"algorithms": [{"name": "none"}]}
    assert '"/v1/download/stream/"' in compression["expression"]


def test_docs_table_is_the_profiles_budget():
    table = budget.budget_table(list(load_profiles().values()))
    assert table in (ROOT / "docs/proxies.md").read_text(), "regenerate the table in docs/proxies.md"
