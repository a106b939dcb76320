"""Following jobs from tests, the way a polling client does."""

from __future__ import annotations

from typing import Any

import httpx
import redis
from rq.executions import Execution
from rq.job import Job

from service.harness import wait_until

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
    body: dict[str, Any] = {}

    def reached() -> dict[str, Any] | None:
        nonlocal body
        response = client.get(f"/v1/download/status/{job_id}")
        assert response.status_code == 200, response.text
        body = response.json()
        return body if body["status"] in statuses else None

    return wait_until(reached, timeout_s, lambda: f"job {job_id} in {statuses}: {body}", retry_on=())


def plant_execution(conn: redis.Redis, job_id: str, ttl_s: int, worker_name: str) -> Execution:
    """Register an RQ execution of `job_id` as a worker would, without running anything:
    a live one (renew its key) or one whose worker died (let it expire after ttl_s)."""
    job = Job.fetch(job_id, connection=conn)
    with conn.pipeline() as pipe:
        execution = Execution.create(job, ttl_s, pipeline=pipe, worker_name=worker_name)
        pipe.execute()
    return execution
