"""The reaper: no accepted job stays unfinished forever, whatever died where.

RQ's abandoned-job handling (`StartedJobRegistry.cleanup`) retries a job whose worker died
while it ran, but only while RQ's status says `started`. A worker killed between dequeue and
`perform_job` leaves a job whose status is still `queued`: cleanup drops its registry entry and
the job is then in no queue and no registry, and nothing would ever run it again. So the reaper
walks our own index of unfinished jobs (`keys.ACTIVE`) and asks, for each one, who owns it:

- finished or expired in our state: drop it from the index (the index is pruned lazily);
- RQ's status is `failed` (final) but ours is not: finish it `failed` with RQ's reason;
- running (a live execution in StartedJobRegistry) longer than its timeout plus a margin: finish
  it `failed`, "stuck beyond timeout" (not requeued: a live execution still holds it);
- in its queue, scheduled, deferred, running, or abandoned while `started` (RQ's own cleanup
  retries those): owned, nothing to do;
- an expired execution entry while RQ still says `queued` (the worker died between
  registering the execution and starting the job, the case RQ's cleanup skips): abandoned,
  resolved at once (below);
- otherwise a suspect, remembered with the time it was first seen. A suspect still unowned
  SUSPECT_GRACE later (two heartbeats: far longer than a worker spends between dequeue and
  registering the execution) is resolved: requeued through RQ while it has retries left
  (spending one, so a job that kills its workers cannot loop), else finished `failed` with
  the reason.

Each pass also trims the job index (`keys.JOB_INDEX`, kept for 410 answers) of ids whose jobs
expired more than INDEX_KEPT_S ago: Redis runs with `noeviction`, so nothing may grow forever.

The scan reads in bulk and may see a job mid-move; every action re-checks that one job first,
and a requeue commits under WATCH on the job and its executions, so the reaper never races RQ
or a slow worker into running a job twice. Every state change goes through jobs/lifecycle.py.
Every worker calls `reap` every REAPER_INTERVAL_S; a SET NX PX lock lets one of them do the
work per interval.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import redis
from rq.exceptions import NoSuchJobError
from rq.executions import ExecutionRegistry
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import DeferredJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.results import Result

from service import keys
from service.jobs import lifecycle, lock, state
from service.settings import Settings
from service.telemetry import metrics
from service.telemetry.logging import get_logger

if TYPE_CHECKING:
    from service.runtime import Runtime

CHUNK = 500
MAX_WATCH_TRIES = 5

log = get_logger("service.jobs.reaper")


@dataclass
class ReapReport:
    """What one pass did; `ran` is False when another worker held the lock."""

    ran: bool = False
    checked: int = 0
    pruned: int = 0
    suspects: list[str] = field(default_factory=list)  # seen unowned, still within the grace
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    forgotten: int = 0  # ids trimmed from the job index (state.INDEX_KEPT_S)


def suspect_grace_s(settings: Settings) -> float:
    """How long a job may look unowned before the reaper acts: two worker heartbeats."""
    return 2.0 * settings.worker_heartbeat_s


def timeout_margin_s(settings: Settings) -> float:
    """Slack past a job's timeout before it counts as stuck (its death penalty should fire)."""
    return lock.lease_s(settings.worker_heartbeat_s) + 2.0 * settings.reaper_interval_s


def reap(rt: Runtime, now: float | None = None) -> ReapReport:
    """One pass over the active-job index, by whichever worker takes the lock.

    `now` (unix time, default the clock) is the moment the pass judges at: tests run a pass
    "later" instead of sleeping through a grace period.
    """
    conn, settings = rt.redis, rt.settings
    now = time.time() if now is None else now
    report = ReapReport()
    lock_ms = max(settings.reaper_interval_s * 1000 - 250, 500)
    if not conn.set(keys.REAPER_LOCK, "1", nx=True, px=lock_ms):
        return report
    report.ran = True
    ids = [state.text(member) for member in conn.zrange(keys.ACTIVE, 0, -1)]
    suspects = {state.text(k): float(v) for k, v in conn.hgetall(keys.REAPER_SUSPECTS).items()}
    owners = _Owners(conn)
    for start in range(0, len(ids), CHUNK):
        _scan(rt, ids[start : start + CHUNK], suspects, owners, report, now)
    gone = set(suspects) - set(ids)
    if gone:
        conn.hdel(keys.REAPER_SUSPECTS, *gone)
    report.forgotten = _forget_expired(conn, settings, now)
    return report


def _forget_expired(conn: redis.Redis, settings: Settings, now: float) -> int:
    """Drop ids from the job index once their jobs expired INDEX_KEPT_S ago (then 404, not 410)."""
    return int(conn.zremrangebyscore(keys.JOB_INDEX, "-inf", now - settings.job_ttl_s - state.INDEX_KEPT_S))


