"""Put a job on its RQ queue together with its state, in one MULTI/EXEC.

The state hash, the job index, the first event and RQ's own job hash and queue entry commit
together: there is never a queued RQ job without state, nor state for a job that was not queued.
Small jobs and large jobs use separate queues that workers serve round-robin, so a burst of
1,000-file jobs cannot starve the one-file ones (docs/jobs.md).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.exceptions import WatchError
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


class QueueFull(Exception):
    """More than QUEUE_MAX_DEPTH jobs wait: refuse new ones (503) rather than queue forever."""


class TooManyActive(Exception):
    """The client already has PER_CLIENT_MAX_ACTIVE_JOBS unfinished jobs (429)."""


class IdempotencyConflict(Exception):
    """The same Idempotency-Key came with a different body (422)."""


@dataclass(frozen=True)
class Claim:
    """A key that makes repeats of one request return the first request's job.

    With an Idempotency-Key header: that key, per client, for IDEMPOTENCY_TTL_S. Without one:
    the body's fingerprint, per client, for DEDUPE_WINDOW_S, so a retry storm after a dropped
    connection does not multiply work.
    """

    key: str
    fingerprint: str
    ttl_s: int

    @classmethod
    def make(
        cls, settings: Settings, client: str, body: dict[str, Any], idempotency_key: str | None
    ) -> Claim | None:
        fingerprint = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        if idempotency_key:
            digest = hashlib.sha256(idempotency_key.encode()).hexdigest()
            return cls(f"{state.PREFIX}idem:{client}:{digest}", fingerprint, settings.idempotency_ttl_s)
        if settings.dedupe_window_s:
            return cls(f"{state.PREFIX}dedupe:{client}:{fingerprint}", fingerprint, settings.dedupe_window_s)
        return None


async def enqueue(
    aconn: aioredis.Redis,
    conn: redis.Redis,
    settings: Settings,
    job: state.JobRecord,
    claim: Claim | None = None,
) -> str | None:
    """Queue `job`, or return the id of the job an earlier identical request created.

    Runs on the API's event loop with its async client `aconn`; RQ (synchronous) only builds
    its commands, on a pipeline of `conn` that is never sent (no thread pool hop per initiate).
    The claim is checked under WATCH and written in the same MULTI as the job, so two racing
    repeats make one job. Returns None when `job` was queued.
    """
    if settings.queue_max_depth and await _DEPTH.over(aconn, settings.queue_max_depth):
        metrics.JOBS_REJECTED.labels("queue_full").inc()
        raise QueueFull(settings.queue_max_depth)
    while True:
        try:
            return await _enqueue_once(aconn, conn, settings, job, claim)
        except WatchError:
            continue


async def _enqueue_once(
    aconn: aioredis.Redis,
    conn: redis.Redis,
    settings: Settings,
    job: state.JobRecord,
    claim: Claim | None,
) -> str | None:
    with tracing.producer_span(job.queue, job.id):
        # the worker continues this trace (tasks.process_download)
        job.traceparent = job.traceparent or tracing.current_traceparent()
        script = _writes(conn, settings, job, claim)
    async with aconn.pipeline(transaction=True) as pipe:
        if claim:
            await pipe.watch(claim.key)
            existing = await pipe.get(claim.key)
            if existing:
                earlier = json.loads(existing)
                if earlier["fingerprint"] != claim.fingerprint:
                    raise IdempotencyConflict(claim.key)
                return str(earlier["jobId"])
        limit = settings.per_client_max_active_jobs
        if limit and job.client:
            active_key = state.client_active_key(job.client)
            await pipe.watch(active_key)
            if await pipe.zcard(active_key) >= limit:
                await pipe.unwatch()
                if await prune_active(aconn, active_key) >= limit:
                    metrics.JOBS_REJECTED.labels("client_limit").inc()
                    raise TooManyActive(limit)
                raise WatchError  # pruned: count again under WATCH
        pipe.multi()
        pipe.execute_command(*script)
        await pipe.execute()
    metrics.JOBS_ACCEPTED.labels(job.queue).inc()
    _DEPTH.added(aconn)
    return None


def _writes(
    conn: redis.Redis, settings: Settings, job: state.JobRecord, claim: Claim | None
) -> tuple[Any, ...]:
    """Every write of a new job (ours and RQ's own) as one EVAL command.

    RQ's enqueue_call records its commands on a pipeline of the sync client, which is never
    executed: nothing here talks to Redis.
    """
    retry = Retry(max=settings.job_max_retries) if settings.job_max_retries else None
    with conn.pipeline() as writes:
        writes.multi()  # RQ expects a pipeline in MULTI mode
        if claim:
            record = {"jobId": job.id, "fingerprint": claim.fingerprint}
            writes.set(claim.key, json.dumps(record), ex=claim.ttl_s)
        state.queue_create(
            writes, job, settings.job_ttl_s, track_client=bool(settings.per_client_max_active_jobs)
        )
        _queue(job.queue, conn).enqueue_call(
            TASK,
            args=(job.id,),
            job_id=job.id,
            timeout=settings.job_timeout_s,
            result_ttl=600,
            failure_ttl=settings.job_ttl_s,
            retry=retry,
            on_failure=Callback(tasks.on_failure),
            pipeline=writes,
        )
        return _as_one_script(writes)


# Runs the commands packed in ARGV as (count, command, args...)*, in order.
RUN_ALL = """
local i = 1
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return 0
"""


def _as_one_script(pipe: redis.client.Pipeline) -> tuple[Any, ...]:
    """The ~15 queued writes (ours and RQ's own) as one EVAL that runs exactly them.

    Sent inside MULTI/EXEC, under the same WATCH; Redis writes what it would have written
    command by command, but the client packs and parses three commands instead of ~17 (a third
    of an initiate's CPU). Depends on redis-py's `Pipeline.command_stack`.
    """
    packed: list[Any] = []
    for args, _options in pipe.command_stack:
        packed += (len(args), *args)
    return ("EVAL", RUN_ALL, 0, *packed)


async def prune_active(aconn: aioredis.Redis, key: str) -> int:
    """Drop finished or expired jobs from an active-jobs set; returns how many remain.

    Jobs are added when created and only removed here, lazily: a set that is never trusted
    cannot leak a slot when a worker dies before it could say a job ended.
    """
    members = await aconn.zrange(key, 0, -1)
    async with aconn.pipeline(transaction=False) as pipe:
        for member in members:
            pipe.hget(state.job_key(member), "status")
        statuses = await pipe.execute()
    done = [
        m for m, status in zip(members, statuses, strict=True) if status is None or status in state.TERMINAL
    ]
    if done:
        await aconn.zrem(key, *done)
    return len(members) - len(done)


class _RecentDepth:
    """QUEUE_MAX_DEPTH without a Redis read per request (it was one round trip of three).

    A depth read less than DEPTH_MAX_AGE_S ago, plus the jobs this process queued since, is
    trusted while it is under 90% of the limit; closer to the limit every request reads the
    depth again, so the refusal itself stays exact. Other API processes' jobs can go unseen
    for at most DEPTH_MAX_AGE_S while the queue is far from full. Used from the event loop only.
    """

    def __init__(self) -> None:
        self._conn: aioredis.Redis | None = None
        self._read_at = 0.0
        self._depth = 0

    async def over(self, aconn: aioredis.Redis, limit: int) -> bool:
        now = time.monotonic()
        if self._conn is aconn and now - self._read_at < DEPTH_MAX_AGE_S and self._depth < 0.9 * limit:
            return False
        value = await depth(aconn)
        self._conn, self._read_at, self._depth = aconn, now, value
        return value >= limit

    def added(self, aconn: aioredis.Redis) -> None:
        if self._conn is aconn:
            self._depth += 1


DEPTH_MAX_AGE_S = 0.1
_DEPTH = _RecentDepth()


async def depth(aconn: aioredis.Redis) -> int:
    """Jobs waiting across the download queues."""
    async with aconn.pipeline(transaction=False) as pipe:
        for name in QUEUES:
            pipe.llen(Queue.redis_queue_namespace_prefix + name)
        return sum(await pipe.execute())
