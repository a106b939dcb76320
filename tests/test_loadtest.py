"""The load test itself: headless Locust against the real stack, thresholds that pass and fail.

Time-compressed: a proxy limit of 1-2 s and downloads of 0.1-2.5 s stand in for nginx's 60 s
and the 10-120 s downloads of production.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from loadtest import proxylimit, s3link
from service import harness
from service.settings import load_settings
from service.storage.s3 import make_client
from tests.hooks import WEBHOOKS
from tests.support import ROOT, TEST_BUCKET

LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
REPORT_FILES = ("locust_stats.csv", "locust_stats_history.csv", "locust.html", "report.md", "report.png")


def run_locust(url: str, out: Path, *args: str, timeout_s: float = 90) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--only-summary",
        "-H",
        url,
        "--csv",
        str(out / "locust"),
        "--csv-full-history",
        "--html",
        str(out / "locust.html"),
        "--report-dir",
        str(out),
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)


def threshold_rows(report: str) -> dict[str, tuple[str, str]]:
    """`| name | figure | bound | result |` rows of report.md -> {name: (figure, result)}."""
    rows = {}
    for line in report.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[3] in ("PASS", "FAIL"):
            rows[cells[0]] = (cells[1], cells[3])
    return rows


@pytest.mark.slow
def test_smoke_run_against_the_real_stack_passes_and_writes_every_report(make_stack, tmp_path):
    stack = make_stack(POLL_INTERVAL_S="1", SSE_HEARTBEAT_S="0.5", WORKER_CONCURRENCY="64", **WEBHOOKS)
    result = run_locust(
        stack.url,
        tmp_path,
        "-u", "12", "-r", "12", "-t", "20s", "--stop-timeout", "15",
        "--proxy-timeout-s", "2",
        "--weights", "fast=3,poll=2,sse=2,webhook=2",
        "--slow-files", "3",
        "--delay-profile", "short",
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    for name in REPORT_FILES:
        assert (tmp_path / name).stat().st_size > 0, name
    report = (tmp_path / "report.md").read_text()
    rows = threshold_rows(report)
    assert rows["proxy-timeout failures on async paths"] == ("0", "PASS")
    finished, started = rows["every started job finished"][0].split(" ")[0].split("/")
    assert finished == started and int(started) >= 10, rows
    # every follower took part: polling, SSE (with reads judged) and the S3 fetch after a 302
    names = (
        "fast job (poll)",
        "slow job (poll)",
        "slow job (sse)",
        "SSE gap between reads",
        "callback received",
    )
    for name in names:
        assert f"| {name} |" in report, name
    assert "Thresholds: PASS" in result.stdout
    assert (tmp_path / "report.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_slow_legacy_calls_and_a_silent_stream_behind_a_short_proxy_timeout_fail_the_run(
    make_stack, tmp_path
):
    # downloads of 1.5-2.5 s, a 1 s proxy limit, and heartbeats slower than that limit
    stack = make_stack(
        DOWNLOAD_DELAY_MIN_MS="1500", DOWNLOAD_DELAY_MAX_MS="2500", SSE_HEARTBEAT_S="5", POLL_INTERVAL_S="1"
    )
    result = run_locust(
        stack.url,
        tmp_path,
        "-u", "4", "-r", "4", "-t", "4s", "--stop-timeout", "10",
        "--proxy-timeout-s", "1",
        "--weights", "legacy=1,sse=1",
        "--slow-files", "1",
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Thresholds: FAIL" in result.stdout
    summary = result.stdout[result.stdout.index("Thresholds: FAIL") :]
    rows = threshold_rows(summary)
    assert rows["proxy-timeout failures on legacy /start"][1] == "FAIL"
    assert int(rows["proxy-timeout failures on legacy /start"][0]) >= 1
    assert rows["proxy-timeout failures on async paths"][1] == "FAIL"
    assert rows["error ratio"][1] == "FAIL"
    failures = (tmp_path / "locust_failures.csv").read_text()
    assert "proxy-timeout 504 Gateway Timeout" in failures
    assert (tmp_path / "report.md").read_text().startswith("# Load test report: FAIL")


def test_proxy_limit_judges_duration_and_proxy_statuses():
    limit = proxylimit.ProxyLimit("cloudflare", 100, 524)
    assert limit.judge(99.9, 200) is None
    assert str(limit.judge(100.1, 200)).startswith("proxy-timeout 524 A Timeout Occurred")
    assert limit.judge(1, 504) is not None
    assert limit.judge(1, 500) is None  # an app error, not a proxy cut


def test_profiles_load_from_either_toml_layout_and_the_flag_wins(tmp_path):
    nested = tmp_path / "nested.toml"
    nested.write_text(
        "[profiles.cloudflare]\nproxy_read_timeout_s = 100\n[profiles.test]\nread_timeout_s = 2\n"
    )
    flat = tmp_path / "flat.toml"
    flat.write_text(
        "[alb]\nidle_timeout_s = 60\n[nginx.proxy]\nread_timeout_ms = 1\nproxy_read_timeout_ms = 45000\n"
    )
    assert proxylimit.load("cloudflare", path=nested) == proxylimit.ProxyLimit("cloudflare", 100.0, 524)
    assert proxylimit.load("test", path=nested).timeout_s == 2.0
    assert proxylimit.load("alb", path=flat) == proxylimit.ProxyLimit("alb", 60.0, 504)
    assert proxylimit.load("nginx", path=flat).timeout_s == 45.0
    assert proxylimit.load("alb", 3.5, path=flat).timeout_s == 3.5
    assert proxylimit.load(None, path=tmp_path / "missing.toml").timeout_s == proxylimit.FALLBACK_TIMEOUT_S


def test_a_presigned_link_fetched_through_another_address_keeps_its_signature(s3_server):
    """compose's locust reaches MinIO as minio:9000 while links name localhost:9000 (the
    browser's S3_PUBLIC_ENDPOINT): the request goes to the reachable address with the link's Host."""
    port = s3_server.url.rsplit(":", 1)[1]
    settings = load_settings(
        s3_endpoint=s3_server.url,
        s3_public_endpoint=f"http://localhost:{port}",
        s3_access_key_id=harness.DEV_ACCESS_KEY,
        s3_secret_access_key=harness.DEV_SECRET_KEY,
        s3_force_path_style=True,
    )
    public = make_client(settings, public=True)  # as the API signs its links
    link = public.generate_presigned_url(
        "get_object", Params={"Bucket": TEST_BUCKET, "Key": "downloads/70000.zip"}, ExpiresIn=60
    )
    url, headers = s3link.presigned_request(link, f"127.0.0.1:{port}")
    assert url.startswith(f"http://127.0.0.1:{port}/") and headers == {"Host": f"localhost:{port}"}
    got = httpx.get(url, headers=headers, timeout=10)
    assert got.status_code == 200 and got.content.startswith(b"PK")
    assert httpx.get(url, timeout=10).status_code == 403, "the signature covers Host: it must be kept"
    assert s3link.presigned_request(link) == (link, {})
