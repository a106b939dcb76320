"""Redis failover under Sentinel, on real servers: a primary, two replicas, three sentinels.

The drill kills the primary with SIGKILL while jobs are being initiated, running and finishing,
and checks what the issue promises: every job that got a 202 ends `completed` with the right
bytes and ran to completion once, the API answers only 202 or 503 meanwhile, and the workers
and the SSE hub find the new primary on their own. Time-compressed: sentinels declare the
primary down after DOWN_AFTER_MS.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from rq.worker import Worker

from service import harness, keys
from service.harness import DEMO_FILE_IDS, running_stack, wait_until
from service.settings import SettingsError, load_settings
from service.telemetry.logging import job_ref
from tests import sse
from tests.jobs import initiate, wait_for
from tests.support import TEST_BUCKET, base_env, require_binary

# 800 ms once made a loaded machine's sentinels demote the replica they had just promoted
DOWN_AFTER_MS = 1500
FAILOVER_TIMEOUT_MS = 3000


@dataclass
class Answer:
    sent: float
    answered: float
    status: int
    job_id: str | None
    file_id: int
    retry_after: str | None


@dataclass
class HA:
    primary: harness.Server
    replicas: list[harness.Server]
    sentinels: harness.Sentinels


@pytest.fixture
def ha(tmp_path: Path) -> Iterator[HA]:
    """A primary with two synced replicas and three sentinels that agree on them."""
    binary = require_binary("redis-server")
    servers: list[harness.Server] = []
    sentinels: harness.Sentinels | None = None
    try:
        primary = harness.start_redis(tmp_path / "primary", binary=binary)
        servers.append(primary)
        for index in range(2):
            servers.append(
                harness.start_redis(tmp_path / f"replica{index}", binary=binary, replica_of=primary)
            )
        wait_until(lambda: all(map(harness.replica_synced, servers[1:])), 15, "replicas synced")
        sentinels = harness.start_sentinels(
            tmp_path / "sentinels",
            primary,
            down_after_ms=DOWN_AFTER_MS,
            failover_timeout_ms=FAILOVER_TIMEOUT_MS,
            binary=binary,
        )
        wait_until(lambda: sentinels.agreed(replicas=2), 20, "sentinels knowing each other and the replicas")
        yield HA(primary, servers[1:], sentinels)
    finally:
        if sentinels is not None:
            sentinels.stop()
        for server in servers:
            server.stop()


class Initiator(threading.Thread):
    """Initiates one-file jobs back to back, recording every answer, until stopped."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.answers: list[Answer] = []
        self.halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            index = 0
            while not self.halt.is_set():
                file_id = DEMO_FILE_IDS[index % len(DEMO_FILE_IDS)]
                index += 1
                sent = time.monotonic()
                response = client.post("/v1/download/initiate", json={"file_ids": [file_id]})
                job_id = response.json().get("jobId") if response.status_code == 202 else None
                retry_after = response.headers.get("retry-after")
                answer = Answer(sent, time.monotonic(), response.status_code, job_id, file_id, retry_after)
                self.answers.append(answer)
                self.halt.wait(0.03)

    def accepted(self, after: float = 0.0) -> list[Answer]:
        return [a for a in list(self.answers) if a.status == 202 and a.sent >= after]


