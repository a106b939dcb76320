"""Accept a job: put it on its RQ queue together with its state, in one script (`ADMIT`).

`submit` is the one call POST /v1/download/initiate makes. The state hash, the job index, the
first event and RQ's own job hash and queue entry commit together: there is never a queued RQ
job without state, nor state for a job that was not queued. Small jobs and large jobs use
separate queues that workers serve round-robin (keys.DOWNLOAD_QUEUES), so a burst of
1,000-file jobs cannot starve the one-file ones (docs/jobs.md). RQ runs `download.run`.

The queue depth is read here too: QUEUE_MAX_DEPTH's check, and the scrape-time collector
behind `delineate_queue_depth` and `delineate_rq_workers` (`QueueCollector`).

With REDIS_MIN_REPLICAS_ACK (1 by default under Sentinel) a new job is answered only once that
many replicas confirmed it (`_confirm`): replication is asynchronous, and a primary that dies
right after the 202 would otherwise take an accepted job with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import redis
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from rq import Callback, Queue, Retry
from rq.worker import Worker

from service import keys
from service.jobs import cancel, download, state
from service.settings import Settings
from service.telemetry import metrics, tracing

if TYPE_CHECKING:
    from service.redis_client import TurnPipeline
    from service.runtime import Runtime

RESULT_TTL_S = 600  # how long RQ keeps a finished job's return value (ours live in the job hash)


def queue_name(settings: Settings, file_count: int) -> str:
    return keys.SMALL_QUEUE if file_count <= settings.small_job_max_files else keys.LARGE_QUEUE


@lru_cache(maxsize=8)
def _queue(name: str, conn: redis.Redis) -> Queue:
    return Queue(name, connection=conn)


class QueueFull(Exception):
    """More than QUEUE_MAX_DEPTH jobs wait: refuse new ones (503) rather than queue forever."""


class TooManyActive(Exception):
    """The client already has PER_CLIENT_MAX_ACTIVE_JOBS unfinished jobs (429)."""


class IdempotencyConflict(Exception):
    """The same Idempotency-Key came with a different body (422)."""


class NotReplicated(Exception):
    """Fewer than REDIS_MIN_REPLICAS_ACK replicas confirmed the new job within
    REDIS_ACK_TIMEOUT_MS (503): the job was withdrawn (cancelled), never half-accepted."""


@dataclass(frozen=True)
class Claim:
    """A key that makes repeats of one request return the first request's job.

    With an Idempotency-Key header: that key, per client, for IDEMPOTENCY_TTL_S. Without one:
    the body's fingerprint, per client, for DEDUPE_WINDOW_S, so a retry storm after a dropped
    connection does not multiply work. A repeat whose job failed or was cancelled starts a new
    job, which the key names from then on.
    """

    key: str
    fingerprint: str
    ttl_s: int

    @classmethod
    def make(
        cls, settings: Settings, client: str, body: dict[str, Any], idempotency_key: str | None
    ) -> Claim | None:
        if not idempotency_key and not settings.dedupe_window_s:
            return None  # no claim: the body's fingerprint would be computed for nothing
        fingerprint = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        if idempotency_key:
            digest = hashlib.sha256(idempotency_key.encode()).hexdigest()
            return cls(keys.idempotency(client, digest), fingerprint, settings.idempotency_ttl_s)
        return cls(keys.dedupe(client, fingerprint), fingerprint, settings.dedupe_window_s)


@dataclass(frozen=True)
class Accepted:
    """What initiate answers: the job (new, or the one an identical earlier request made)."""

    job_id: str
    status: str
    total: int
    replayed: bool  # an earlier request's job (Idempotency-Key or DEDUPE_WINDOW_S)


async def submit(
    rt: Runtime,
    file_ids: list[int],
    *,
    client: str,
    body: dict[str, Any],
    idempotency_key: str | None = None,
    callback_url: str | None = None,
) -> Accepted:
    """Create and queue a job for `file_ids`, unless `body` repeats an earlier request (then
    that job). Raises QueueFull, TooManyActive, IdempotencyConflict or NotReplicated."""
    job = state.JobRecord(
        id=str(uuid.uuid4()),
        status=state.QUEUED,
        file_ids=file_ids,
        created_at=state.now_iso(),
        client=client,
        queue=queue_name(rt.settings, len(file_ids)),
        callback_url=callback_url,
    )
    earlier = await enqueue(rt, job, Claim.make(rt.settings, client, body, idempotency_key))
    if earlier is None:
        return Accepted(job.id, job.status, job.total, replayed=False)
    status = await rt.aredis.hget(keys.job(earlier), "status")
    return Accepted(earlier, status or job.status, job.total, replayed=True)


async def enqueue(rt: Runtime, job: state.JobRecord, claim: Claim | None = None) -> str | None:
    """Queue `job`, or return the id of the job an earlier identical request created.

    Returns None when `job` was queued. One script does it all on the Redis side (`ADMIT`):
    the claim, the client's active-job count (pruned of ended jobs when at the limit) and the
    writes. The earlier version read the claim and the count under WATCH and retried from the
    start whenever a concurrent initiate touched them: 100 concurrent initiates from one client
    all WATCHed one key, and each retry round cost every loser another round trip (2.0 s of API
    CPU against 0.2 s for 100 clients, docs/benchmarks.md). A script runs alone, so two racing
    repeats still make one job and a client never passes its limit, with no retry at all.
    """
    settings = rt.settings
    if settings.queue_max_depth and await _DEPTH.over(rt.batched, settings.queue_max_depth):
        metrics.JOBS_REJECTED.labels("queue_full").inc()
        raise QueueFull(settings.queue_max_depth)
    with tracing.producer_span(job.queue, job.id):
        # the worker continues this trace (download.run)
        job.traceparent = job.traceparent or tracing.current_traceparent()
        hold_back = bool(settings.replicas_ack)
        writes = _writes(rt.redis, settings, job, claim, hold_back=hold_back)
    limit = settings.per_client_max_active_jobs if job.client else 0
    header = (
        claim.key if claim else "",
        claim.fingerprint if claim else "",
        keys.job(""),
        keys.client_active(job.client) if limit else "",
        limit,
    )
    # on the turn's pipeline: a burst's initiates share a round trip, not a connection each
    outcome, *detail = await rt.batched.run_script(ADMIT, [], [*header, *writes])
    if outcome == "conflict":
        raise IdempotencyConflict(claim.key if claim else "")
    if outcome == "limit":
        metrics.JOBS_REJECTED.labels("client_limit").inc()
        raise TooManyActive(limit)
    if outcome == "replay":
        return str(detail[0])
    if hold_back:
        await _confirm(rt, job.id)
        await rt.aredis.execute_command(*_queue_push(job))
    metrics.JOBS_ACCEPTED.labels(job.queue).inc()
    _DEPTH.added(rt.batched)
    return None


async def _confirm(rt: Runtime, job_id: str) -> None:
    """Return once REDIS_MIN_REPLICAS_ACK replicas hold the job; else withdraw it and raise
    NotReplicated. Until then the job is written but on no queue: no worker can start it.

    WAIT counts the replicas that acknowledged the writes of the connection it runs on, and
    the job's script went out on a pooled connection that is gone by now. So a write to the
    job's own hash (re-setting its TTL, a no-op) is sent after it with WAIT behind it in one
    round trip: the replication stream is ordered, so a replica that confirmed this write holds
    the job too. Then the caller pushes the job onto its queue and answers 202. Should that
    push be lost in a failover, the job's confirmed state is in no queue and no registry, which
    the reaper requeues (jobs/reaper.py). Redis lost during the wait or the push: a 503 too
    (RedisError), and the job is left to the reaper, which runs it; a retry with the same
    Idempotency-Key (or within DEDUPE_WINDOW_S) gets that job back.

    Unconfirmed in time, the job is cancelled, so it never runs (it was never queued) and its
    state says what happened, and the client gets a 503 and retries: a repeat with the same
    Idempotency-Key (or within DEDUPE_WINDOW_S) makes a new job, as after any cancelled one.
    Queued at once instead, a worker could have run it within the wait (seen: a 200 ms
    download completed before the 503) for a client that was told it was refused.
    """
    settings = rt.settings
    async with rt.aredis.pipeline(transaction=False) as pipe:
        pipe.expire(keys.job(job_id), settings.job_ttl_s)
        pipe.execute_command("WAIT", settings.replicas_ack, settings.redis_ack_timeout_ms)
        _, acked = await pipe.execute()
    if acked >= settings.replicas_ack:
        return
    metrics.JOBS_REJECTED.labels("not_replicated").inc()
    with contextlib.suppress(cancel.AlreadyFinished):
        await asyncio.to_thread(cancel.request, rt, job_id)
    raise NotReplicated(acked)


def _queue_push(job: state.JobRecord) -> tuple[str, ...]:
    """RQ's own command that puts a new job on its queue (`Queue.push_job_id`)."""
    return ("RPUSH", keys.rq_queue(job.queue), job.id)