class _Owners:
    """Snapshot of what RQ holds, per queue, read once per pass and only for queues in use."""

    def __init__(self, conn: redis.Redis) -> None:
        self.conn = conn
        self._held: dict[str, set[str]] = {}
        self._running: dict[str, dict[str, float]] = {}

    def _load(self, origin: str) -> None:
        queue = Queue(origin, connection=self.conn)
        with self.conn.pipeline(transaction=False) as pipe:
            pipe.lrange(queue.key, 0, -1)
            pipe.lrange(queue.intermediate_queue_key, 0, -1)
            pipe.zrange(ScheduledJobRegistry(origin, connection=self.conn).key, 0, -1)
            pipe.zrange(DeferredJobRegistry(origin, connection=self.conn).key, 0, -1)
            pipe.zrange(StartedJobRegistry(origin, connection=self.conn).key, 0, -1, withscores=True)
            queued, intermediate, scheduled, deferred, started = pipe.execute()
        self._held[origin] = {state.text(m) for m in [*queued, *intermediate, *scheduled, *deferred]}
        running: dict[str, float] = {}
        for member, expires in started:
            job_id = state.text(member).split(":", 1)[0]
            running[job_id] = max(running.get(job_id, 0.0), float(expires))
        self._running[origin] = running

    def held(self, origin: str, job_id: str) -> bool:
        """Waiting in RQ: queued, scheduled or deferred."""
        if origin not in self._held:
            self._load(origin)
        return job_id in self._held[origin]

    def execution_expires(self, origin: str, job_id: str) -> float | None:
        """When the job's latest execution entry in StartedJobRegistry expires (None: no entry)."""
        if origin not in self._running:
            self._load(origin)
        return self._running[origin].get(job_id)


def _scan(
    rt: Runtime,
    ids: list[str],
    suspects: dict[str, float],
    owners: _Owners,
    report: ReapReport,
    now: float,
) -> None:
    conn, settings = rt.redis, rt.settings
    with conn.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(keys.job(job_id), "status")
        statuses = [None if s is None else state.text(s) for s in pipe.execute()]
    rq_jobs = Job.fetch_many(ids, connection=conn)
    finished: list[str] = []
    cleared: list[str] = []
    for job_id, status, rq_job in zip(ids, statuses, rq_jobs, strict=True):
        report.checked += 1
        if status is None or status in state.TERMINAL:
            finished.append(job_id)
            continue
        verdict = _verdict(rq_job, owners, now, settings)
        if verdict == "owned":
            if job_id in suspects:
                cleared.append(job_id)
        elif verdict == "rq_failed":
            assert rq_job is not None
            _fail(rt, job_id, rq_job, "rq_failed", _rq_reason(rq_job), report)
        elif verdict == "timeout":
            assert rq_job is not None and rq_job.started_at is not None
            ran = now - rq_job.started_at.timestamp()
            reason = f"stuck beyond timeout: running {ran:.0f} s, timeout {_timeout(rq_job, settings)} s"
            _fail(rt, job_id, rq_job, "timeout", reason, report)
        elif verdict == "abandoned":
            _resolve(rt, job_id, report, now)
        elif job_id not in suspects:
            conn.hset(keys.REAPER_SUSPECTS, job_id, str(now))
            report.suspects.append(job_id)
        elif now - suspects[job_id] < suspect_grace_s(settings):
            report.suspects.append(job_id)
        else:
            _resolve(rt, job_id, report, now)
    if finished:
        conn.zrem(keys.ACTIVE, *finished)
        report.pruned += len(finished)
        cleared += [job_id for job_id in finished if job_id in suspects]
    if cleared:
        conn.hdel(keys.REAPER_SUSPECTS, *cleared)


def _verdict(rq_job: Job | None, owners: _Owners, now: float, settings: Settings) -> str:
    """owned | suspect | abandoned | rq_failed | timeout, from the pass's snapshot."""
    if rq_job is None:
        return "suspect"
    rq_status = rq_job.get_status(refresh=False)
    if rq_status == JobStatus.FAILED:
        return "rq_failed"
    origin = rq_job.origin
    expires = owners.execution_expires(origin, rq_job.id)
    if expires is not None and expires > now:
        started = rq_job.started_at
        limit = _timeout(rq_job, settings) + timeout_margin_s(settings)
        if rq_status == JobStatus.STARTED and started and now - started.timestamp() > limit:
            return "timeout"
        return "owned"
    if owners.held(origin, rq_job.id):
        return "owned"
    if expires is not None:
        if rq_status == JobStatus.STARTED:
            return "owned"  # abandoned while started: RQ's StartedJobRegistry.cleanup retries it
        return "abandoned"  # its execution existed and stopped beating: no grace needed
    return "suspect"


def _owned_now(conn: redis.Redis, rq_job: Job, now: float) -> bool:
    """The precise, single-job version of `_verdict`'s ownership test, read right now."""
    origin = rq_job.origin
    queue = Queue(origin, connection=conn)
    if conn.lpos(queue.key, rq_job.id) is not None:
        return True
    if conn.lpos(queue.intermediate_queue_key, rq_job.id) is not None:
        return True
    for registry in (ScheduledJobRegistry, DeferredJobRegistry):
        if conn.zscore(registry(origin, connection=conn).key, rq_job.id) is not None:
            return True
    entries = _registry_entries(conn, origin, rq_job.id)
    if any(expires > now for _, expires in entries):
        return True
    return bool(entries) and rq_job.get_status(refresh=True) == JobStatus.STARTED


