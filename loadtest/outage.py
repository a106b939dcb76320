"""Outage drills (issue #16): S3 or Redis killed and restarted under running downloads, and S3
frozen (accepting connections, never answering) under the API.

Each drill starts a private stack as real processes (Redis, SeaweedFS S3, the API, one worker
with a slot per job), starts `--jobs` downloads of ten files each, waits until every one is
`processing`, then SIGKILLs the dependency and restarts it on the same port (same data) after
`--*-outage` seconds. It prints, per drill: jobs lost (ended `failed`, or not ended at all),
the attempts the jobs used, the reaper's requeues, how long after the dependency answered again
every job had made progress (resumed) and had ended (recovered). tests/test_outage.py runs the
same drills, smaller, and asserts no job is lost and none spends an attempt.

The hung-S3 drill SIGSTOPs SeaweedFS (the kernel still accepts connections) under an API with
no worker and times what a client sees: `/health/ready`, `/health`, `--checks` concurrent
`/v1/download/check` and, while those are in flight, a cancel of a queued job.

    .venv/bin/python loadtest/outage.py                      # the issue's figures: 30 jobs, 20 s / 10 s
    .venv/bin/python loadtest/outage.py --jobs 8 --s3-outage 6 --redis-outage 5 --retry-base 0.5
    .venv/bin/python loadtest/outage.py --s3-outage 0 --redis-outage 0 --checks 48  # hung S3 only
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from service import harness

BUCKET = "delineate-drill"
TERMINAL = {"completed", "failed", "cancelled"}
FILES = list(harness.DEMO_FILE_IDS)  # ten per job
# Recovery clocks at test speed (1 s heartbeats, 3 s leases); retries as deployed unless changed.
DRILL_SETTINGS = {
    "WORKER_HEARTBEAT_S": "1",
    "WORKER_MAINTENANCE_S": "1",
    "REAPER_INTERVAL_S": "1",
    "S3_MAX_ATTEMPTS": "2",
    "RATE_LIMIT_MAX_REQUESTS": "100000000",
    "PER_CLIENT_MAX_ACTIVE_JOBS": "0",
    "DEDUPE_WINDOW_S": "0",
    "WORKER_DRAIN_S": "5",
    "LOG_FORMAT": "json",
}


@dataclass
class Figures:
    """What one drill measured."""

    drill: str
    jobs: int
    outage_s: float  # from the kill until the dependency answers again
    statuses: Counter[str] = field(default_factory=Counter)
    attempts: Counter[int] = field(default_factory=Counter)  # attempt number -> jobs that ended on it
    reaped: int = 0  # reaper requeues (worker logs)
    resumed_s: float | None = None  # dependency back -> every job made progress (or ended)
    recovered_s: float | None = None  # dependency back -> every job ended
    worker_log: str = ""

    @property
    def lost(self) -> int:
        return self.jobs - self.statuses["completed"]

    def line(self) -> str:
        attempts = ", ".join(f"{n}: {count}" for n, count in sorted(self.attempts.items()))
        resumed = "-" if self.resumed_s is None else f"{self.resumed_s:.1f} s"
        recovered = "-" if self.recovered_s is None else f"{self.recovered_s:.1f} s"
        return (
            f"| {self.drill} | {self.jobs} | {self.outage_s:.1f} s | {self.lost} ({dict(self.statuses)}) "
            f"| {attempts} | {self.reaped} | {resumed} | {recovered} |"
        )


HEADER = (
    "| drill | jobs | outage | jobs lost (statuses) | attempt: jobs | reaper requeues | resumed after "
    "| all ended after |\n|---|---|---|---|---|---|---|---|"
)


def _status(client: httpx.Client, job_id: str) -> dict[str, Any] | None:
    response = client.get(f"/v1/download/status/{job_id}")
    return response.json() if response.status_code == 200 else None


def _poll(client: httpx.Client, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Every job's status body now (those the API could not answer are left out)."""
    bodies = {job_id: _status(client, job_id) for job_id in ids}
    return {job_id: body for job_id, body in bodies.items() if body is not None}


