"""Following jobs from tests, the way a polling client does."""

from __future__ import annotations

import time
from typing import Any

import httpx
import redis
from rq.executions import Execution
from rq.job import Job

TERMINAL = {"completed", "failed", "cancelled"}


def initiate(client: httpx.Client, file_ids: list[int], **kwargs: Any) -> str:
    response = client.post("/v1/download/initiate", json={"file_ids": file_ids}, **kwargs)
    assert response.status_code == 202, response.text
    return response.json()["jobId"]


def initiate_json(client: httpx.Client, body: dict[str, Any]) -> str:
    """Initiate with any body (a callbackUrl, ...); the job id."""
    response = client.post("/v1/download/initiate", json=body)
    assert response.status_code == 202, response.text
    return response.json()["jobId"]


def wait_for(
    client: httpx.Client, job_id: str, statuses: set[str] = TERMINAL, timeout_s: float = 30
) -> dict[str, Any]:
    """Poll until the job's status is in `statuses`; return the last status body."""
    deadline = time.monotonic() + timeout_s
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = client.get(f"/v1/download/status/{job_id}")
        assert response.status_code == 200, response.text
        body = response.json()
        if body["status"] in statuses:
            return body
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not in {statuses} after {timeout_s} s: {body}")


def plant_execution(conn: redis.Redis, job_id: str, ttl_s: int, worker_name: str) -> Execution:
    """Register an RQ execution of `job_id` as a worker would, without running anything:
    a live one (renew its key) or one whose worker died (let it expire after ttl_s)."""
    job = Job.fetch(job_id, connection=conn)
    with conn.pipeline() as pipe:
        execution = Execution.create(job, ttl_s, pipeline=pipe, worker_name=worker_name)
        pipe.execute()
    return execution
