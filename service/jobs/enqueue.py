"""Put a job on its RQ queue together with its state, in one MULTI/EXEC.

The state hash, the job index, the first event and RQ's own job hash and queue entry commit
together: there is never a queued RQ job without state, nor state for a job that was not queued.
Small jobs and large jobs use separate queues that workers serve round-robin, so a burst of
1,000-file jobs cannot starve the one-file ones (docs/jobs.md).
"""

from __future__ import annotations

import random
from functools import lru_cache

import redis
from rq import Callback, Queue, Retry

from service.jobs import state, tasks
from service.settings import Settings
from service.telemetry import metrics, tracing

SMALL_QUEUE = "downloads-small"
LARGE_QUEUE = "downloads-large"
QUEUES = (SMALL_QUEUE, LARGE_QUEUE)
TASK = "service.jobs.tasks.process_download"


def queue_name(settings: Settings, file_count: int) -> str:
    return SMALL_QUEUE if file_count <= settings.small_job_max_files else LARGE_QUEUE


@lru_cache(maxsize=8)
def _queue(name: str, conn: redis.Redis) -> Queue:
    return Queue(name, connection=conn)


def retry_intervals(settings: Settings) -> list[int]:
    """Exponential backoff with jitter between whole-job attempts (RQ takes whole seconds)."""
    base = settings.job_retry_base_s
    return [max(1, round(base * 2**n * random.uniform(0.75, 1.25))) for n in range(settings.job_max_retries)]


def enqueue(conn: redis.Redis, settings: Settings, job: state.JobRecord) -> None:
    """Blocking (RQ is synchronous): the API calls it from its thread pool."""
    queue = _queue(job.queue, conn)
    retry = (
        Retry(max=settings.job_max_retries, interval=retry_intervals(settings))
        if settings.job_max_retries
        else None
    )
    with tracing.producer_span(job.queue, job.id), conn.pipeline() as pipe:
        # the worker continues this trace (tasks.process_download)
        job.traceparent = job.traceparent or tracing.current_traceparent()
        pipe.multi()
        state.queue_create(pipe, job, settings.job_ttl_s)
        queue.enqueue_call(
            TASK,
            args=(job.id,),
            job_id=job.id,
            timeout=settings.job_timeout_s,
            result_ttl=600,
            failure_ttl=settings.job_ttl_s,
            retry=retry,
            on_failure=Callback(tasks.on_failure),
            pipeline=pipe,
        )
        pipe.execute()
    metrics.JOBS_ACCEPTED.labels(job.queue).inc()


def depth(conn: redis.Redis) -> int:
    """Jobs waiting across the download queues."""
    with conn.pipeline(transaction=False) as pipe:
        for name in QUEUES:
            pipe.llen(_queue(name, conn).key)
        return sum(pipe.execute())
