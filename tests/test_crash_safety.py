"""Crash safety with real processes: kill -9 workers, a Redis restart, an API killed mid-stream.

Plus the reaper (service/jobs/reaper.py) on crafted orphans against a real Redis: a job in
no queue and no registry is requeued after the grace period and not before.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client import REGISTRY
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.results import Result

from service import harness, keys
from service.harness import Proc, Stack, running_stack, start_api
from service.jobs import reaper, state
from service.runtime import Runtime
from service.telemetry.logging import job_ref
from tests import sse
from tests.jobs import TERMINAL, create_job, initiate, plant_execution, runtime_on, wait_for
from tests.support import base_env, require_binary

FAST = {  # every recovery clock at its smallest: 1 s beats (3 s execution TTL), 1 s passes
    "WORKER_HEARTBEAT_S": "1",
    "WORKER_MAINTENANCE_S": "1",
    "REAPER_INTERVAL_S": "1",
    "JOB_RETRY_BASE_S": "0",
    "JOB_MAX_RETRIES": "3",
}


# -- the reaper on crafted jobs ------------------------------------------------------------------


@pytest.fixture
def conn(redis_factory: Callable[..., harness.Server]) -> Iterator[redis.Redis]:
    server = redis_factory()
    client = redis.Redis.from_url(server.url)
    yield client
    client.close()


def _orphan(rt: Runtime) -> str:
    """A job a worker popped and then died with: in no queue and in no registry."""
    job_id = create_job(rt)
    assert rt.redis.lrem(keys.rq_queue(keys.SMALL_QUEUE), 1, job_id) == 1
    return job_id


def _reap(rt: Runtime, now: float | None = None) -> reaper.ReapReport:
    """One pass at `now` (default: the clock); the lock paces workers, a test drives passes."""
    rt.redis.delete(keys.REAPER_LOCK)
    report = reaper.reap(rt, now)
    assert report.ran
    return report


def _status(conn: redis.Redis, job_id: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in conn.hgetall(keys.job(job_id)).items()}


def _reaped_count(action: str, reason: str) -> float:
    labels = {"action": action, "reason": reason}
    return REGISTRY.get_sample_value("delineate_jobs_reaped_total", labels) or 0.0


def test_the_reaper_trims_ids_of_jobs_expired_longer_ago_than_the_index_keeps_them(conn):
    rt = runtime_on(conn)
    live = create_job(rt)
    horizon = time.time() - rt.settings.job_ttl_s - state.INDEX_KEPT_S
    conn.zadd(keys.JOB_INDEX, {"forgotten": horizon - 60, "still-gone": horizon + 60})

    assert _reap(rt).forgotten == 1
    assert conn.zscore(keys.JOB_INDEX, "forgotten") is None
    assert conn.zscore(keys.JOB_INDEX, "still-gone") is not None, "answers 410 until INDEX_KEPT_S"
    assert conn.zscore(keys.JOB_INDEX, live) is not None


@pytest.mark.parametrize("limit", [0, 3])
def test_a_client_s_active_jobs_are_tracked_only_while_a_limit_reads_them(conn, limit):
    """Without PER_CLIENT_MAX_ACTIVE_JOBS nothing would ever prune the set: it would only grow."""
    rt = runtime_on(conn, per_client_max_active_jobs=limit)
    job_id = create_job(rt)
    tracked = conn.zscore(keys.client_active("127.0.0.1"), job_id) is not None
    assert tracked == bool(limit)


def test_an_orphan_is_requeued_after_the_grace_period_and_not_before(conn):
    rt = runtime_on(conn)
    healthy = create_job(rt)
    orphan = _orphan(rt)
    grace = reaper.suspect_grace_s(rt.settings)
    queue_key = keys.rq_queue(keys.SMALL_QUEUE)

    seen_at = time.time()
    first = _reap(rt, now=seen_at)
    assert first.checked == 2 and first.suspects == [orphan]
    assert first.requeued == [] and first.failed == []
    assert conn.lpos(queue_key, orphan) is None
    assert reaper.reap(rt).ran is False, "a second pass within the interval is locked out"

    for later in (0.2, grace / 2, grace - 0.01):  # passes within the grace period
        early = _reap(rt, now=seen_at + later)
        assert early.requeued == [] and early.suspects == [orphan], f"acted {later} s after"
    assert conn.lpos(queue_key, orphan) is None

    counted = _reaped_count("requeued", "orphaned")
    late = _reap(rt, now=seen_at + grace + 0.01)
    assert late.requeued == [orphan] and late.suspects == []
    assert _reaped_count("requeued", "orphaned") == counted + 1
    assert conn.lpos(queue_key, orphan) == 0, "requeued at the front"
    rq_job = Job.fetch(orphan, connection=conn)
    assert rq_job.get_status() == JobStatus.QUEUED
    assert rq_job.retries_left == rt.settings.job_max_retries - 1, "one retry spent"
    assert _status(conn, orphan)["status"] == state.QUEUED
    assert _status(conn, healthy)["status"] == state.QUEUED
    assert conn.hlen(keys.REAPER_SUSPECTS) == 0
    assert conn.llen(queue_key) == 2, "neither job queued twice"
    assert _reap(rt).suspects == []


def test_the_known_bug_an_expired_entry_of_a_job_rq_still_calls_queued(conn):
    """Killed after the execution was registered, before perform_job marked it started."""
    rt = runtime_on(conn)
    job_id = _orphan(rt)
    plant_execution(conn, job_id, ttl_s=1, worker_name="dead-worker")
    registry = StartedJobRegistry(keys.SMALL_QUEUE, connection=conn)
    owned = _reap(rt)
    assert owned.suspects == [] and owned.requeued == [], "a live execution owns it"
    # a pass after its entry expired, RQ still saying queued: its execution died, no grace needed
    abandoned = _reap(rt, now=time.time() + 1.1)
    assert abandoned.requeued == [job_id]
    assert registry.get_job_ids(cleanup=False) == [], "the dead execution's entry went with it"
    assert Job.fetch(job_id, connection=conn).get_status() == JobStatus.QUEUED


def test_the_known_bug_after_rq_cleanup_dropped_the_entry(conn):
    """The same orphan once RQ's maintenance ran first: in no queue and no registry."""
    rt = runtime_on(conn)
    job_id = _orphan(rt)
    plant_execution(conn, job_id, ttl_s=1, worker_name="dead-worker")
    registry = StartedJobRegistry(keys.SMALL_QUEUE, connection=conn)
    time.sleep(1.1)  # RQ's clock, not the reaper's: its cleanup below reads the real time
    registry.cleanup()  # RQ's own maintenance: skips the job (not `started`), drops its entry
    assert registry.get_job_ids(cleanup=False) == []
    assert Job.fetch(job_id, connection=conn).get_status() == JobStatus.QUEUED, "RQ left it"
    seen_at = time.time()
    assert _reap(rt, now=seen_at).suspects == [job_id]
    assert _reap(rt, now=seen_at + reaper.suspect_grace_s(rt.settings)).requeued == [job_id]
    assert Job.fetch(job_id, connection=conn).get_status() == JobStatus.QUEUED


