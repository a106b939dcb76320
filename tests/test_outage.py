"""Dependency outages under running downloads, and a hung S3 under the API (issue #16, 2 and 4).

Real processes: the API and a worker as children; the Redis and the SeaweedFS a test kills,
restarts or freezes are its own (the Redis drill borrows the session's S3, which it leaves
alone). The drills are loadtest/outage.py's, smaller: that script prints the same figures at
the issue's scale.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from botocore.exceptions import ClientError, EndpointConnectionError, IncompleteReadError

from loadtest.outage import hung_s3_drill, log_events, redis_drill, s3_drill
from service import harness, keys
from service.jobs import reaper
from service.jobs.worker import DownloadWorker
from service.settings import SettingsError, load_settings
from service.storage.s3 import Storage
from tests.jobs import initiate, runtime_on
from tests.support import TEST_BUCKET, require_binary

# Ten files of 0.4 s each; JOB_MAX_RETRIES=2 with JOB_RETRY_BASE_S=0.5 is a retry budget of about
# 3 s, well inside the outages below: spent by attempts, these outages would fail the jobs.
DRILL = {
    "DOWNLOAD_DELAY_MIN_MS": "4000",
    "DOWNLOAD_DELAY_MAX_MS": "4000",
    "JOB_MAX_RETRIES": "2",
    "JOB_RETRY_BASE_S": "0.5",
    "JOB_OUTAGE_ALLOWANCE_S": "60",
}
JOBS = 6


@pytest.fixture
def own_s3(tmp_path: Path) -> Iterator[harness.Server]:
    """A private, seeded SeaweedFS this test may freeze (the session's serves other tests)."""
    server = harness.start_seaweed(tmp_path / "s3")
    try:
        harness.seed(
            harness.s3_client(server.url, harness.DEV_ACCESS_KEY, harness.DEV_SECRET_KEY), TEST_BUCKET
        )
        yield server
    finally:
        server.process.send_signal(signal.SIGCONT)
        server.stop()


def _assert_rode_out(figures, dependency: str) -> None:
    print(figures.line())
    assert figures.lost == 0, (figures.statuses, figures.worker_log[-4000:])
    assert dict(figures.attempts) == {1: figures.jobs}, "an outage must not spend an attempt"
    assert figures.reaped == 0, "no job may be taken from a worker riding out an outage"
    down = [
        e for e in log_events(figures.worker_log, "dependency_unavailable") if e["dependency"] == dependency
    ]
    back = [e for e in log_events(figures.worker_log, "dependency_back") if e["dependency"] == dependency]
    assert down and back, f"the worker must log why the jobs paused:\n{figures.worker_log[-4000:]}"
    assert log_events(figures.worker_log, "outage_allowance_spent") == []


@pytest.mark.slow
def test_running_jobs_ride_out_s3_killed_and_restarted_without_spending_an_attempt(tmp_path):
    """On main every attempt was spent while S3 was down: the jobs ended `failed`."""
    require_binary("redis-server")
    figures = s3_drill(JOBS, 6, DRILL, tmp_path, TEST_BUCKET)
    _assert_rode_out(figures, "s3")


@pytest.mark.slow
def test_running_jobs_ride_out_a_redis_restart_keep_their_lease_and_attempt(tmp_path, s3_server):
    """Redis SIGKILLed for longer than a lease (3 s): on main the downloads died without a log
    line and RQ's abandoned-job cleanup ran them again, a retry spent each."""
    require_binary("redis-server")
    figures = redis_drill(JOBS, 5, DRILL, tmp_path, TEST_BUCKET, s3_url=s3_server.url)
    _assert_rode_out(figures, "redis")
    restored = [line for line in figures.worker_log.splitlines() if "restored: it lapsed" in line]
    assert len(restored) == JOBS, figures.worker_log[-4000:]


def test_only_s3_being_unreachable_is_ridden_out_not_a_bad_request(own_s3: harness.Server):
    """botocore's verdict: refused connections, 5xx and throttling are transient; a missing
    bucket or access denied fail at once (no wait fixes them)."""
    settings = load_settings(
        s3_endpoint=own_s3.url,
        s3_access_key_id=harness.DEV_ACCESS_KEY,
        s3_secret_access_key=harness.DEV_SECRET_KEY,
        s3_bucket_name=TEST_BUCKET,
        s3_force_path_style=True,
        s3_max_attempts=1,
    )
    storage = Storage.from_settings(settings)
    with pytest.raises(ClientError) as missing_bucket:
        storage.client.head_object(Bucket="no-such-bucket", Key="downloads/70000.zip")
    assert not storage.is_transient(missing_bucket.value)
    denied = Storage.from_settings(settings.with_overrides(s3_secret_access_key="wrong-secret"))
    with pytest.raises(ClientError) as forbidden:
        denied.check()
    assert forbidden.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert not storage.is_transient(forbidden.value)
    refused = Storage.from_settings(
        settings.with_overrides(s3_endpoint=f"http://127.0.0.1:{harness.free_port()}")
    )
    with pytest.raises(EndpointConnectionError) as down:
        refused.check()
    assert storage.is_transient(down.value)
    slow_down = ClientError(
        {"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "HeadObject"
    )
    assert storage.is_transient(slow_down)
    assert storage.is_transient(IncompleteReadError(actual_bytes=10, expected_bytes=20))


def test_the_outage_allowance_must_end_before_the_job_deadline():
    with pytest.raises(SettingsError, match="JOB_OUTAGE_ALLOWANCE_S must be less than JOB_TIMEOUT_S"):
        load_settings(job_outage_allowance_s=900, job_timeout_s=900)
    assert load_settings().outage_allowance_s == 180 < load_settings().job_timeout_s
    assert load_settings(job_timeout_s=120).outage_allowance_s == 60, "unset: fits a short timeout"


@pytest.mark.slow
def test_a_hung_s3_never_hangs_the_api(tmp_path):
    """S3 accepts connections and never answers (SIGSTOP): on main /health hung for S3's read
    timeouts and the S3 calls of /health and /v1/download/check filled the thread pool every
    route shares, so a cancel waited on S3 too (the client gives up after 120 s)."""
    require_binary("redis-server")
    hung = hung_s3_drill(48, {"S3_REQUEST_TIMEOUT_S": "0.5"}, tmp_path)
    print(hung.lines())
    assert hung.ready.response.status_code == 200, hung.ready.response.text
    assert hung.ready.response.json() == {
        "status": "degraded",
        "checks": {"storage": "degraded", "redis": "ok"},
    }
    assert hung.health.response.status_code == 503
    assert hung.health.response.json() == {
        "status": "unhealthy",
        "checks": {"storage": "error", "redis": "ok"},
    }
    # more S3 calls at once than the API's shared thread pool has threads (40): all refused
    for answer in hung.checks:
        assert answer.response.status_code == 503, answer.response.text
        assert answer.response.headers["retry-after"] and answer.response.json()["requestId"]
        assert "storage" in answer.response.json()["message"]
    assert hung.cancel.response.status_code == 200, hung.cancel.response.text
    assert hung.cancel.response.json()["status"] == "cancelled"
    assert hung.check_after is not None
    assert hung.check_after.response.status_code == 200 and hung.check_after.response.json()["available"]


def test_no_lease_is_judged_while_the_restart_check_itself_cannot_reach_redis(redis_factory, monkeypatch):
    """The reaper and RQ's cleanup wait while Redis restarted less than a lease ago. When the
    check that tells (INFO's uptime) fails, that is no licence to judge leases: maintenance
    skips, as it would after a restart (it ran the reaper on the code before)."""
    server = redis_factory()
    conn = redis.Redis.from_url(server.url)
    rt = runtime_on(conn)
    worker = DownloadWorker(list(keys.DOWNLOAD_QUEUES), rt)
    reaped: list[object] = []
    monkeypatch.setattr(reaper, "reap", lambda runtime: reaped.append(runtime))

    def lost(*_args: object, **_kwargs: object) -> None:
        raise redis.exceptions.ConnectionError("connection reset by peer")

    monkeypatch.setattr(worker.connection, "info", lost)
    worker.run_maintenance_tasks()
    assert reaped == []
    assert not worker.should_run_maintenance_tasks  # held for a heartbeat, not retried at once
    monkeypatch.undo()
    monkeypatch.setattr(reaper, "reap", lambda runtime: reaped.append(runtime))
    monkeypatch.setattr(worker, "_leases_settling_s", lambda: 0.0)
    worker.run_maintenance_tasks()  # the check answers: the reaper runs (the test can fail)
    assert reaped == [rt]


@pytest.mark.slow
def test_downloads_starting_on_a_fresh_redis_renew_their_leases_once_a_heartbeat(make_stack):
    """For one lease after Redis starts, maintenance waits (leases may be lapsed, not abandoned).
    It used to stay due meanwhile, so every turn of the dequeue loop renewed every running lease
    again: 60,000 Redis commands a second in `make capacity`'s initiate burst. Held off until
    the lease has passed, a download's lease is renewed once a heartbeat."""
    stack = make_stack(
        WORKER_HEARTBEAT_S="5",  # a lease of 15 s: this Redis is younger than that throughout
        WORKER_CONCURRENCY="64",
        DOWNLOAD_DELAY_ENABLED="true",
        DOWNLOAD_DELAY_MIN_MS="8000",
        DOWNLOAD_DELAY_MAX_MS="8000",
    )
    conn = redis.Redis.from_url(stack.env["REDIS_URL"])
    assert conn.info("server")["uptime_in_seconds"] < 15
    count = 60
    conn.config_resetstat()
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        ids = [initiate(client, [70000 + i]) for i in range(count)]
    harness.wait_until(
        lambda: all(conn.hget(keys.job(i), "status") == b"processing" for i in ids), 10, "every job running"
    )
    time.sleep(3)
    transactions = conn.info("commandstats").get("cmdstat_exec", {}).get("calls", 0)
    # each download's start, state writes and at most one heartbeat: a few transactions each
    assert transactions < 8 * count, transactions