def _start_jobs(client: httpx.Client, jobs: int) -> list[str]:
    ids = []
    for _ in range(jobs):
        response = client.post("/v1/download/initiate", json={"file_ids": FILES})
        assert response.status_code == 202, response.text
        ids.append(response.json()["jobId"])

    def all_processing() -> bool:
        bodies = _poll(client, ids)
        return len(bodies) == len(ids) and all(b["status"] == "processing" for b in bodies.values())

    harness.wait_until(all_processing, 30, f"{jobs} jobs processing", retry_on=())
    return ids


def _follow(
    client: httpx.Client, ids: list[str], before: dict[str, int], figures: Figures, back: float
) -> None:
    """From the dependency's return: when every job progressed past `before`, when all ended."""
    resumed: set[str] = set()
    ended: dict[str, dict[str, Any]] = {}

    def progressed() -> bool:
        for job_id, body in _poll(client, [j for j in ids if j not in ended]).items():
            if body["progress"]["done"] > before[job_id] or body["status"] in TERMINAL:
                resumed.add(job_id)
            if body["status"] in TERMINAL:
                ended[job_id] = body
        if figures.resumed_s is None and len(resumed) == len(ids):
            figures.resumed_s = time.monotonic() - back
        return len(ended) == len(ids)

    with contextlib.suppress(TimeoutError):
        harness.wait_until(progressed, 120, "every job to end", interval_s=0.1, retry_on=(httpx.HTTPError,))
        figures.recovered_s = time.monotonic() - back
    for job_id in ids:
        body = ended.get(job_id)
        figures.statuses[body["status"] if body else "unfinished"] += 1
        if body:
            figures.attempts[int(body["attempt"])] += 1


def _done_now(client: httpx.Client, ids: list[str]) -> dict[str, int]:
    return {job_id: int(body["progress"]["done"]) for job_id, body in _poll(client, ids).items()}


def _reaped(log: str) -> int:
    return sum(1 for line in log.splitlines() if '"job_reaped"' in line and '"requeued"' in line)


def _wait_out(since: float, outage_s: float) -> None:
    """The outage itself: the dependency stays down this long (nothing to poll for)."""
    time.sleep(max(outage_s - (time.monotonic() - since), 0.0))