def test_no_retries_left_missing_rq_job_and_rq_failure_end_failed_with_a_reason(conn):
    rt = runtime_on(conn, job_max_retries=0)
    no_retries = _orphan(rt)
    missing = create_job(rt)
    conn.delete(Job.key_for(missing))
    rq_failed = _orphan(rt)
    failed_job = Job.fetch(rq_failed, connection=conn)
    with conn.pipeline() as pipe:
        failed_job.set_status(JobStatus.FAILED, pipeline=pipe)
        failure = "Traceback ...\nValueError: boom\n"
        failed_job.failed_job_registry.add(failed_job, exc_string=failure, pipeline=pipe)
        Result.create_failure(failed_job, 60, exc_string=failure, pipeline=pipe)  # as RQ records one
        pipe.execute()

    seen_at = time.time()
    first = _reap(rt, now=seen_at)
    assert first.failed == [rq_failed], "RQ's final failure needs no grace"
    assert sorted(first.suspects) == sorted([no_retries, missing])
    assert _status(conn, rq_failed)["error"] == "failed in RQ: ValueError: boom"
    second = _reap(rt, now=seen_at + reaper.suspect_grace_s(rt.settings))
    assert sorted(second.failed) == sorted([no_retries, missing])
    assert second.pruned == 1, "the job failed by the first pass left the index"
    for job_id in (no_retries, missing, rq_failed):
        body = _status(conn, job_id)
        assert body["status"] == state.FAILED and body["finished_at"], body
    assert "no retries are left" in _status(conn, no_retries)["error"]
    assert "RQ job missing" in _status(conn, missing)["error"]
    assert Job.fetch(no_retries, connection=conn).get_status() == JobStatus.FAILED
    third = _reap(rt)
    assert third.pruned == 2 and third.checked == 2
    assert conn.zcard(keys.ACTIVE) == 0


