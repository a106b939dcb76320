"""`delineate proxy check`: shipped profiles pass; each broken rule fails with its own sentence."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from service.proxy import budget
from service.proxy.profiles import PROFILES_FILE, ProfileError, load_profile, load_profiles
from tests.support import ROOT

BAD_PROFILE = """
[bad]
description = "every rule broken at least once"
targets = ["nginx", "alb"]

[bad.proxy]
read_timeout_s = 60
connect_timeout_s = 5
client_timeout_s = 60
client_keepalive_s = 65
upstream_keepalive_s = 60
client_max_body_kb = 16
rate_limit_rps = 0.01
deregistration_delay_s = 30

[bad.app]
request_timeout_ms = 90000
poll_interval_s = 45
uvicorn_keepalive_s = 30
sse_heartbeat_s = 75
sse_max_stream_s = 300
sse_retry_ms = 2000
max_body_bytes = 65536

[bad.scenario]
download_delay_min_ms = 10000
download_delay_max_ms = 120000
"""


def run_check(name: str, profiles: Path = PROFILES_FILE, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", "proxy", "check", name, "--profiles", str(profiles), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )


@pytest.mark.parametrize("name", sorted(load_profiles()))
def test_shipped_profiles_pass_the_check(name):
    result = run_check(name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "budget ok" in result.stdout and "violation:" not in result.stdout
    # Their delay ranges all outlast the proxy: the legacy path is flagged, not failed.
    assert "warning: Legacy POST /v1/download/start is unsafe" in result.stdout


def test_a_bad_profile_fails_with_one_sentence_per_violation(tmp_path):
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(BAD_PROFILE)
    result = run_check("bad", profiles)
    assert result.returncode == 1, result.stdout
    lines = [line for line in result.stdout.splitlines() if line.startswith("violation: ")]
    expected = [
        "SSE_HEARTBEAT_S (75 s) is not shorter than nginx proxy_read_timeout (60 s)",
        "SSE_HEARTBEAT_S (75 s) is not shorter than nginx send_timeout (60 s)",
        "SSE_HEARTBEAT_S (75 s) is not shorter than the ALB idle timeout (60 s)",
        "UVICORN_KEEPALIVE_S (30 s) does not outlast nginx's upstream keepalive_timeout (60 s)",
        "UVICORN_KEEPALIVE_S (30 s) does not outlast the ALB idle timeout (60 s)",
        "REQUEST_TIMEOUT_MS (90000 ms) is not shorter than the proxy's read timeout (60 s)",
        "POLL_INTERVAL_S (45 s) is longer than 30 s",
        "POLL_INTERVAL_S (45 s) is faster than nginx's limit_req rate (0.01 r/s)",
        "The proxy's body limit (16 KiB) is below MAX_BODY_BYTES (65536)",
        "The deregistration delay (30 s) is not longer than the longest SSE stream plus its reconnect",
    ]
    assert len(lines) == len(expected), "\n".join(lines)
    for fragment, line in zip(expected, lines, strict=True):
        assert fragment in line
        assert line.endswith(".")
    assert "10 violation(s)" in result.stdout


def test_check_json_says_what_the_text_says(tmp_path):
    """`--json` for scripts and CI: the same findings and exit code as the text output."""
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(BAD_PROFILE)
    for name, path, code in (("nginx", PROFILES_FILE, 0), ("bad", profiles, 1)):
        text = run_check(name, path)
        result = run_check(name, path, "--json")
        assert result.returncode == text.returncode == code, result.stdout + result.stderr
        report = json.loads(result.stdout)
        assert report["profile"] == name and report["ok"] is (code == 0)
        said = [f"{finding['severity']}: {finding['sentence']}" for finding in report["findings"]]
        assert said == [
            line for line in text.stdout.splitlines() if line.startswith(("violation", "warning"))
        ]
        assert report["violations"] == sum(1 for line in said if line.startswith("violation: "))
        assert report["values"]["proxy"]["read_timeout_s"] == 60


@pytest.mark.parametrize(
    ("app", "proxy", "rule"),
    [
        ({"sse_heartbeat_s": 2}, {}, "heartbeat"),
        ({"uvicorn_keepalive_s": 2}, {}, "keepalive"),
        ({"request_timeout_ms": 2000}, {}, "request-timeout"),
        ({"poll_interval_s": 31}, {}, "retry-after"),
        ({"poll_interval_s": 1, "rate_limit_max_requests": 60}, {}, "retry-after"),
        ({}, {"client_max_body_kb": 32}, "body-limit"),
        ({}, {"deregistration_delay_s": 8}, "deregistration"),
    ],
)
def test_each_rule_fires_on_its_own(app, proxy, rule):
    profile = load_profile("test").with_app(**app).with_proxy(**proxy)
    violations = [f.rule for f in budget.check(profile) if f.severity == "violation"]
    assert violations and set(violations) == {rule}


def test_legacy_start_is_not_flagged_when_every_delay_fits():
    profile = load_profile("test").model_copy(
        update={"scenario": load_profile("test").scenario.model_copy(update={"download_delay_max_ms": 1000})}
    )
    assert not [f for f in budget.check(profile) if f.rule == "legacy-start"]


def test_unknown_profile_and_invalid_settings_are_refused(tmp_path):
    result = run_check("no-such-profile")
    assert result.returncode == 2 and "no profile 'no-such-profile'" in result.stderr
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(BAD_PROFILE.replace("request_timeout_ms = 90000", "request_timeout_ms = 10"))
    with pytest.raises(ProfileError, match="request_timeout_ms"):
        load_profile("bad", profiles)