def _writes(
    conn: redis.Redis, settings: Settings, job: state.JobRecord, claim: Claim | None, *, hold_back: bool
) -> list[Any]:
    """Every write of a new job (ours and RQ's own), packed as ADMIT's ARGV tail; with
    `hold_back`, all but the push onto its queue (`_queue_push`, sent once replicas confirmed
    the rest).

    RQ's enqueue_call records its commands on a pipeline of the sync client, which is never
    executed: nothing here talks to Redis. Packing them for one script, rather than sending
    them command by command, saves the client packing and parsing a reply per write, which
    dominated an initiate's CPU (docs/benchmarks.md). Depends on redis-py's
    `Pipeline.command_stack`.
    """
    retry = Retry(max=settings.job_max_retries) if settings.job_max_retries else None
    with conn.pipeline() as pipe:
        pipe.multi()  # RQ expects a pipeline in MULTI mode
        if claim:
            record = {"jobId": job.id, "fingerprint": claim.fingerprint}
            pipe.set(claim.key, json.dumps(record), ex=claim.ttl_s)
        state.queue_create(
            pipe, job, settings.job_ttl_s, track_client=bool(settings.per_client_max_active_jobs)
        )
        _queue(job.queue, conn).enqueue_call(
            download.run,
            args=(job.id,),
            job_id=job.id,
            timeout=settings.job_timeout_s,
            result_ttl=RESULT_TTL_S,
            failure_ttl=settings.job_ttl_s,
            retry=retry,
            on_failure=Callback(download.on_failure),
            pipeline=pipe,
        )
        if hold_back:
            push = [i for i, (args, _) in enumerate(pipe.command_stack) if args == _queue_push(job)]
            if len(push) != 1:
                raise RuntimeError(f"RQ's enqueue no longer pushes with {_queue_push(job)[0]}")
            del pipe.command_stack[push[0]]
        packed: list[Any] = []
        for args, _options in pipe.command_stack:
            packed += (len(args), *args)
        return packed