def test_a_job_running_far_beyond_its_timeout_is_failed(conn):
    rt = runtime_on(conn, job_timeout_s=1)
    stuck = _orphan(rt)
    running = _orphan(rt)
    for job_id, started in ((stuck, 30), (running, 0)):
        rq_job = Job.fetch(job_id, connection=conn)
        with conn.pipeline() as pipe:
            Execution.create(rq_job, ttl=60, pipeline=pipe, worker_name="slow-worker")
            rq_job.prepare_for_execution("slow-worker", pipeline=pipe)
            pipe.execute()
        rq_job.started_at = datetime.now(UTC) - timedelta(seconds=started)
        rq_job.save()
        conn.hset(keys.job(job_id), "status", state.PROCESSING)
    report = _reap(rt)
    assert report.failed == [stuck] and report.suspects == []
    assert _status(conn, stuck)["error"].startswith("stuck beyond timeout")
    assert _status(conn, running)["status"] == state.PROCESSING


# -- every ending through one door, counted on one clock ----------------------------------------


def _finished(queue: str, outcome: str) -> tuple[float, float]:
    """(jobs counted finished, seconds summed in the duration histogram) for queue/outcome."""
    labels = {"queue": queue, "outcome": outcome}
    count = REGISTRY.get_sample_value("delineate_jobs_finished_total", labels) or 0.0
    total = REGISTRY.get_sample_value("delineate_job_duration_seconds_sum", labels) or 0.0
    return count, total


def _accepted_ago(rt: Runtime, job_id: str, seconds: float) -> None:
    """Make the job look accepted `seconds` ago (RQ's own timestamps stay at now)."""
    then = datetime.now(UTC) - timedelta(seconds=seconds)
    rt.redis.hset(keys.job(job_id), "created_at", then.isoformat(timespec="milliseconds"))


@pytest.mark.parametrize("ending", ["cancel", "rq_failure", "reaper_rq_missing"])
def test_every_ending_is_counted_once_from_acceptance(conn, ending):
    """The duration histogram reads the job's own `created_at`, whoever ends it: a cancel once
    measured from RQ's enqueued_at, RQ's failure callback from RQ's created_at, and the reaper
    did not count a job whose RQ hash was lost at all."""
    from service import runtime
    from service.jobs import cancel, download

    rt = runtime_on(conn, job_max_retries=0)
    job_id = create_job(rt) if ending != "reaper_rq_missing" else _orphan(rt)
    _accepted_ago(rt, job_id, 100)
    outcome = state.CANCELLED if ending == "cancel" else state.FAILED
    before = _finished(keys.SMALL_QUEUE, outcome)
    if ending == "cancel":
        cancel.request(rt, job_id)
    elif ending == "rq_failure":
        runtime.install(rt)
        rq_job = Job.fetch(job_id, connection=conn)
        download.on_failure(rq_job, conn, ValueError, ValueError("boom"), None)
    else:
        conn.delete(Job.key_for(job_id))
        seen_at = time.time()
        _reap(rt, now=seen_at)
        assert _reap(rt, now=seen_at + reaper.suspect_grace_s(rt.settings)).failed == [job_id]
    count, total = _finished(keys.SMALL_QUEUE, outcome)
    assert _status(conn, job_id)["status"] == outcome
    assert count == before[0] + 1, "counted once"
    assert 100 <= total - before[1] < 110, "observed from acceptance"


# -- kill -9 a worker mid-job, 20 times ------------------------------------------------------------


ORPHANED = ("popped, not registered", "registered, not started")  # RQ's cleanup skips these


def _phase(conn: redis.Redis, job_id: str) -> str:
    """Where the job was when its worker died (read right after the kill)."""
    ours = conn.hget(keys.job(job_id), "status").decode()
    if ours != state.QUEUED:
        return ours
    if conn.lpos(keys.rq_queue(keys.SMALL_QUEUE), job_id) is not None:
        return "in queue"
    rq_status = Job.fetch(job_id, connection=conn).get_status()
    if rq_status != JobStatus.QUEUED:
        return f"rq {rq_status.value}"
    registered = StartedJobRegistry(keys.SMALL_QUEUE, connection=conn).get_job_ids(cleanup=False)
    return ORPHANED[1] if job_id in registered else ORPHANED[0]


