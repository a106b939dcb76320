"""Hostile callbacks (slow, failing, blackholed, slow to resolve) never cost a download or the
API anything (issue #17, item 1).

Real processes and sockets throughout. A slow resolver is injected into the child processes
by tests/faults/sitecustomize.py (the system resolver cannot be pointed at a test's DNS
server without root); every other fault is a real server on loopback (tests/hooks.py).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from rq.job import Job
from rq.registry import ScheduledJobRegistry

from service import keys, runtime
from service.harness import wait_until
from service.jobs import state
from service.webhooks import delivery
from tests.hooks import SECRET, Hostile, Receiver
from tests.jobs import initiate, runtime_on, wait_for
from tests.support import ROOT
from tests.test_webhooks import initiate_with_callback, terminal_job_with_callback, wait_until_webhook

FAULTS = str(ROOT / "tests" / "faults")
HANGING = 16  # lookups that hang at once: the guard's pool (RESOLVER_THREADS); before, up to 40


@pytest.fixture
def dns_faults(tmp_path: Path) -> Iterator[Path]:
    """DNS_FAULTS_DIR for tests/faults/sitecustomize.py; its held lookups released at the end."""
    folder = tmp_path / "dns"
    folder.mkdir()
    yield folder
    (folder / "release").touch()


def held(folder: Path) -> int:
    return len(list(folder.glob("held-*")))


@pytest.mark.slow
def test_hostile_callbacks_never_delay_a_download(make_stack, dns_faults):
    """One download slot; callbacks that blackhole, trickle a header every half second, answer
    503 and resolve slowly. Every one of them is under way, and still holding on, while a plain
    download is taken, run and completed; the 503s are retried meanwhile (scheduled, not slept
    in a slot) until they give up."""
    blackhole, trickle, failing = Hostile("blackhole"), Hostile("trickle"), Receiver()
    failing.default = 503
    stack = make_stack(
        WORKER_CONCURRENCY="1",
        WEBHOOK_CONCURRENCY="4",
        WEBHOOK_PER_HOST_CONCURRENCY="4",  # all four hosts are 127.0.0.1 here
        WEBHOOK_SECRET=SECRET,
        WEBHOOK_ALLOWED_HOSTS="127.0.0.1,hook.slow.test",
        WEBHOOK_TIMEOUT_S="60",
        WEBHOOK_DNS_TIMEOUT_S="1",
        WEBHOOK_MAX_ATTEMPTS="3",
        WEBHOOK_RETRY_BASE_S="0.05",
        PYTHONPATH=FAULTS,
        DNS_FAULTS_DIR=str(dns_faults),
    )
    try:
        with stack.client() as client:
            urls = [blackhole.url, trickle.url, failing.url, f"http://hook.slow.test:{failing.port}/hook"]
            hostile = [initiate_with_callback(client, [70000], url) for url in urls]

            def all_under_way() -> bool:
                stuck = blackhole.holding() and trickle.holding() and held(dns_faults)
                return bool(stuck and failing.requests)

            def what() -> str:
                return (
                    f"a delivery to every hostile callback under way: blackhole {blackhole.holding()}, "
                    f"trickle {trickle.holding()}, slow DNS {held(dns_faults)}, 503 {len(failing.requests)}"
                )

            wait_until(all_under_way, 30, what, retry_on=())
            download = initiate(client, [70007])
            assert wait_for(client, download)["status"] == "completed"
            assert blackhole.holding() and trickle.holding() and held(dns_faults)  # still stuck
            assert client.get("/health").status_code == 200
            record = wait_until_webhook(client, hostile[2], "failed")["webhook"]
            assert record["attempts"] == 3 and record["lastError"] == "HTTP 503"
    finally:
        (dns_faults / "release").touch()
        for server in (blackhole, trickle):
            server.stop()
        failing.server.shutdown()


@pytest.mark.slow
def test_slow_callback_dns_does_not_delay_health(make_stack, dns_faults):
    """45 initiates name hosts whose lookup never ends: they fill the guard's own resolver
    pool, not the API's shared thread pool, so /health answers while they hang, and each
    initiate gets its 400 once WEBHOOK_DNS_TIMEOUT_S has passed."""
    stack = make_stack(
        WEBHOOK_SECRET=SECRET, WEBHOOK_DNS_TIMEOUT_S="1", PYTHONPATH=FAULTS, DNS_FAULTS_DIR=str(dns_faults)
    )
    with stack.client() as client, ThreadPoolExecutor(45) as pool:
        try:
            answers = [
                pool.submit(
                    client.post,
                    "/v1/download/initiate",
                    json={"file_ids": [70000], "callbackUrl": f"http://n{n}.held.test/hook"},
                )
                for n in range(45)
            ]
            wait_until(lambda: held(dns_faults) >= HANGING, 20, f"{HANGING} lookups hanging", retry_on=())
            assert client.get("/health", timeout=10).status_code == 200
            assert {answer.result().status_code for answer in answers} == {400}
        finally:
            (dns_faults / "release").touch()


def test_a_busy_host_defers_an_attempt_without_spending_it(redis_factory):
    """WEBHOOK_PER_HOST_CONCURRENCY=1: while one attempt to a host hangs, a second delivery to
    the same host returns at once, its attempt put back on RQ's scheduler, not counted."""
    blackhole = Hostile("blackhole")
    conn = redis.Redis.from_url(redis_factory().url)
    rt = runtime_on(
        conn,
        webhook_secret=SECRET,
        webhook_allowed_hosts=["127.0.0.1"],
        webhook_per_host_concurrency=1,
        webhook_timeout_s=30,
    )
    runtime.install(rt)
    try:
        first = terminal_job_with_callback(rt, blackhole.url)
        second = terminal_job_with_callback(rt, blackhole.url)
        hanging = threading.Thread(target=delivery.deliver, args=first, daemon=True)
        hanging.start()
        wait_until(blackhole.holding, 10, "the first attempt connected", retry_on=())
        done = threading.Event()
        threading.Thread(target=lambda: (delivery.deliver(*second), done.set()), daemon=True).start()
        wait_until(done.is_set, 10, "the second delivery returned", retry_on=())
        assert blackhole.holding() == 1 and len(blackhole.connections) == 1
        assert state.load(conn, second[0]).webhook["attempts"] == 0
        scheduled = ScheduledJobRegistry(keys.WEBHOOK_QUEUE, connection=conn)
        assert [tuple(Job.fetch(i, connection=conn).args) for i in scheduled.get_job_ids()] == [second]
        blackhole.stop()  # the hanging attempt ends (no response): its retry is scheduled too
        hanging.join(30)
        assert state.load(conn, first[0]).webhook == {
            **state.load(conn, first[0]).webhook,
            "attempts": 1,
            "state": "retrying",
            "lastError": "no response",
        }
    finally:
        blackhole.stop()
        runtime.install(None)  # type: ignore[arg-type]
        conn.close()