# ARGV: claim key ("" = none), the body's fingerprint, the job key prefix, the client's
# active-jobs key ("" = no limit), the limit, then the job's writes as (count, command,
# args...)*. Answers {"conflict"}, {"replay", job id}, {"limit"} or {"queued"}.
# A repeat gets the earlier job back unless that job failed, was cancelled or is gone (a
# client retrying after an outage wants a new attempt); then the claim, rewritten by the
# writes, names the new job from now on. The active set is only trusted up to the limit:
# at the limit, ended or expired jobs are dropped from it and the rest counted again.
ADMIT = f"""
local claim_key, fingerprint, job_prefix, active_key = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local limit = tonumber(ARGV[5])
local ended = {{{", ".join(f"[{json.dumps(s)}] = true" for s in sorted(state.TERMINAL))}}}
if claim_key ~= "" then
  local existing = redis.call("GET", claim_key)
  if existing then
    local earlier = cjson.decode(existing)
    if earlier["fingerprint"] ~= fingerprint then
      return {{"conflict"}}
    end
    local status = redis.call("HGET", job_prefix .. earlier["jobId"], "status")
    if status and status ~= {json.dumps(state.FAILED)} and status ~= {json.dumps(state.CANCELLED)} then
      return {{"replay", earlier["jobId"]}}
    end
  end
end
if active_key ~= "" and redis.call("ZCARD", active_key) >= limit then
  local live = 0
  for _, member in ipairs(redis.call("ZRANGE", active_key, 0, -1)) do
    local status = redis.call("HGET", job_prefix .. member, "status")
    if status == false or ended[status] then
      redis.call("ZREM", active_key, member)
    else
      live = live + 1
    end
  end
  if live >= limit then
    return {{"limit"}}
  end
end
local i = 6
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return {{"queued"}}
"""