def follow(url: str, job_id: str, seen: list[sse.Event], done: threading.Event) -> None:
    """Follow a job's SSE stream to its end as a browser would: reconnect with Last-Event-ID
    whenever the stream ends early or the API refuses (Redis down)."""
    last: str | None = None
    with httpx.Client(base_url=url) as client:
        while not done.is_set():
            try:
                _, items = sse.collect(client, job_id, last_event_id=last, timeout_s=60)
            except httpx.HTTPError:
                items = []
            for event in sse.events(items):
                seen.append(event)
                last = event.id or last
                if event.event in ("completed", "failed", "cancelled"):
                    done.set()
            if not done.is_set():
                time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_primary_killed_mid_traffic_loses_no_accepted_job(ha, tmp_path, s3_server, s3, record_property):
    env = base_env(
        "",  # no REDIS_URL: the sentinels name the primary
        s3_server.url,
        REDIS_SENTINELS=ha.sentinels.addresses,
        REDIS_SENTINEL_MASTER=ha.sentinels.master,
        DOWNLOAD_DELAY_MIN_MS="200",
        DOWNLOAD_DELAY_MAX_MS="1500",
        REAPER_INTERVAL_S="1",
        SSE_HEARTBEAT_S="2",  # also the hub's sweep for changes whose pub/sub message was lost
    )
    assert "REDIS_URL" in env and not env["REDIS_URL"]
    old_port = ha.sentinels.primary_port()
    with running_stack(env, tmp_path / "logs", workers=2) as stack:
        # both workers running before the kill (one constructed during the outage exits 1)
        with redis.Redis.from_url(ha.primary.url) as primary:
            wait_until(lambda: len(Worker.all(connection=primary)) == 2, 30, "two workers registered")
        initiator = Initiator(stack.url)
        initiator.start()
        wait_until(lambda: len(initiator.accepted()) >= 15, 30, "jobs accepted before the kill")
        # a job whose stream is open across the failover, and one opened after it
        before = initiator.accepted()[-1].job_id
        assert before is not None
        streams: dict[str, tuple[list[sse.Event], threading.Event]] = {}

        def open_stream(job_id: str) -> None:
            seen: list[sse.Event] = []
            done = threading.Event()
            threading.Thread(target=follow, args=(stack.url, job_id, seen, done), daemon=True).start()
            streams[job_id] = (seen, done)

        open_stream(before)
        killed_at = time.monotonic()
        ha.primary.kill()
        new_port = wait_until(
            lambda: (port := ha.sentinels.primary_port()) not in (None, old_port) and port,
            30,
            "a sentinel naming the new primary",
        )
        promoted_at = time.monotonic()
        wait_until(lambda: len(initiator.accepted(after=promoted_at)) >= 15, 40, "jobs accepted after it")
        after = initiator.accepted(after=promoted_at)[0].job_id
        assert after is not None
        open_stream(after)
        initiator.halt.set()
        initiator.join(30)
        answers = initiator.answers

        statuses = Counter(a.status for a in answers)
        assert set(statuses) <= {202, 503}, statuses
        assert all(a.retry_after for a in answers), "a 503 without Retry-After"
        accepted = [a for a in answers if a.status == 202]
        with stack.client() as client:
            for answer in accepted:
                assert answer.job_id is not None
                body = wait_for(client, answer.job_id, timeout_s=60)
                assert body["status"] == "completed", body
                redirect = client.get(f"/v1/download/{answer.job_id}/file")
                assert redirect.status_code == 302, redirect.text
                got = httpx.get(redirect.headers["location"], timeout=30).content
                expected = s3.get_object(Bucket=TEST_BUCKET, Key=f"downloads/{answer.file_id}.zip")
                assert got == expected["Body"].read(), f"job {answer.job_id}: wrong bytes"
        for job_id, (seen, done) in streams.items():
            wait_until(done.is_set, 30, f"the stream of job {job_id} reaching its end")
            assert seen[-1].event == "completed", [e.event for e in seen]
            ids = [e.id for e in seen if e.id]
            assert len(ids) == len(set(ids)), f"an event sent twice after resuming: {ids}"

    # once to completion: each accepted job's completion is logged by exactly one worker run
    completions: Counter[str] = Counter()
    for worker in stack.workers:
        for line in worker.output().splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("event") == "job_stopped" and record.get("status") == "completed":
                    completions[record["job"]] += 1
    runs = {a.job_id: completions[job_ref(a.job_id or "")] for a in accepted}
    twice = {job_id: count for job_id, count in runs.items() if count != 1}
    assert not twice, f"accepted jobs not completed exactly once: {twice}"

    unavailable = [a for a in answers if a.status == 503]
    window = (unavailable[-1].answered - unavailable[0].sent) if unavailable else 0.0
    slowest = max(a.answered - a.sent for a in answers)
    first_after = min((a.answered for a in accepted if a.sent > killed_at), default=float("nan"))
    figures = (
        f"failover drill: sentinels named the new primary (port {new_port}) "
        f"{promoted_at - killed_at:.1f} s after SIGKILL (down-after {DOWN_AFTER_MS} ms); "
        f"503 window {window:.1f} s ({len(unavailable)} x 503); first 202 after the kill "
        f"{first_after - killed_at:.1f} s; slowest answer {slowest:.2f} s; "
        f"{len(accepted)} jobs accepted, all completed once"
    )
    print(figures)
    record_property("figures", figures)