def _wait_idle(conn: redis.Redis, worker: Proc) -> None:
    """Until this worker process is registered and idle (blocked in its BLPOP)."""
    from rq.worker import Worker

    def idle() -> bool:
        mine = [w for w in Worker.all(connection=conn) if w.pid == worker.process.pid]
        return bool(mine) and mine[0].get_state() == "idle"

    harness.wait_until(idle, 20, f"{worker.name} idle in its BLPOP", interval_s=0.002, retry_on=())


def _blocked_in_blpop(conn: redis.Redis) -> bool:
    return any(c["cmd"] == "blpop" and "b" in c["flags"] for c in conn.client_list())


def _freeze_in_blpop(conn: redis.Redis, worker: Proc) -> None:
    """SIGSTOP the (only live) worker just after it entered a BLPOP (1 s dequeue timeout).

    Redis still hands that BLPOP the next job: the job leaves the queue into a frozen process,
    in no queue and in no registry. Waiting for a fresh BLPOP leaves ~1 s to create the job.
    """
    harness.wait_until(
        lambda: not _blocked_in_blpop(conn), 5, "the BLPOP to return", interval_s=0.0005, retry_on=()
    )
    harness.wait_until(lambda: _blocked_in_blpop(conn), 5, "a fresh BLPOP", interval_s=0.0005, retry_on=())
    worker.process.send_signal(signal.SIGSTOP)


def _reaped(workers: list[Proc]) -> set[str]:
    """The jobs the reaper requeued, from the workers' JSON logs: their `job_ref`s (logs never
    carry a job id)."""
    found = set()
    for worker in workers:
        for line in worker.output().splitlines():
            if '"job_reaped"' in line and '"requeued"' in line:
                found.add(json.loads(line)["job"])
    return found


@dataclass
class KillLane:
    """One stack whose worker is killed round after round; lanes run side by side."""

    stack: Stack
    seed: int
    outcomes: dict[str, str] = field(default_factory=dict)
    phases: dict[str, str] = field(default_factory=dict)
    recovery: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def run(self, rounds: int) -> None:
        rng = random.Random(self.seed)
        conn = redis.Redis.from_url(self.stack.env["REDIS_URL"])
        with self.stack.client() as client:
            for round_no in range(rounds):
                self._round(conn, client, round_no % 4, harness.DEMO_FILE_IDS[round_no % 10], rng)

    def _round(
        self, conn: redis.Redis, client: httpx.Client, moment: int, file_id: int, rng: random.Random
    ) -> None:
        victim = self.stack.workers[-1]
        _wait_idle(conn, victim)
        if moment == 1:
            _freeze_in_blpop(conn, victim)
        job_id = initiate(client, [file_id])
        if moment == 1:
            left = partial(_left_queue, conn, job_id)
            try:
                harness.wait_until(
                    left, 0.5, "the frozen BLPOP to pop the job", interval_s=0.002, retry_on=()
                )
            except TimeoutError:  # the BLPOP expired first: let the worker take the job
                victim.process.send_signal(signal.SIGCONT)
                harness.wait_until(left, 10, "the worker to take the job", interval_s=0.002, retry_on=())
        elif moment == 2:
            time.sleep(rng.uniform(0.0, 0.03))
        elif moment == 3:
            wait_for(client, job_id, {state.PROCESSING, *TERMINAL}, timeout_s=10)
            time.sleep(rng.uniform(0.0, 0.2))
        victim.kill()
        killed_at = time.monotonic()
        self.phases[job_id] = _phase(conn, job_id)
        self.stack.add_worker()
        body = _wait_terminal(client, job_id, timeout_s=25)
        self.outcomes[job_id] = str(body["status"]) if body else "stuck"
        self.recovery[self.phases[job_id]].append(time.monotonic() - killed_at)
        if self.outcomes[job_id] != "completed":
            print(f"{job_id} ({self.phases[job_id]}): {body}")


