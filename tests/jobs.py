"""Starting and following jobs from tests, through the Python client (service.client)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import redis
from rq.executions import Execution
from rq.job import Job

from service import client as delineate
from service import keys
from service.harness import wait_until
from service.jobs import enqueue, state
from service.runtime import Runtime
from service.settings import load_settings

TERMINAL = {"completed", "failed", "cancelled"}


def api(client: httpx.Client, **options: Any) -> delineate.Client:
    """The Python client (service.client) configured as a test's httpx client: its base URL,
    headers and event hooks (a test may give each request its own client address), plus
    `options`. No retries: a test sees every answer as it came, and initiate sends no
    Idempotency-Key unless the test gives one."""
    headers = {**client.headers, **options.pop("headers", {})}
    hooks = client.event_hooks
    return delineate.Client(str(client.base_url), retries=0, headers=headers, event_hooks=hooks, **options)


def initiate(client: httpx.Client, file_ids: list[int], **kwargs: Any) -> str:
    """Start a job through the Python client; `kwargs` are httpx options (headers=...)."""
    with api(client, **kwargs) as jobs:
        return jobs.initiate(file_ids).job_id


def initiate_json(client: httpx.Client, body: dict[str, Any]) -> str:
    """Initiate with a callbackUrl (or without); the job id."""
    with api(client) as jobs:
        return jobs.initiate(body["file_ids"], callback_url=body.get("callbackUrl")).job_id


def wait_for(
    client: httpx.Client, job_id: str, statuses: set[str] = TERMINAL, timeout_s: float = 30
) -> dict[str, Any]:
    """Poll until the job's status is in `statuses` (any, not only an end: `wait` is for ends);
    return the last status body."""
    body: dict[str, Any] = {}

    def reached() -> dict[str, Any] | None:
        nonlocal body
        body = jobs.status(job_id).body
        return body if body["status"] in statuses else None

    with api(client) as jobs:
        return wait_until(reached, timeout_s, lambda: f"job {job_id} in {statuses}: {body}", retry_on=())


def plant_execution(conn: redis.Redis, job_id: str, ttl_s: int, worker_name: str) -> Execution:
    """Register an RQ execution of `job_id` as a worker would, without running anything:
    a live one (renew its key) or one whose worker died (let it expire after ttl_s)."""
    job = Job.fetch(job_id, connection=conn)
    with conn.pipeline() as pipe:
        execution = Execution.create(job, ttl_s, pipeline=pipe, worker_name=worker_name)
        pipe.execute()
    return execution


def runtime_on(conn: redis.Redis, **overrides: object) -> Runtime:
    """A process runtime on the Redis `conn` talks to, with fast clocks (for in-process tests)."""
    url = "redis://{host}:{port}/0".format(**conn.connection_pool.connection_kwargs)
    values: dict[str, object] = {
        "redis_url": url,
        "worker_heartbeat_s": 1,
        "reaper_interval_s": 1,
        "job_max_retries": 2,
    }
    return Runtime.open(load_settings(**{**values, **overrides}), s3_pool_size=1)


def create_job(rt: Runtime) -> str:
    """A job as the API creates it: state, index entries and RQ job on its queue, one MULTI."""
    job = state.JobRecord(
        id=str(uuid.uuid4()),
        status=state.QUEUED,
        file_ids=[70000],
        created_at=state.now_iso(),
        client="127.0.0.1",
        queue=keys.SMALL_QUEUE,
    )

    async def create() -> str | None:
        # a fresh async client for this event loop (asyncio.run makes one per call)
        loop_rt = Runtime.open(rt.settings, s3_pool_size=1)
        try:
            return await enqueue.enqueue(loop_rt, job)
        finally:
            await loop_rt.aclose()

    assert asyncio.run(create()) is None
    return job.id