@contextlib.contextmanager
def _workdir(home: Path | None) -> Iterator[Path]:
    if home is not None:
        yield home
        return
    path = Path(tempfile.mkdtemp(prefix="delineate-outage-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _end(servers: list[harness.Server]) -> None:
    """End the drill's dependency: the first was killed on purpose, the restarted one is killed
    too. How it shuts down is not what the drill measures, and Proc.stop's clean-exit check on
    a restarted SeaweedFS failed one test run on a heavily loaded machine."""
    for server in servers:
        server.kill()


def _drill_settings(jobs: int, settings: dict[str, str]) -> dict[str, str]:
    return {**DRILL_SETTINGS, "WORKER_CONCURRENCY": str(jobs), **settings}


def s3_drill(
    jobs: int, outage_s: float, settings: dict[str, str], home: Path | None = None, bucket: str = BUCKET
) -> Figures:
    """S3 SIGKILLed under `jobs` running downloads, restarted (same ports, same data) after `outage_s`."""
    redis_binary = shutil.which("redis-server")
    with _workdir(home) as work, contextlib.ExitStack() as stops:
        redis_server = harness.start_redis(work / "redis", binary=redis_binary)
        stops.callback(redis_server.stop)
        ports = harness.seaweed_ports()
        servers = [harness.start_seaweed(work / "s3", ports=ports)]
        stops.callback(lambda: _end(servers))
        harness.seed(
            harness.s3_client(servers[0].url, harness.DEV_ACCESS_KEY, harness.DEV_SECRET_KEY), bucket
        )
        env = harness.stack_env(redis_server.url, servers[0].url, bucket, **_drill_settings(jobs, settings))
        return _outage(
            "S3 killed",
            env,
            work,
            jobs,
            outage_s,
            servers,
            lambda: harness.start_seaweed(work / "s3", ports=ports),
        )


def redis_drill(
    jobs: int,
    outage_s: float,
    settings: dict[str, str],
    home: Path | None = None,
    bucket: str = BUCKET,
    s3_url: str | None = None,
) -> Figures:
    """Redis (AOF) SIGKILLed under `jobs` running downloads, restarted on its port after `outage_s`.

    `s3_url`: an S3 whose `bucket` holds the demo files already (default: a private one)."""
    redis_binary = shutil.which("redis-server")
    with _workdir(home) as work, contextlib.ExitStack() as stops:
        port = harness.free_port()
        servers = [harness.start_redis(work / "redis", port=port, binary=redis_binary, aof=True)]
        stops.callback(lambda: _end(servers))
        if s3_url is None:
            s3 = harness.start_seaweed(work / "s3")
            stops.callback(s3.stop)
            harness.seed(harness.s3_client(s3.url, harness.DEV_ACCESS_KEY, harness.DEV_SECRET_KEY), bucket)
            s3_url = s3.url
        env = harness.stack_env(servers[0].url, s3_url, bucket, **_drill_settings(jobs, settings))
        return _outage(
            "Redis killed",
            env,
            work,
            jobs,
            outage_s,
            servers,
            lambda: harness.start_redis(work / "redis", port=port, binary=redis_binary, aof=True),
        )


def _outage(
    name: str,
    env: dict[str, str],
    work: Path,
    jobs: int,
    outage_s: float,
    servers: list[harness.Server],
    restart: Callable[[], harness.Server],
) -> Figures:
    """The drill itself: `jobs` downloads running on a stack, `servers[0]` SIGKILLed, restarted
    by `restart` (appended to `servers`) after `outage_s`, and every job followed to its end."""
    with harness.running_stack(env, work / "logs") as stack, stack.client() as client:
        ids = _start_jobs(client, jobs)
        before = _done_now(client, ids)
        killed = time.monotonic()
        servers[0].kill()
        _wait_out(killed, outage_s)
        servers.append(restart())
        back = time.monotonic()
        figures = Figures(name, jobs, back - killed)
        _follow(client, ids, before, figures, back)
        figures.worker_log = stack.workers[0].output()
    figures.reaped = _reaped(figures.worker_log)
    return figures


@dataclass
class Timed:
    """One request's answer and how long it took."""

    response: httpx.Response
    seconds: float


def _timed(call: Callable[[], httpx.Response]) -> Timed:
    started = time.perf_counter()
    response = call()
    return Timed(response, time.perf_counter() - started)


@dataclass
class HungFigures:
    """What the hung-S3 drill saw."""

    baseline_cancel: Timed  # S3 healthy
    ready: Timed
    health: Timed
    checks: list[Timed]
    cancel: Timed  # while the checks were in flight
    check_after: Timed | None = None  # once S3 answered again

    def lines(self) -> str:
        statuses = Counter(t.response.status_code for t in self.checks)
        slowest = max(t.seconds for t in self.checks)
        return (
            "| what | answer | took |\n|---|---|---|\n"
            f"| cancel, S3 healthy | {self.baseline_cancel.response.status_code} "
            f"| {self.baseline_cancel.seconds * 1000:.0f} ms |\n"
            f"| `/health/ready`, S3 hung | {self.ready.response.status_code} {self.ready.response.text} "
            f"| {self.ready.seconds:.2f} s |\n"
            f"| `/health`, S3 hung | {self.health.response.status_code} | {self.health.seconds:.2f} s |\n"
            f"| {len(self.checks)} concurrent `/v1/download/check`, S3 hung | {dict(statuses)} "
            f"| slowest {slowest:.2f} s |\n"
            f"| cancel during those checks | {self.cancel.response.status_code} "
            f"| {self.cancel.seconds * 1000:.0f} ms |"
        )


def hung_s3_drill(checks: int, settings: dict[str, str], home: Path | None = None) -> HungFigures:
    """S3 frozen by SIGSTOP under the API (no worker): health, checks and a cancel, timed."""
    redis_binary = shutil.which("redis-server")
    with _workdir(home) as work, contextlib.ExitStack() as stops:
        redis_server = harness.start_redis(work / "redis", binary=redis_binary)
        stops.callback(redis_server.stop)
        s3 = harness.start_seaweed(work / "s3")
        stops.callback(s3.stop)
        stops.callback(lambda: s3.process.send_signal(signal.SIGCONT))  # runs first
        harness.seed(harness.s3_client(s3.url, harness.DEV_ACCESS_KEY, harness.DEV_SECRET_KEY), BUCKET)
        env = harness.stack_env(redis_server.url, s3.url, BUCKET, **{**DRILL_SETTINGS, **settings})
        with (
            harness.running_stack(env, work / "logs", workers=0) as stack,
            httpx.Client(base_url=stack.url, timeout=120) as client,
        ):
            queued = []
            for _ in range(2):
                response = client.post("/v1/download/initiate", json={"file_ids": FILES[:1]})
                assert response.status_code == 202, response.text
                queued.append(response.json()["jobId"])
            baseline = _timed(lambda: client.delete(f"/v1/download/{queued[0]}"))
            s3.process.send_signal(signal.SIGSTOP)
            ready = _timed(lambda: client.get("/health/ready"))
            health = _timed(lambda: client.get("/health"))
            with ThreadPoolExecutor(checks) as pool:
                check = {"file_id": FILES[0]}
                futures = [
                    pool.submit(_timed, lambda: client.post("/v1/download/check", json=check))
                    for _ in range(checks)
                ]
                time.sleep(0.2)  # the checks reach the API first
                cancel = _timed(lambda: client.delete(f"/v1/download/{queued[1]}"))
                answers = [future.result() for future in futures]
            figures = HungFigures(baseline, ready, health, answers, cancel)
            s3.process.send_signal(signal.SIGCONT)

            def storage_ok() -> bool:
                return client.get("/health/ready").json()["checks"]["storage"] == "ok"

            harness.wait_until(storage_ok, 60, "S3 healthy again", retry_on=(httpx.HTTPError,))
            figures.check_after = _timed(lambda: client.post("/v1/download/check", json=check))
        return figures


def log_events(log: str, event: str) -> list[dict[str, Any]]:
    """The worker's JSON log lines with this `event`."""
    found = []
    for line in log.splitlines():
        if f'"{event}"' in line:
            with contextlib.suppress(ValueError):
                found.append(json.loads(line))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--s3-outage", type=float, default=20.0, help="seconds S3 stays down (0: skip)")
    parser.add_argument("--redis-outage", type=float, default=10.0, help="seconds Redis stays down (0: skip)")
    parser.add_argument("--delay-ms", type=int, default=8000, help="each job's simulated processing time")
    parser.add_argument("--retry-base", type=float, default=2.0, help="JOB_RETRY_BASE_S (deployed: 2)")
    parser.add_argument("--retries", type=int, default=3, help="JOB_MAX_RETRIES (deployed: 3)")
    parser.add_argument("--allowance", type=float, default=180.0, help="JOB_OUTAGE_ALLOWANCE_S")
    parser.add_argument("--checks", type=int, default=48, help="hung-S3 drill's concurrent checks (0: skip)")
    args = parser.parse_args()
    settings = {
        "DOWNLOAD_DELAY_MIN_MS": str(args.delay_ms),
        "DOWNLOAD_DELAY_MAX_MS": str(args.delay_ms),
        "JOB_RETRY_BASE_S": str(args.retry_base),
        "JOB_MAX_RETRIES": str(args.retries),
        "JOB_OUTAGE_ALLOWANCE_S": str(args.allowance),
    }
    drills: list[Callable[[], Figures]] = []
    if args.s3_outage:
        drills.append(lambda: s3_drill(args.jobs, args.s3_outage, settings))
    if args.redis_outage:
        drills.append(lambda: redis_drill(args.jobs, args.redis_outage, settings))
    rows = [drill() for drill in drills]
    if rows:
        print(HEADER)
        for figures in rows:
            print(figures.line())
    if args.checks:
        # S3's deployed attempts (4): the hang a client saw on main was that many read timeouts
        print(hung_s3_drill(args.checks, {"S3_MAX_ATTEMPTS": "4"}).lines())


if __name__ == "__main__":
    main()
