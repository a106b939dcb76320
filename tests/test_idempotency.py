"""No duplicate work, no lost request: Idempotency-Key, the de-duplication window, backpressure."""

from __future__ import annotations

import itertools
import threading

import pytest
import redis

from service import keys
from tests.jobs import initiate, wait_for


@pytest.mark.slow
def test_same_key_same_body_returns_the_original_job_and_other_body_is_422(make_stack):
    stack = make_stack()
    with stack.client() as client:
        headers = {"Idempotency-Key": "order-42"}
        first = client.post("/v1/download/initiate", json={"file_ids": [70000]}, headers=headers)
        again = client.post("/v1/download/initiate", json={"file_ids": [70000]}, headers=headers)
        assert first.status_code == again.status_code == 202
        assert again.json()["jobId"] == first.json()["jobId"]
        assert again.headers["idempotent-replayed"] == "true"
        other = client.post("/v1/download/initiate", json={"file_ids": [70007]}, headers=headers)
        assert other.status_code == 422 and other.json()["requestId"]
        fresh = client.post(
            "/v1/download/initiate", json={"file_ids": [70000]}, headers={"Idempotency-Key": "x"}
        )
        assert fresh.json()["jobId"] != first.json()["jobId"]
        bad = client.post(
            "/v1/download/initiate", json={"file_ids": [70000]}, headers={"Idempotency-Key": "x" * 300}
        )
        assert bad.status_code == 400
        wait_for(client, first.json()["jobId"])
        after = client.post("/v1/download/initiate", json={"file_ids": [70000]}, headers=headers)
        assert after.json()["jobId"] == first.json()["jobId"] and after.json()["status"] == "completed"


@pytest.mark.parametrize("ending", ["failed", "cancelled"])
def test_a_repeat_after_a_failed_or_cancelled_job_starts_a_new_one(make_stack, ending):
    """A client retrying after an outage wants a new attempt, not the old failure for a day."""
    stack = make_stack(DOWNLOAD_DELAY_MIN_MS="2000", DOWNLOAD_DELAY_MAX_MS="2000")
    body = {"file_ids": [12345]} if ending == "failed" else {"file_ids": [70000]}  # 12345 does not exist
    headers = {"Idempotency-Key": f"retry-after-{ending}"}
    with stack.client() as client:
        first = client.post("/v1/download/initiate", json=body, headers=headers).json()["jobId"]
        if ending == "cancelled":
            assert client.delete(f"/v1/download/{first}").status_code == 200
        assert wait_for(client, first)["status"] == ending
        again = client.post("/v1/download/initiate", json=body, headers=headers)
        assert again.status_code == 202 and "idempotent-replayed" not in again.headers
        second = again.json()["jobId"]
        assert second != first and again.json()["status"] == "queued"
        replay = client.post("/v1/download/initiate", json=body, headers=headers)
        assert replay.json()["jobId"] == second, "the key names the new job from then on"
        assert replay.headers["idempotent-replayed"] == "true"
        assert client.get(f"/v1/download/status/{first}").json()["status"] == ending, "kept as it was"


def test_keys_are_scoped_per_client(make_stack):
    stack = make_stack(TRUSTED_PROXIES="127.0.0.1/32")
    with stack.client() as client:
        body, key = {"file_ids": [70000]}, {"Idempotency-Key": "same-key"}
        a = client.post(
            "/v1/download/initiate", json=body, headers={**key, "X-Forwarded-For": "198.51.100.1"}
        )
        b = client.post(
            "/v1/download/initiate", json=body, headers={**key, "X-Forwarded-For": "198.51.100.2"}
        )
        assert a.json()["jobId"] != b.json()["jobId"]