@pytest.mark.slow
def test_kill_9_a_worker_20_times_loses_nothing_and_leaves_nothing_stuck(
    tmp_path, s3_server: harness.Server, redis_factory: Callable[..., harness.Server]
):
    """Two stacks, ten kill -9 rounds each; a fresh worker is started right after each kill.

    Kill moments, in turn: 0 right after initiate; 1 the worker is SIGSTOPped in its BLPOP
    before the job is created, so Redis pops the job into a frozen worker: in no queue, in no
    registry (the window RQ's own cleanup cannot see); 2 0-30 ms after initiate; 3 while
    processing.
    """
    with ExitStack() as exits:
        lanes = []
        for lane in range(2):
            env = base_env(redis_factory().url, s3_server.url, **FAST)
            env.update(DOWNLOAD_DELAY_MIN_MS="300", DOWNLOAD_DELAY_MAX_MS="600")
            stack = exits.enter_context(running_stack(env, tmp_path / f"lane{lane}"))
            lanes.append(KillLane(stack, seed=lane))
        started = time.monotonic()
        with ThreadPoolExecutor(len(lanes)) as pool:
            for done in [pool.submit(lane.run, 10) for lane in lanes]:
                done.result()
        elapsed = time.monotonic() - started
        outcomes = {j: s for lane in lanes for j, s in lane.outcomes.items()}
        phases = {j: p for lane in lanes for j, p in lane.phases.items()}
        recovery: dict[str, list[float]] = defaultdict(list)
        for lane in lanes:
            for phase, times in lane.recovery.items():
                recovery[phase] += times
        slowest = {phase: f"{max(times):.1f} s" for phase, times in recovery.items()}
        print(f"kill -9 x{len(outcomes)}: {elapsed:.1f} s; phases: {dict(Counter(phases.values()))}")
        print(f"slowest recovery per phase: {slowest}")

        workers = [w for lane in lanes for w in lane.stack.workers]
        lost = [j for j, s in outcomes.items() if s not in TERMINAL]
        failed = [j for j, s in outcomes.items() if s != "completed" and s in TERMINAL]
        assert lost == [] and failed == [], (lost, failed, _worker_logs(workers))
        assert len(outcomes) == 20
        for lane in lanes:
            conn = redis.Redis.from_url(lane.stack.env["REDIS_URL"])
            statuses = {conn.hget(keys.job(j), "status").decode() for j in lane.outcomes}
            assert statuses == {"completed"}
            assert conn.llen(keys.rq_queue(keys.SMALL_QUEUE)) == 0
            assert StartedJobRegistry(keys.SMALL_QUEUE, connection=conn).get_job_ids() == []
        # a job orphaned before it started is invisible to RQ's cleanup: only the reaper saves it
        orphaned = {j for j, phase in phases.items() if phase in ORPHANED}
        assert ORPHANED[0] in phases.values(), "the frozen-worker rounds should orphan their jobs"
        assert {job_ref(job_id) for job_id in orphaned} <= _reaped(workers), (orphaned, _reaped(workers))


def _left_queue(conn: redis.Redis, job_id: str) -> bool:
    return conn.lpos(keys.rq_queue(keys.SMALL_QUEUE), job_id) is None


def _wait_terminal(client: httpx.Client, job_id: str, timeout_s: float) -> dict[str, object] | None:
    try:
        return wait_for(client, job_id, TERMINAL, timeout_s=timeout_s)
    except TimeoutError:
        return None


def _worker_logs(workers: list[Proc]) -> str:
    return "\n".join(w.output()[-3000:] for w in workers[-3:])


# -- Redis restarted from its AOF while jobs wait ----------------------------------------------


def _start_aof_redis(binary: str, directory: Path, port: int, fsync: str = "always") -> harness.Server:
    """Redis as compose runs it: AOF on, no eviction (compose fsyncs `everysec`)."""
    directory.mkdir(parents=True, exist_ok=True)
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)]
    args += ["--appendonly", "yes", "--appendfsync", fsync, "--save", ""]
    args += ["--maxmemory-policy", "noeviction", "--logfile", str(directory / "redis.log")]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    server = harness.Server("redis-aof", process, directory / "redis.log", url=url, directory=directory)
    probe = redis.Redis(port=port, socket_connect_timeout=0.2)
    try:
        harness.wait_until(probe.ping, 10, "redis", process)
    except Exception:
        server.kill()
        raise
    finally:
        probe.close()
    return server


