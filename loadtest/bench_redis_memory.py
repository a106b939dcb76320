"""Redis memory per job, for sizing a Redis that runs with `noeviction` (docs/ARCHITECTURE.md).

A private Redis + SeaweedFS S3, one API process and one worker started the production way.
N jobs are initiated over HTTP (each with an Idempotency-Key, as a retrying client sends them,
three files each), then run by the worker with short delays. Redis's `used_memory` is read
before, with every job queued, and with every job finished (kept JOB_TTL_S for status, SSE
resume and webhooks), and the finished keys are grouped by pattern with MEMORY USAGE: what
each kind of key costs per job, and which keys outlive the jobs.

    .venv/bin/python loadtest/bench_redis_memory.py [--jobs 2000] [--files 3]

Measured 2026-11-29, Redis 7.0 (Debian), --jobs 2000: queued 4.6 KB, finished
6.5 KB per job (--files 1 about the same); the events stream, RQ's job hash and RQ's results
stream are 1.7-1.8 KB each. With Redis's default stream-node-max-bytes (4096, before compose and
the embedded Redis set 1024) it was 7.7 and 12.7 KB: each small stream preallocated a 4 KB node.
Small runs are dominated by RQ's fixed keys (50 jobs: 25 KB per job).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass

import httpx
import redis

from backends import LOAD_SETTINGS
from service import keys
from service.harness import Backends, private_backends, spawn, start_api
from service.jobs import state

BUCKET = "delineate"

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
HEX = re.compile(r"\b[0-9a-f]{16,}\b")


def pattern(key: str) -> str:
    return HEX.sub("{hash}", UUID.sub("{id}", key))


Groups = dict[str, tuple[int, int]]  # key pattern -> (keys, bytes by MEMORY USAGE)


def memory(conn: redis.Redis) -> tuple[int, int]:
    """(used_memory, DBSIZE)."""
    return int(conn.info("memory")["used_memory"]), int(conn.dbsize())


def unfinished(conn: redis.Redis, job_ids: list[str]) -> int:
    with conn.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hget(keys.job(job_id), "status")
        return sum(1 for status in pipe.execute() if status is None or status.decode() not in state.TERMINAL)


def by_pattern(conn: redis.Redis) -> Groups:
    """The whole database's keys grouped by pattern (ids and hashes replaced)."""
    groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for key in conn.scan_iter(count=1000):
        name = key.decode()
        group = groups[pattern(name)]
        group[0] += 1
        group[1] += conn.memory_usage(name, samples=0) or 0
    return {name: (keys, size) for name, (keys, size) in groups.items()}


@dataclass
class Figures:
    """used_memory and DBSIZE with nothing, every job queued and every job finished."""

    empty: tuple[int, int]
    queued: tuple[int, int]
    finished: tuple[int, int]
    unfinished: int  # jobs not finished at the timeout
    groups: Groups  # the finished database by key pattern


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--files", type=int, default=3, help="file ids per job (one file: no zip)")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    with private_backends("delineate-bench-redis-", BUCKET, settings=LOAD_SETTINGS) as backends:
        figures = measure(args, backends)
    report(args, figures)


def measure(args: argparse.Namespace, backends: Backends) -> Figures:
    env = backends.env(DOWNLOAD_DELAY_MIN_MS="1", DOWNLOAD_DELAY_MAX_MS="5")
    logs = backends.home / "logs"
    conn = redis.Redis.from_url(backends.redis.url)
    procs = []
    try:
        api, url = start_api(env, logs)
        procs.append(api)
        with httpx.Client(base_url=url, timeout=30) as http:
            http.get("/health")  # the API's own keys (rate limit, health) before the baseline
            time.sleep(0.5)
            empty = memory(conn)
            job_ids = []
            for i in range(args.jobs):
                file_ids = [10_000 + (i * args.files + n) % 90_000 for n in range(args.files)]
                response = http.post(
                    "/v1/download/initiate",
                    json={"file_ids": file_ids},
                    headers={"Idempotency-Key": str(uuid.uuid4())},
                )
                response.raise_for_status()
                job_ids.append(response.json()["jobId"])
        queued = memory(conn)
        procs.append(spawn("worker", [sys.executable, "-m", "service", "worker"], env, logs))
        deadline = time.monotonic() + args.timeout
        while (left := unfinished(conn, job_ids)) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)  # RQ's own bookkeeping after the last job returns
        return Figures(empty, queued, memory(conn), left, by_pattern(conn))
    finally:
        conn.close()
        with contextlib.ExitStack() as stops:  # every one stopped, each asserting a clean exit
            for proc in procs:
                stops.callback(proc.stop)


def report(args: argparse.Namespace, figures: Figures) -> None:
    n = args.jobs
    (empty, empty_keys) = figures.empty
    print(f"Redis memory per job: {n} jobs of {args.files} file(s), one API process, one worker")
    print(f"  empty database: used_memory {empty / 2**20:.2f} MiB, {empty_keys} keys")
    for name, (used, key_count) in (("queued", figures.queued), ("finished", figures.finished)):
        print(
            f"  all {name + ':':9} {(used - empty) / n:7.0f} bytes per job, "
            f"{(key_count - empty_keys) / n:.1f} keys per job"
        )
    print(f"  jobs still active after {args.timeout:.0f} s: {figures.unfinished}")
    print("  finished, by key pattern (MEMORY USAGE; 'per job' = bytes / jobs):")
    for name, (key_count, size) in sorted(figures.groups.items(), key=lambda item: -item[1][1]):
        print(f"    {size / n:7.0f} B/job  {key_count:6d} keys  {name}")


if __name__ == "__main__":
    main()
