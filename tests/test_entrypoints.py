"""The two commands and start-up validation, run as a newcomer would run them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis
from standardwebhooks import Webhook

from service import harness, keys
from service.settings import SettingsError, load_settings
from tests.hooks import Receiver
from tests.jobs import initiate, initiate_json, wait_for
from tests.support import ROOT, base_env


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "not-a-port"),
        ("PORT", "70000"),
        ("REQUEST_TIMEOUT_MS", "10"),
        ("RATE_LIMIT_MAX_REQUESTS", "0"),
        ("DOWNLOAD_DELAY_ENABLED", "maybe"),
        ("TRUSTED_PROXIES", "10.0.0.0/99"),
        ("WORKER_CONCURRENCY", "0"),
    ],
)
def test_invalid_setting_stops_start_up_naming_the_variable(name, value):
    env = {**os.environ, name: value, "REDIS_URL": "redis://127.0.0.1:1/0"}
    result = subprocess.run(
        [sys.executable, "-m", "service", "api"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert f"invalid setting {name}" in result.stderr


def test_delay_range_must_be_ordered_and_secrets_are_not_echoed(monkeypatch):
    monkeypatch.setenv("DOWNLOAD_DELAY_MIN_MS", "5000")
    monkeypatch.setenv("DOWNLOAD_DELAY_MAX_MS", "1000")
    with pytest.raises(SettingsError, match="DOWNLOAD_DELAY_MIN_MS must not exceed DOWNLOAD_DELAY_MAX_MS"):
        load_settings()
    monkeypatch.delenv("DOWNLOAD_DELAY_MIN_MS")
    monkeypatch.setenv("S3_SECRET_ACCESS_KEY", "x" * 10)
    monkeypatch.setenv("S3_BUCKET_NAME", "ab")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "S3_BUCKET_NAME" in str(info.value) and "x" * 10 not in str(info.value)


@pytest.mark.slow
def test_make_run_starts_everything_embedded_and_completes_a_job(tmp_path):
    port = harness.free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("S3_", "REDIS_", "DOWNLOAD_", "MAKE", "MFLAGS", "WEBHOOK_"))
    }
    env.update(PORT=str(port), DOWNLOAD_DELAY_MIN_MS="200", DOWNLOAD_DELAY_MAX_MS="400")
    hook = Receiver()
    log = tmp_path / "make-run.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["make", "run"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        url = f"http://127.0.0.1:{port}"
        harness.wait_until(
            lambda: httpx.get(f"{url}/health", timeout=1).status_code == 200, 90, "make run", process
        )
        with httpx.Client(base_url=url, timeout=10) as client:
            job_id = initiate(client, [70000, 70063])
            assert wait_for(client, job_id)["status"] == "completed"
            assert client.post("/v1/download/check", json={"file_id": 70063}).json()["available"] is True
            # webhooks work out of the box, signed with a secret kept in a file, not in the logs
            hooked = initiate_json(client, {"file_ids": [70007], "callbackUrl": hook.url})
            [(headers, body)] = hook.for_job(hooked)
            # ... to loopback only: never the cloud metadata endpoint or the private network
            for url in ("http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/hook"):
                body_ = {"file_ids": [70007], "callbackUrl": url}
                assert client.post("/v1/download/initiate", json=body_).status_code == 400, url
        assert _listening_addresses(port) == {"127.0.0.1"}, "make run listens on loopback only"
        first_lines = log.read_text()
        assert "embedded_redis_started" in first_lines and "embedded_s3_started" in first_lines
        assert "downloads/70000.zip .. downloads/70063.zip" in first_lines
        secret_file = re.search(r"signing_key_file=(\S+)", first_lines)
        assert secret_file, "make run does not say where the webhook secret is"
        secret = Path(secret_file.group(1)).read_text().strip()
        assert Webhook(secret).verify(body, headers)["data"]["jobId"] == hooked
        assert secret.removeprefix("whsec_") not in first_lines
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
    # Ctrl+C stops the whole group: API, worker, embedded Redis and SeaweedFS
    harness.wait_until(lambda: not _group_alive(process.pid), 30, "make run's children to exit")
    assert harness._is_free(port)
    assert "Traceback" not in log.read_text(), "Ctrl+C stops the stack without a traceback"
    assert not Path(secret_file.group(1)).parent.exists(), "make run leaves its temporary directory"
    hook.server.shutdown()


def _listening_addresses(port: int) -> set[str]:
    """The local IPv4 addresses with a socket listening on `port` (Linux's /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, _remote, status = line.split()[1:4]
        address, port_hex = local.split(":")
        if status == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
            found.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_version_is_the_package_metadata():
    from importlib import metadata

    result = subprocess.run(
        [sys.executable, "-m", "service", "--version"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"delineate {metadata.version('delineate')}\n"


@pytest.mark.parametrize("args", [["dead"], ["redeliver", "some-job"]], ids=["dead", "redeliver"])
def test_webhook_commands_with_redis_down_say_so_in_one_line(args):
    closed = harness.free_port()  # nothing listens there
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{closed}/0"}
    result = subprocess.run(
        [sys.executable, "-m", "service", "webhooks", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("delineate webhooks: cannot reach Redis: "), result.stderr
    assert len(result.stderr.splitlines()) == 1 and str(closed) in result.stderr, result.stderr


def test_worker_refuses_an_unknown_queue_naming_the_valid_ones():
    result = subprocess.run(
        [sys.executable, "-m", "service", "worker", "--queues", "small,downloads-huge"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "unknown queue 'downloads-huge'; valid: small, large, webhooks, downloads-small" in result.stderr


@pytest.mark.slow
def test_a_webhook_only_worker_leaves_download_jobs_queued(make_stack):
    """`--queues` splits the pools: a webhook worker never takes a download; a download one does."""
    stack = make_stack(workers=0)
    with stack.client() as client:
        job_id = initiate(client, [70000])
        webhooks_only = stack.add_worker("--queues", "webhooks", "--burst")
        # --burst: it looks at its queues, finds them empty (the download is not in them) and exits
        assert webhooks_only.process.wait(60) == 0, webhooks_only.tail()
        assert client.get(f"/v1/download/status/{job_id}").json()["status"] == "queued"
        conn = redis.Redis.from_url(stack.env["REDIS_URL"])
        assert conn.llen(f"rq:queue:{keys.SMALL_QUEUE}") == 1
        stack.add_worker("--queues", "small,large")
        assert wait_for(client, job_id)["status"] == "completed"


def test_readme_documents_every_setting():
    """The configuration table names every environment variable the service reads."""
    from service.settings import Settings

    table = (ROOT / "README.md").read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table))
    missing = {name.upper() for name in Settings.model_fields} - documented
    assert not missing, f"README's configuration table lacks {sorted(missing)}"


def test_the_api_removes_its_metrics_directory_and_a_dead_one_s_leftover(tmp_path, redis_factory, s3_server):
    """`delineate api` without PROMETHEUS_MULTIPROC_DIR keeps its metrics in a temporary
    directory: removed when it stops (exit 0 on SIGTERM), and one a killed API left behind is
    removed by the next start."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = temp / "delineate-metrics-crashed"
    leftover.mkdir()
    (leftover / "owner.pid").write_text(str(dead.pid))
    live_owner = temp / "delineate-metrics-another-api"  # an API still running: left alone
    live_owner.mkdir()
    (live_owner / "owner.pid").write_text(str(os.getpid()))
    env = base_env(redis_factory().url, s3_server.url, TMPDIR=str(temp))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    api, url = harness.start_api(env, tmp_path / "logs")
    assert httpx.get(f"{url}/metrics", timeout=5).status_code == 200
    mine = [p for p in temp.glob("delineate-metrics-*") if p not in (leftover, live_owner)]
    assert len(mine) == 1 and list(mine[0].glob("*.db")), "the API's own, in use"
    assert not leftover.exists() and live_owner.exists()
    assert api.stop(exit_codes=(0,)) == 0
    assert not mine[0].exists()


def _niceness(pid: int) -> set[int]:
    """The nice value of every thread of `pid` (field 19 of /proc/PID/task/TID/stat)."""
    found = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
        found.add(int(stat.rsplit(")", 1)[1].split()[16]))
    return found


def test_worker_nice_lowers_the_priority_of_every_worker_thread(make_stack):
    """WORKER_NICE: a burst of downloads yields the CPU to the API on a shared box. Linux
    niceness is per thread, so the download threads (started after start-up) must carry it too."""
    stack = make_stack(WORKER_NICE="7")
    with stack.client() as client:
        assert wait_for(client, initiate(client, [70000]))["status"] == "completed"
    assert _niceness(stack.workers[0].process.pid) == {7}
    assert _niceness(stack.api.process.pid) == {0}