class _RecentDepth:
    """QUEUE_MAX_DEPTH without a Redis read per request.

    A depth read less than DEPTH_MAX_AGE_S ago, plus the jobs this process queued since, is
    trusted while it is under 90% of the limit; closer to the limit every request reads the
    depth again, so the refusal itself stays exact. Other API processes' jobs can go unseen
    for at most DEPTH_MAX_AGE_S while the queue is far from full. Used from the event loop only.
    The reads go on the turn's pipeline: the first burst after a quiet spell reads the depth
    once per request, and one connection each made 43 of 100 concurrent initiates open one.
    """

    def __init__(self) -> None:
        self._batched: TurnPipeline | None = None
        self._read_at = 0.0
        self._depth = 0

    async def over(self, batched: TurnPipeline, limit: int) -> bool:
        now = time.monotonic()
        if self._batched is batched and now - self._read_at < DEPTH_MAX_AGE_S and self._depth < 0.9 * limit:
            return False
        lengths = [batched.submit("LLEN", keys.rq_queue(name)) for name in keys.DOWNLOAD_QUEUES]
        value = sum(await asyncio.gather(*lengths))
        self._batched, self._read_at, self._depth = batched, now, value
        return value >= limit

    def added(self, batched: TurnPipeline) -> None:
        if self._batched is batched:
            self._depth += 1


DEPTH_MAX_AGE_S = 0.1
_DEPTH = _RecentDepth()


RQ_WORKER_STATES = ("busy", "idle", "started", "suspended")


class QueueCollector(Collector):
    """Per scrape, from Redis: LLEN of each download queue, RQ's registered workers by state,
    and Redis's memory against its maxmemory (with `noeviction` a full Redis refuses new jobs).

    Errors yield no samples: a scrape must not fail because Redis is down (the API's own
    metrics matter most then).
    """

    def __init__(self, conn: redis.Redis) -> None:
        self.conn = conn

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            with self.conn.pipeline(transaction=False) as pipe:
                for name in keys.DOWNLOAD_QUEUES:
                    pipe.llen(keys.rq_queue(name))
                pipe.info("memory")
                *depths, memory = pipe.execute()
            workers = Worker.all(connection=self.conn)
            states = [str(getattr(w.get_state(), "value", w.get_state())) for w in workers]
        except Exception:  # Redis unreachable: export nothing rather than fail the scrape
            return
        depth = GaugeMetricFamily("delineate_queue_depth", "Jobs waiting in each RQ queue.", labels=["queue"])
        for name, value in zip(keys.DOWNLOAD_QUEUES, depths, strict=True):
            depth.add_metric([name], value)
        yield depth
        family = GaugeMetricFamily(
            "delineate_rq_workers",
            "Workers registered in RQ, by state (busy = running >= 1 job).",
            labels=["state"],
        )
        for worker_state in sorted({*RQ_WORKER_STATES, *states}):
            family.add_metric([worker_state], states.count(worker_state))
        yield family
        yield GaugeMetricFamily(
            "delineate_redis_memory_used_bytes", "Redis used_memory.", value=memory["used_memory"]
        )
        yield GaugeMetricFamily(
            "delineate_redis_memory_max_bytes",
            "Redis maxmemory (0: no limit, then the host's memory is).",
            value=memory["maxmemory"],
        )