def test_sentinel_settings_are_validated_and_imply_one_replica_ack():
    with pytest.raises(SettingsError, match=r"invalid setting REDIS_SENTINELS: .*'nohost' is not host:port"):
        load_settings(redis_sentinels="127.0.0.1:26379,nohost")
    settings = load_settings(redis_sentinels=" 10.0.0.1:26379, sentinel-b:26380 ", redis_min_replicas_ack="")
    assert settings.sentinel_addresses == [("10.0.0.1", 26379), ("sentinel-b", 26380)]
    assert settings.replicas_ack == 1
    assert load_settings(redis_url="redis://r:6379/0").replicas_ack == 0
    assert load_settings(redis_sentinels="s:26379", redis_min_replicas_ack=0).replicas_ack == 0
    with pytest.raises(SettingsError) as raised:
        load_settings(redis_password="", redis_min_replicas_ack=-1)
    assert "REDIS_MIN_REPLICAS_ACK" in str(raised.value)


@pytest.mark.slow
def test_a_job_no_replica_confirms_gets_503_and_is_withdrawn(redis_factory, s3_server, tmp_path):
    """A replica that stops acknowledging (SIGSTOP: alive, connected, silent) must turn the 202
    into a 503: the job was on the primary only, and a failover now would lose it."""
    primary = redis_factory()
    replica = redis_factory(replica_of=primary)
    wait_until(lambda: harness.replica_synced(replica), 10, "replica synced")
    env = base_env(primary.url, s3_server.url, REDIS_MIN_REPLICAS_ACK="1", REDIS_ACK_TIMEOUT_MS="200")
    conn = redis.Redis.from_url(primary.url, decode_responses=True)
    with running_stack(env, tmp_path / "logs") as stack, stack.client() as client:
        confirmed = initiate(client, [70000])
        replica.process.send_signal(signal.SIGSTOP)
        try:
            refused = client.post("/v1/download/initiate", json={"file_ids": [70007]})
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"]
            assert refused.json()["requestId"] == refused.headers["x-request-id"]
            newest = conn.zrange(keys.JOB_INDEX, -1, -1)[0]
            assert newest != confirmed
            assert conn.hget(keys.job(newest), "status") == "cancelled", "the refused job must not run"
            assert newest not in conn.lrange(keys.rq_queue(keys.SMALL_QUEUE), 0, -1)
        finally:
            replica.process.send_signal(signal.SIGCONT)
        wait_until(lambda: harness.replica_synced(replica), 10, "replica back")
        again = initiate(client, [70007])
        assert wait_for(client, again)["status"] == "completed"
        assert 'delineate_jobs_rejected_total{reason="not_replicated"} 1.0' in client.get("/metrics").text


def test_a_change_whose_pubsub_message_was_lost_still_reaches_the_stream(make_stack):
    """After a failover the hub can sit subscribed on a demoted primary and miss messages; its
    sweep reads each watched job's events anyway. Here the message is never published."""
    stack = make_stack(workers=0, SSE_HEARTBEAT_S="1", SSE_MAX_STREAM_S="20")
    conn = redis.Redis.from_url(stack.env["REDIS_URL"], decode_responses=True)
    unannounced = {"event": "cancelled", "data": json.dumps({"status": "cancelled"})}
    with stack.client() as client:
        job_id = initiate(client, [70000])
        with client.stream("GET", f"/v1/download/stream/{job_id}", timeout=30) as response:
            assert response.status_code == 200
            events = (item for item in sse.read(response) if isinstance(item, sse.Event))
            assert next(events).event == "snapshot"
            conn.xadd(keys.events(job_id), unannounced)  # no PUBLISH: the hub is never told
            assert [event.event for event in events] == ["cancelled"]
