"""An RQ worker that runs many I/O-bound downloads at once in one process.

RQ's forking Worker gives each job its own process (memory and a fork per job: figures in
docs/benchmarks.md), which cannot carry a thousand two-minute downloads on one box. This worker
keeps RQ's model (RQ 3 already tracks several executions per worker) and runs each job's
`perform_job` in a thread:

- the main loop dequeues downloads only while one of WORKER_CONCURRENCY slots is free;
- webhook deliveries (keys.WEBHOOK_QUEUE) never take a download slot: a thread of their own
  dequeues them while one of WEBHOOK_CONCURRENCY delivery slots is free and runs them on a
  pool of that size, so callbacks that are slow, failing or blackholed cannot delay a
  download (each attempt is bounded, webhooks/delivery.py). Their retries wait in RQ's
  ScheduledJobRegistry; the same loop steps RQ's scheduler (`RQScheduler`, its lock held by
  one worker at a time) instead of RQ forking a scheduler process next to our threads;
- every execution is registered as RQ's own `Execution`, so StartedJobRegistry, the worker's
  execution index and RQ's abandoned-job handling stay truthful per job;
- a heartbeat thread refreshes each running execution every WORKER_HEARTBEAT_S, with a TTL of
  one lease (lock.lease_s), so a worker killed with SIGKILL has its jobs retried soon after;
- job timeouts use RQ's TimerDeathPenalty (raises in the job's thread), and RQ's
  command (stop-execution) signals the download (cancel.signal) instead of killing a process;
- every REAPER_INTERVAL_S the main loop also runs the reaper (service/jobs/reaper.py), which
  recovers the jobs RQ's own maintenance cannot see (a worker killed between dequeue and start);
- a Redis outage does not end the process (RQ's loop would quit on an error outside its
  dequeue): the step is skipped with a warning and the dequeue backs off until Redis is back;
- nor does it end the running downloads: they ride it out (jobs/outage.py) while their leases
  lapse (Redis expires the execution records nobody could renew). The worker keeps the jobs:
  its heartbeat thread, and its maintenance before it judges anyone's leases, restore each
  lapsed lease once Redis answers (`_renew_leases`), and for one lease after Redis
  itself restarted no worker runs RQ's abandoned-job cleanup or the reaper, so every worker has
  restored its own leases first: no job is taken over and no retry is spent;
- SIGTERM (or Ctrl+C) stops dequeuing at once and lets the running downloads finish for up to
  WORKER_DRAIN_S; whatever still runs then is handed back to the front of its queue without
  spending a retry (download.run returns RQ's Retry), and the worker exits 0. A second signal
  hands back at once.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from rq.exceptions import DequeueTimeout, StopRequested
from rq.executions import Execution, ExecutionRegistry
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.scheduler import RQScheduler
from rq.timeouts import TimerDeathPenalty
from rq.utils import now
from rq.worker import BaseWorker, WorkerStatus

from service import keys
from service.jobs import cancel, lock, reaper
from service.redis_client import UNAVAILABLE
from service.runtime import Runtime

ENDED = {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED}  # in RQ


class DownloadWorker(BaseWorker):
    death_penalty_class = TimerDeathPenalty

    def __init__(self, queues: list[str], runtime: Runtime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings  # RQ's __init__ reads dequeue_timeout, which reads it
        concurrency = runtime.settings.worker_concurrency
        super().__init__(
            queues,  # type: ignore[arg-type]
            connection=runtime.redis,
            job_monitoring_interval=self.settings.worker_heartbeat_s,
            maintenance_interval=self.settings.worker_maintenance_s,
        )
        self.concurrency = concurrency
        self._slots = threading.BoundedSemaphore(concurrency)
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="download")
        hooks = self.settings.webhook_concurrency
        self._hook_slots = threading.BoundedSemaphore(hooks)
        self._hook_pool = ThreadPoolExecutor(max_workers=hooks, thread_name_prefix="webhook")
        self._hook_queue = next((q for q in self.queues if q.name == keys.WEBHOOK_QUEUE), None)
        self._deliverer: threading.Thread | None = None
        self._scheduler = RQScheduler([keys.WEBHOOK_QUEUE], connection=self.connection)
        self._burst = False
        self._delivering: set[str] = set()  # execution ids of the running deliveries
        self._running: dict[str, tuple[Job, Execution]] = {}
        self._stop_beating = threading.Event()
        self._beater: threading.Thread | None = None
        self._last_reap = -math.inf
        self._maintenance_held_until = -math.inf  # monotonic; see run_maintenance_tasks
        self._dequeuing = False
        self._hurry = threading.Event()  # a second stop signal: hand back without draining
        self._lapsed = threading.Event()  # a heartbeat failed: leases may have expired meanwhile
        self._leasing = threading.Lock()  # the heartbeat thread and maintenance both renew

    @property
    def running_count(self) -> int:
        """Downloads running now (exported as delineate_worker_downloads_running)."""
        return len(self._running) - len(self._delivering)

    # -- RQ hooks --------------------------------------------------------------------------

    def work(self, burst: bool = False, *args: object, **kwargs: object) -> bool:
        self._burst = burst  # the delivery loop ends too once its queue is empty
        return super().work(burst, *args, **kwargs)  # type: ignore[arg-type]

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Start the download in the pool, then return once a slot is free for the next dequeue."""
        self._slots.acquire()
        self._start(job, queue, self._slots, self._pool)
        while not self._slots.acquire(timeout=1.0):
            if self._stop_requested:
                return
            if self.should_run_maintenance_tasks:
                self.run_maintenance_tasks()
        self._slots.release()

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """One lease: that many missed beats and the execution counts as abandoned."""
        return max(int(lock.lease_s(self.job_monitoring_interval)), 3)

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        """Downloads only (deliveries have their own loop, `_deliver`); a worker serving only
        the webhook queue keeps its heartbeat and maintenance here until it is stopped."""
        self._start_deliveries()
        self._ordered_queues = [q for q in self._ordered_queues if q.name != keys.WEBHOOK_QUEUE]
        self._dequeuing = True
        try:
            if self._ordered_queues:
                return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
            if self._burst:
                return None  # nothing to dequeue here; the delivery loop drains its queue
            while not self._stop_requested:
                self.heartbeat()
                if self.should_run_maintenance_tasks:
                    self.run_maintenance_tasks()
                time.sleep(min(timeout or 1, self.dequeue_timeout))
            raise StopRequested
        finally:
            self._dequeuing = False

    def _shutdown(self) -> None:
        """SIGTERM/SIGINT (RQ's warm shutdown): take no new job from now on.

        RQ waits for a BUSY worker's current job by setting a flag its loop reads after that
        job; this worker is BUSY while any download runs and its main thread may be blocked in
        the dequeue, which never reads the flag (it kept taking jobs after SIGTERM). So the
        flag is set and a dequeue in progress is interrupted; the loop then ends and
        `teardown` waits for the running downloads.
        """
        self._stop_requested = True
        with self._riding_out("shutdown date"):
            self.set_shutdown_requested_date()
        if self._dequeuing:
            raise StopRequested

    def request_force_stop(self, signum: int, frame: object) -> None:
        """A second SIGTERM/SIGINT (RQ's cold shutdown): hand the running downloads back now.

        One within a second of the first is the same stop seen twice (Ctrl+C reaches the whole
        process group, and `delineate dev` forwards it too): ignored, as RQ does.
        """
        if self._shutdown_requested_date and now() - self._shutdown_requested_date < timedelta(seconds=1):
            return
        self.log.warning("second stop signal: handing the running downloads back now")
        self._hurry.set()

    @property
    def dequeue_timeout(self) -> int:
        """Wake up for maintenance and the reaper even when no job arrives."""
        interval = min(self.worker_ttl - 15, self.maintenance_interval, self.settings.reaper_interval_s)
        return max(1, int(interval))

    @property
    def should_run_maintenance_tasks(self) -> bool:
        if time.monotonic() < self._maintenance_held_until:
            return False
        return bool(super().should_run_maintenance_tasks) or self._reap_due

    def run_maintenance_tasks(self) -> None:
        """RQ's registry cleanup when due, then the reaper when due (a failed pass is logged).

        Both judge leases, so this worker's own are renewed first (lapsed ones restored), and
        neither runs while Redis has been up for less than one lease (`_leases_settling_s`):
        maintenance is then held off until that lease has passed. Without the hold every turn of
        the dequeue loop found it still due and renewed every running lease again: with 500
        downloads starting on a fresh Redis, 9,000 heartbeat transactions a second (60,000 Redis
        commands a second in `make capacity`'s initiate burst) where one a download per
        heartbeat interval is due."""
        self._renew_leases()
        # Redis not answering: nothing can tell whether a lease lapsed; ask again a beat later
        settling_s = float(self.job_monitoring_interval)
        with self._riding_out("lease check"):
            settling_s = self._leases_settling_s()
        if settling_s > 0:
            self._maintenance_held_until = time.monotonic() + settling_s
            return
        if super().should_run_maintenance_tasks:
            with self._riding_out("maintenance"):
                super().run_maintenance_tasks()
        if self._reap_due:
            self._last_reap = time.monotonic()
            try:
                with self._riding_out("reaper pass"):
                    report = reaper.reap(self.runtime)
                    if report.requeued or report.failed:
                        self.log.info(
                            "reaper: %d requeued, %d failed, %d checked",
                            len(report.requeued),
                            len(report.failed),
                            report.checked,
                        )
            except Exception:
                self.log.exception("reaper pass failed")

    def heartbeat(self, timeout: int | None = None, pipeline: object | None = None) -> None:
        with self._riding_out("heartbeat"):
            super().heartbeat(timeout, pipeline=pipeline)  # type: ignore[arg-type]

    def check_for_suspension(self, burst: bool) -> None:
        with self._riding_out("suspension check"):
            super().check_for_suspension(burst)

    def set_state(self, state: str, pipeline: object | None = None) -> None:
        """RQ marks a worker idle before each dequeue; it is busy while any download runs."""
        if state == WorkerStatus.IDLE and self._running:
            state = WorkerStatus.BUSY
        with self._riding_out("worker state"):
            super().set_state(state, pipeline=pipeline)  # type: ignore[arg-type]

    def request_stop_execution(self, execution_id: str) -> None:
        """RQ's stop-execution command (from the pub/sub thread): signal the download to stop."""
        running = self._running.get(execution_id)
        if running is None:
            self.log.warning("Not running execution %s, stop command ignored.", execution_id)
            return
        cancel.signal(running[0].id)

    def teardown(self) -> None:
        """The drain: running downloads may finish for WORKER_DRAIN_S (or until a second stop
        signal); the rest are handed back to their queues, each within one wait."""
        deadline = time.monotonic() + self.settings.worker_drain_s
        while self._running and time.monotonic() < deadline and not self._hurry.wait(0.1):
            pass
        if self._deliverer is not None:
            self._deliverer.join()  # it sees the stop within one dequeue wait
        if self._running:
            self.log.warning("handing %d running downloads back to their queues", cancel.hand_back_all())
        self._pool.shutdown(wait=True)
        self._hook_pool.shutdown(wait=True)  # an attempt ends within WEBHOOK_TIMEOUT_S
        self._stop_beating.set()
        with self._riding_out("deregistration"):  # Redis may be gone first (`make run`'s Ctrl+C)
            super().teardown()

    # -- internals -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _riding_out(self, what: str) -> Iterator[None]:
        """A Redis outage must not end the worker: RQ's loop quits on any error outside its
        dequeue (for instance maintenance while every slot is busy). Skip this step; the next
        dequeue waits for Redis with RQ's backoff, and the running downloads carry on."""
        try:
            yield
        except UNAVAILABLE as exc:
            self.log.warning("%s skipped, Redis unavailable: %s", what, exc)

    @property
    def _reap_due(self) -> bool:
        return time.monotonic() - self._last_reap >= self.settings.reaper_interval_s

    def _start(
        self, job: Job, queue: Queue, slots: threading.BoundedSemaphore, pool: ThreadPoolExecutor
    ) -> None:
        """Register the execution (RQ's own) and run it on `pool`; the caller holds one of
        `slots`, released when the job ends."""
        self._start_heartbeats()
        try:
            execution = self.prepare_execution(job)
        except UNAVAILABLE as exc:
            # popped but never registered: the reaper requeues it once Redis is back
            slots.release()
            self.log.warning("job %s not started, Redis unavailable: %s", job.id, exc)
            return
        self._running[execution.id] = (job, execution)
        if slots is self._hook_slots:
            self._delivering.add(execution.id)
        else:
            cancel.track(job.id)
        pool.submit(self._perform, job, queue, execution, slots)

    def _start_deliveries(self) -> None:
        if self._hook_queue is not None and self._deliverer is None:
            self._deliverer = threading.Thread(target=self._deliver, name="deliveries", daemon=True)
            self._deliverer.start()

    def _deliver(self) -> None:
        """The delivery loop: due retries onto the queue (RQ's scheduler), then dequeue from
        the webhook queue while a delivery slot is free. In burst mode, until it is empty."""
        assert self._hook_queue is not None
        next_step = -math.inf
        while not self._stop_requested:
            if time.monotonic() >= next_step:
                next_step = time.monotonic() + self._scheduler.interval
                self._step_scheduler()
            if not self._hook_slots.acquire(timeout=1.0):
                continue
            found = None
            try:
                found = self.queue_class.dequeue_any(
                    [self._hook_queue],
                    None if self._burst else 1,
                    connection=self.connection,
                    job_class=self.job_class,
                    serializer=self.serializer,
                    death_penalty_class=self.death_penalty_class,
                )
            except DequeueTimeout:
                pass
            except Exception as exc:  # Redis away (or a job that cannot be read): wait, go on
                self.log.warning("webhook dequeue failed: %s", exc)
                self._stop_beating.wait(1.0)
            if found is None:
                self._hook_slots.release()
                if self._burst:
                    break
                continue
            self._start(*found, self._hook_slots, self._hook_pool)
        with self._riding_out("scheduler lock release"):
            self._scheduler.release_locks()

    def _step_scheduler(self) -> None:
        """One turn of RQ's scheduler: hold (or refresh) its lock for the webhook queue and
        move the delivery attempts that are due onto the queue."""
        try:
            with self._riding_out("scheduler"):
                if self._scheduler.should_reacquire_locks:
                    self._scheduler.acquire_locks()
                if self._scheduler.acquired_locks:
                    self._scheduler.heartbeat()
                    self._scheduler.enqueue_scheduled_jobs()
        except Exception:
            self.log.exception("scheduling due webhook deliveries failed")

    def _perform(
        self, job: Job, queue: Queue, execution: Execution, slots: threading.BoundedSemaphore
    ) -> None:
        try:
            self.perform_job(job, queue, execution)
        finally:
            cancel.forget(job.id)
            self._running.pop(execution.id, None)
            self._delivering.discard(execution.id)
            slots.release()
            if not self._running:
                self.set_state(WorkerStatus.IDLE)

    def _start_heartbeats(self) -> None:
        if self._beater is None:
            self._beater = threading.Thread(target=self._beat, name="heartbeats", daemon=True)
            self._beater.start()

    def _beat(self) -> None:
        while not self._stop_beating.wait(self.job_monitoring_interval):
            self._renew_leases()

    def _renew_leases(self) -> None:
        """Heartbeat every running execution, first restoring any lease Redis let lapse."""
        with self._leasing:
            running = list(self._running.values())
            try:
                for job, execution in self._lapsed_of(running):
                    self._restore_lease(job, execution)
            except UNAVAILABLE as exc:
                self._heartbeats_failing(exc)
                return
            for job, execution in running:
                try:
                    self.maintain_heartbeats(job, execution)
                except UNAVAILABLE as exc:
                    self._heartbeats_failing(exc)
                    return
                except Exception:
                    self.log.exception("heartbeat for job %s failed", job.id)
            if self._lapsed.is_set():
                self._lapsed.clear()
                self.log.warning("Redis answers again: %d running downloads kept", len(running))

    def _heartbeats_failing(self, exc: Exception) -> None:
        if not self._lapsed.is_set():
            self.log.warning(
                "heartbeats failing, Redis unavailable (%s): keeping %d running downloads, "
                "their leases are restored once Redis answers",
                exc,
                len(self._running),
            )
        self._lapsed.set()

    def _lapsed_of(self, running: list[tuple[Job, Execution]]) -> list[tuple[Job, Execution]]:
        """The executions whose record Redis expired while nobody could renew it, in one round
        trip (or whose record a late heartbeat re-created with its one field: RQ's heartbeat
        HSETs `last_heartbeat` on whatever is there)."""
        if not running:
            return []
        with self.connection.pipeline(transaction=False) as pipe:
            for _, execution in running:
                pipe.hexists(execution.key, "created_at")
            present = pipe.execute()
        return [pair for pair, there in zip(running, present, strict=True) if not there]

    def _restore_lease(self, job: Job, execution: Execution) -> None:
        """Re-create the execution record (same id, same start: the per-job lock still orders it
        first) while RQ's registry still holds it; else the job ended or was taken over."""
        registry = job.started_job_registry
        if self.connection.zscore(registry.key, execution.composite_key) is None:
            if job.get_status(refresh=True) not in ENDED:  # not just finished: requeued
                self.log.warning("lease of job %s lost while Redis was unavailable: it was requeued", job.id)
            return
        ttl = self.get_heartbeat_ttl(job)
        with self.connection.pipeline() as pipe:
            execution.save(ttl, pipeline=pipe)
            ExecutionRegistry(job.id, connection=self.connection).add(execution, ttl, pipeline=pipe)
            registry.add_execution(execution, pipeline=pipe, ttl=ttl, xx=False)
            pipe.sadd(execution.worker_executions_key, execution.composite_key)
            pipe.expire(execution.worker_executions_key, ttl + 60)
            pipe.execute()
        self.log.warning("lease of job %s restored: it lapsed while Redis was unavailable", job.id)

    def _leases_settling_s(self) -> float:
        """How long until Redis has been up for one lease (0: it has). Before that, leases that
        expired while it was down are not abandoned: their workers are restoring them (at their
        next heartbeat)."""
        uptime = int(self.connection.info("server")["uptime_in_seconds"])
        left = lock.lease_s(self.job_monitoring_interval) - uptime
        if left > 0:
            self.log.info("Redis up for %d s: lease checks wait until its first lease has passed", uptime)
        return max(0.0, left)