def _assert_503(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["error"] == "Service Unavailable" and body["requestId"], body
    assert response.headers["retry-after"]


@pytest.mark.slow
@pytest.mark.parametrize("fsync", ["always", "everysec"])
def test_redis_restart_from_aof_answers_503_then_recovers_and_loses_no_job(
    tmp_path, s3_server: harness.Server, fsync: str
):
    """Redis is SIGKILLed (a crash, not a clean shutdown) with accepted jobs waiting.

    `everysec` (docker-compose.yml) fsyncs once a second, but Redis hands each write to the
    kernel before it answers, so a process crash loses nothing; only an OS crash could.
    """
    binary = require_binary("redis-server")
    port = harness.free_port()
    data = tmp_path / "redis-aof"
    server = _start_aof_redis(binary, data, port, fsync)
    env = base_env(f"redis://127.0.0.1:{port}/0", s3_server.url, **FAST)
    try:
        with running_stack(env, tmp_path / "logs", workers=0) as stack, stack.client() as client:
            accepted = [initiate(client, [file_id]) for file_id in harness.DEMO_FILE_IDS[:5]]
            server.kill()
            _assert_503(client.post("/v1/download/initiate", json={"file_ids": [70007]}))
            _assert_503(client.get(f"/v1/download/status/{accepted[0]}"))
            assert client.get("/health").status_code == 503

            server = _start_aof_redis(binary, data, port, fsync)
            response = None

            def answers() -> bool:
                nonlocal response
                response = client.get(f"/v1/download/status/{accepted[0]}")
                return response.status_code == 200

            def what() -> str:
                return f"the API to answer after the restart: {response and response.text}"

            harness.wait_until(answers, 15, what, interval_s=0.2, retry_on=())
            accepted.append(initiate(client, [70014]))
            for job_id in accepted:
                assert client.get(f"/v1/download/status/{job_id}").json()["status"] == "queued"
            stack.add_worker()
            results = [wait_for(client, job_id, timeout_s=30)["status"] for job_id in accepted]
            assert results == ["completed"] * len(accepted)
    finally:
        server.stop()


# -- an API process killed mid-stream: resume on another with Last-Event-ID -----------------------


@pytest.mark.slow
def test_an_api_killed_mid_stream_resume_on_another_gets_the_rest_and_the_end(make_stack):
    stack = make_stack(DOWNLOAD_DELAY_MIN_MS="3000", DOWNLOAD_DELAY_MAX_MS="3000")
    api_b, url_b = start_api(stack.env, stack.logdir, name="api_b")
    try:
        with stack.client() as client_a, httpx.Client(base_url=url_b, timeout=30) as client_b:
            job_id = initiate(client_a, [70000, 70007, 70014, 70021, 70028])
            before: list[sse.Event] = []
            stream = client_a.stream("GET", f"/v1/download/stream/{job_id}")
            with pytest.raises(httpx.HTTPError), stream as response:
                assert response.status_code == 200
                for item in sse.read(response):
                    if isinstance(item, sse.Event):
                        before.append(item)
                        if item.event == "progress":
                            stack.api.kill()  # kill -9 API A with the stream open
            assert before and before[-1].event == "progress"
            response, items = sse.collect(client_b, job_id, last_event_id=before[-1].id)
            assert response.status_code == 200
            after = sse.events(items)
    finally:
        api_b.stop()
    ids = [e.id for e in before + after]
    assert len(ids) == len(set(ids)), f"duplicate event ids: {ids}"
    assert ids == sorted(ids, key=_stream_id), ids
    progress = [json.loads(e.data)["done"] for e in before + after if e.event == "progress"]
    assert progress == [1, 2, 3, 4, 5]
    assert after[-1].event == "completed"
    assert json.loads(after[-1].data)["status"] == "completed"


def _stream_id(entry_id: str | None) -> tuple[int, int]:
    ms, _, seq = (entry_id or "0-0").partition("-")
    return int(ms), int(seq)


@pytest.mark.slow
def test_a_busy_worker_rides_out_a_redis_restart_and_its_job_completes(tmp_path, s3_server: harness.Server):
    """No process is restarted: a worker mid-download outlives a 3 s outage and the job ends."""
    binary = require_binary("redis-server")
    port = harness.free_port()
    data = tmp_path / "redis-aof"
    server = _start_aof_redis(binary, data, port)
    env = base_env(f"redis://127.0.0.1:{port}/0", s3_server.url, **FAST)
    env.update(DOWNLOAD_DELAY_MIN_MS="2000", DOWNLOAD_DELAY_MAX_MS="2000", WORKER_CONCURRENCY="1")
    try:
        with running_stack(env, tmp_path / "logs") as stack, stack.client() as client:
            worker = stack.workers[0]
            job_id = initiate(client, [70000, 70007, 70014, 70021])
            wait_for(client, job_id, {state.PROCESSING}, timeout_s=10)
            server.kill()
            time.sleep(3)
            server = _start_aof_redis(binary, data, port)
            assert wait_for(client, job_id, timeout_s=30)["status"] == "completed"
            assert worker.process.poll() is None, worker.output()[-3000:]
            assert wait_for(client, initiate(client, [70028]))["status"] == "completed"
            assert len(stack.workers) == 1 and worker.process.poll() is None
    finally:
        server.stop()