@pytest.mark.slow
def test_retry_storm_without_a_key_makes_one_job(make_stack):
    stack = make_stack(DEDUPE_WINDOW_S="10", DOWNLOAD_DELAY_MIN_MS="1000", DOWNLOAD_DELAY_MAX_MS="1000")
    ids: list[str] = []
    with stack.client() as client:

        def send() -> None:
            with stack.client() as own:
                ids.append(
                    own.post("/v1/download/initiate", json={"file_ids": [70014, 70021]}).json()["jobId"]
                )

        threads = [threading.Thread(target=send) for _ in range(25)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(ids) == 25 and len(set(ids)) == 1
        conn = redis.Redis.from_url(stack.env["REDIS_URL"])
        assert conn.zcard(keys.JOB_INDEX) == 1
        assert wait_for(client, ids[0])["status"] == "completed"
        different = client.post("/v1/download/initiate", json={"file_ids": [70014]}).json()["jobId"]
        assert different != ids[0]


@pytest.mark.slow
def test_queue_over_its_maximum_depth_answers_503_and_creates_nothing(make_stack):
    stack = make_stack(workers=0, QUEUE_MAX_DEPTH="3")
    with stack.client() as client:
        accepted = [client.post("/v1/download/initiate", json={"file_ids": [70000 + i]}) for i in range(3)]
        assert [r.status_code for r in accepted] == [202] * 3
        refused = client.post("/v1/download/initiate", json={"file_ids": [70063]})
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
        assert refused.json()["requestId"] == refused.headers["x-request-id"]
        conn = redis.Redis.from_url(stack.env["REDIS_URL"])
        assert conn.zcard(keys.JOB_INDEX) == 3
        stack.add_worker()
        for response in accepted:
            assert wait_for(client, response.json()["jobId"])["status"] in {"completed", "failed"}
        assert client.post("/v1/download/initiate", json={"file_ids": [70063]}).status_code == 202
        metrics = client.get("/metrics").text
        assert 'delineate_jobs_rejected_total{reason="queue_full"} 1.0' in metrics


def test_a_client_over_its_active_job_limit_gets_429_until_one_finishes(make_stack):
    stack = make_stack(workers=0, PER_CLIENT_MAX_ACTIVE_JOBS="2", TRUSTED_PROXIES="127.0.0.1/32")
    with stack.client() as client:
        alice = {"X-Forwarded-For": "203.0.113.7"}
        first, second = (
            client.post("/v1/download/initiate", json={"file_ids": [70000 + i]}, headers=alice)
            for i in (0, 7)
        )
        assert first.status_code == second.status_code == 202
        refused = client.post("/v1/download/initiate", json={"file_ids": [70014]}, headers=alice)
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert "PER_CLIENT_MAX_ACTIVE_JOBS" in refused.json()["message"] and refused.json()["requestId"]
        bob = client.post(
            "/v1/download/initiate", json={"file_ids": [70014]}, headers={"X-Forwarded-For": "203.0.113.8"}
        )
        assert bob.status_code == 202, "the limit is per client"
        assert client.delete(f"/v1/download/{first.json()['jobId']}").status_code == 200
        assert (
            client.post("/v1/download/initiate", json={"file_ids": [70014]}, headers=alice).status_code == 202
        )
        assert 'delineate_jobs_rejected_total{reason="client_limit"} 1.0' in client.get("/metrics").text


@pytest.mark.slow
def test_small_and_large_jobs_take_turns_so_neither_starves_the_other(make_stack):
    """Fairness (docs/jobs.md): separate queues by size, served round-robin. One download slot,
    three large jobs queued before three small ones: one FIFO queue would run the three large
    first, small-first priority the three small first; round-robin alternates."""
    stack = make_stack(
        workers=0, WORKER_CONCURRENCY="1", SMALL_JOB_MAX_FILES="1", DOWNLOAD_DELAY_MIN_MS="200"
    )
    with stack.client() as client:
        large = [initiate(client, [70000 + 14 * i, 70007 + 14 * i]) for i in range(3)]
        small = [initiate(client, [70042 + 7 * i]) for i in range(3)]
        stack.add_worker()
        bodies = {job_id: wait_for(client, job_id, timeout_s=60) for job_id in [*large, *small]}
    assert {body["status"] for body in bodies.values()} == {"completed"}
    order = sorted(bodies, key=lambda job_id: bodies[job_id]["startedAt"])
    kinds = ["large" if job_id in large else "small" for job_id in order]
    assert all(one != next_ for one, next_ in itertools.pairwise(kinds)), kinds