def _registry_entries(conn: redis.Redis, origin: str, job_id: str) -> list[tuple[bytes, float]]:
    key = StartedJobRegistry(origin, connection=conn).key
    return [(m, float(s)) for m, s in conn.zscan_iter(key, match=f"{job_id}:*")]


def _resolve(rt: Runtime, job_id: str, report: ReapReport, now: float) -> None:
    """Act on a suspect past its grace: requeue it through RQ, or fail it."""
    conn = rt.redis
    try:
        rq_job: Job | None = Job.fetch(job_id, connection=conn)
    except NoSuchJobError:
        rq_job = None
    if rq_job is None:
        _fail(rt, job_id, None, "rq_missing", "the queue lost the job (RQ job missing)", report)
        return
    if rq_job.retries_left and rq_job.retries_left > 0:
        outcome = _requeue(rt, job_id, now)
        if outcome == "requeued":
            report.requeued.append(job_id)
            metrics.JOBS_REAPED.labels("requeued", "orphaned").inc()
            log.warning("job_reaped", job_id=job_id, action="requeued", reason="orphaned")
        elif outcome == "owned":
            conn.hdel(keys.REAPER_SUSPECTS, job_id)
        return
    if _owned_now(conn, rq_job, now):
        conn.hdel(keys.REAPER_SUSPECTS, job_id)
        return
    reason = "the worker running the job was lost and no retries are left"
    _fail(rt, job_id, rq_job, "orphaned", reason, report)


def _requeue(rt: Runtime, job_id: str, now: float) -> str:
    """Requeue at the front, spending one RQ retry; 'requeued' | 'owned' | 'finished' | 'busy'.

    WATCH covers our state, RQ's job hash and the job's execution registry: a retry by RQ, a
    cancel, or a slow worker creating an execution after the re-check aborts the MULTI.
    """
    conn = rt.redis
    our_key = keys.job(job_id)
    watched = (our_key, Job.key_for(job_id), ExecutionRegistry(job_id, connection=conn).key)
    with conn.pipeline() as pipe:
        for _ in range(MAX_WATCH_TRIES):
            try:
                pipe.watch(*watched)
                status = pipe.hget(our_key, "status")
                if status is None or state.text(status) in state.TERMINAL:
                    pipe.unwatch()
                    return "finished"
                try:
                    rq_job = Job.fetch(job_id, connection=conn)
                except NoSuchJobError:
                    pipe.unwatch()
                    return "busy"  # gone meanwhile: the next pass fails it
                if _owned_now(conn, rq_job, now):
                    pipe.unwatch()
                    return "owned"
                stale = [member for member, _ in _registry_entries(conn, rq_job.origin, job_id)]
                pipe.multi()
                rq_job.retries_left = (rq_job.retries_left or 1) - 1
                Queue(rq_job.origin, connection=conn).enqueue_job(rq_job, pipeline=pipe, at_front=True)
                if stale:
                    pipe.zrem(rq_job.started_job_registry.key, *stale)
                if state.text(status) == state.PROCESSING:
                    lifecycle.stage_retrying(
                        pipe, rt, job_id, "the worker running the job was lost; requeued"
                    )
                pipe.hdel(keys.REAPER_SUSPECTS, job_id)
                pipe.execute()
                return "requeued"
            except redis.WatchError:
                continue
    return "busy"


def _fail(rt: Runtime, job_id: str, rq_job: Job | None, why: str, reason: str, report: ReapReport) -> None:
    """Finish the job `failed` through the one door; mirror it in RQ's failed registry."""
    conn = rt.redis
    conn.hdel(keys.REAPER_SUSPECTS, job_id)
    try:
        lifecycle.finish(rt, job_id, status=state.FAILED, error=reason[:500])
    except lifecycle.JobGone:
        return  # it ended meanwhile: nothing to reap
    report.failed.append(job_id)
    metrics.JOBS_REAPED.labels("failed", why).inc()
    log.warning("job_reaped", job_id=job_id, action="failed", reason=why, error=reason)
    if rq_job is None:
        return
    if rq_job.get_status(refresh=False) != JobStatus.FAILED and why != "timeout":
        with conn.pipeline() as pipe:
            rq_job.set_status(JobStatus.FAILED, pipeline=pipe)
            rq_job.failed_job_registry.add(rq_job, ttl=rq_job.failure_ttl, exc_string=reason, pipeline=pipe)
            Result.create_failure(rq_job, rq_job.failure_ttl, exc_string=reason, pipeline=pipe)
            pipe.execute()


def _rq_reason(rq_job: Job) -> str:
    """RQ's recorded failure, last line of the traceback (the exception itself)."""
    result = rq_job.latest_result()
    text = (result.exc_string if result is not None else None) or ""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return f"failed in RQ: {lines[-1].strip()}" if lines else "failed in RQ (no reason recorded)"


def _timeout(rq_job: Job, settings: Settings) -> int:
    return int(rq_job.timeout) if rq_job.timeout and rq_job.timeout > 0 else settings.job_timeout_s
