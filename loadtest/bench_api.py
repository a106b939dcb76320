"""API benchmark (issue targets), one run, side by side, same uvicorn settings, printed with ratios.

0. GET / with every middleware (request id, security headers, shared rate limit, metrics,
   access log) vs a bare Starlette endpoint answering the same JSON.               target >= 0.4
1. GET /v1/download/status/{id}, all middleware on (request id, headers, shared rate limit,
   metrics, access log) vs a bare Starlette endpoint doing one async Redis GET.   target >= 0.8
2. POST /v1/download/initiate (validation, state writes, enqueue) vs a bare endpoint that only
   calls RQ's Queue.enqueue in the thread pool.                      target >= 1.5x, p99 <= 100 ms
3. initiate -> completed for a zero-delay single-file job with an idle worker (the job's own
   createdAt/finishedAt, server clocks), p50 and p99.                          target p50 <= 50 ms

With --replica-ack, a replica of the private Redis is started too, and a second API that waits
for it to confirm each job (REDIS_MIN_REPLICAS_ACK=1, Redis WAIT) is measured against the
first, round by round (2b): what durable acceptance costs initiate.

Every server is one uvicorn process (uvloop, httptools, no proxy headers, no Server header) on
a private Redis and SeaweedFS S3. The real API is `delineate api` itself (its HTTP protocol
class and connection limit too), logging JSON, one access line per request, with a rate-limit
budget and QUEUE_MAX_DEPTH too large to refuse anything and PER_CLIENT_MAX_ACTIVE_JOBS=0
(every request comes from one client). Replaces the former
observability/bench/status_throughput.py.
Load: wrk -t2 -c64 on the same 2-core machine (shared: figures are noisy, compare within a run).

    .venv/bin/python loadtest/bench_api.py [--seconds 5] [--rounds 3] [--replica-ack]
        [--only root,status,initiate,latency] [--profile DIR] [--against DIR]

With --against DIR (another version's checkout, e.g. `git archive main | tar -x -C DIR`), a
third API runs that version's code on the same backends, and parts 0, 1 and 2 measure it in the
same rounds: each change's before and after, as ratios to the same floor.

Each aim's verdict is printed as `aim ...: PASS` or `FAIL`, judged on the medians of the rounds
(the ratio, and for initiate the p99 too).

With --profile DIR, py-spy samples the real API (native frames off, idle threads off) during one
extra wrk run of each of `GET /` and status, and writes DIR/root.txt and DIR/status.txt: the
collapsed stacks, for `flamegraph.pl` or speedscope, and a summary of where the time went,
printed too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path

import httpx

from backends import LOAD_SETTINGS
from floor import serve, serve_api, wrk
from service import harness
from service.harness import Backends, Proc

BARE = textwrap.dedent(
    """
    import os
    import redis, redis.asyncio as aioredis
    from rq import Queue
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    r = aioredis.Redis.from_url(os.environ["REDIS_URL"])
    q = Queue("bench", connection=redis.Redis.from_url(os.environ["REDIS_URL"]))

    async def root(request):
        return JSONResponse({"message": os.environ["BENCH_ROOT_MESSAGE"], "docs": "/docs"})

    async def get(request):
        return JSONResponse({"v": (await r.get("bench")).decode()})

    async def enqueue(request):
        body = await request.json()
        job = await run_in_threadpool(q.enqueue, "builtins.len", body["file_ids"])
        return JSONResponse({"jobId": job.id}, 202)

    app = Starlette(
        routes=[Route("/", root), Route("/get", get), Route("/enqueue", enqueue, methods=["POST"])]
    )
    """
)
POST_LUA = (
    'wrk.method = "POST"\n'
    "wrk.body = '{\"file_ids\": [70000]}'\n"
    'wrk.headers["Content-Type"] = "application/json"\n'
)


PARTS = ("root", "status", "initiate", "latency")
SERVERS: dict[str, int] = {}  # base URL -> the pid serving it, for its CPU time


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (/proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(url: str, seconds: int, script: Path | None) -> tuple[float, float, float]:
    """wrk on `url`: req/s, p99 (ms), and the serving process's CPU per request (µs), which a
    tenant's burst on the shared machine moves far less than req/s (it lowers both the requests
    and the process's CPU time)."""
    pid = next(pid for base, pid in SERVERS.items() if url.startswith(base))
    before = cpu_seconds(pid)
    rps, p99 = wrk(url, seconds, script)
    return rps, p99, (cpu_seconds(pid) - before) / (rps * seconds) * 1e6


def profile(pid: int, url: str, out: Path, seconds: int) -> None:
    """py-spy samples process `pid` while wrk loads `url`; prints the share of samples per
    frame of ours, middleware and library alike (a frame counts once per sample it is on)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    spy = subprocess.Popen(
        [
            "py-spy",
            "record",
            "--pid",
            str(pid),
            "--rate",
            "500",
            "--duration",
            str(seconds + 1),
            "--format",
            "raw",
            "--output",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rps, p99 = wrk(url, seconds)
    spy.wait(timeout=seconds + 30)
    totals: dict[str, int] = {}
    samples = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples += int(count)
        for frame in set(stack.split(";")):
            totals[frame] = totals.get(frame, 0) + int(count)
    print(f"   profile of {url} under wrk ({rps:.0f} req/s, p99 {p99:.1f} ms): {samples} samples, {out}")
    for frame, count in sorted(totals.items(), key=lambda item: -item[1])[:40]:
        print(f"   {100 * count / samples:5.1f} %  {frame}")


def side_by_side(
    bare_url: str,
    real_url: str,
    name: str,
    args: argparse.Namespace,
    script: Path | None,
    target: float,
    base: str = "bare",
    before_url: str | None = None,
    p99_target_ms: float | None = None,
) -> float:
    """Bare and real in alternation, round after round: the machine's drift (a shared VM's
    throughput moved by 30 % within minutes here) hits both sides of each round alike. The
    median of the per-round ratios is the figure, judged against `target` (and the median p99
    against `p99_target_ms`). With `before_url` (the same route served by the --against
    checkout) it is measured in the same rounds: before/after on one machine."""
    ratios, before_ratios, p99s, before_p99s, cpu_ratios, before_cpu_ratios = [], [], [], [], [], []
    for round_no in range(1, args.rounds + 1):
        b_rps, b_p99, b_cpu = measured(bare_url, args.seconds, script)
        r_rps, r_p99, r_cpu = measured(real_url, args.seconds, script)
        ratios.append(r_rps / b_rps)
        cpu_ratios.append(b_cpu / r_cpu)
        p99s.append(r_p99)
        line = (
            f"   round {round_no}: {base} {b_rps:6.0f} req/s p99 {b_p99:6.1f} ms {b_cpu:5.0f} us CPU | "
            f"{name} {r_rps:6.0f} req/s p99 {r_p99:6.1f} ms {r_cpu:5.0f} us CPU | ratio {ratios[-1]:.2f}"
        )
        if before_url:
            o_rps, o_p99, o_cpu = measured(before_url, args.seconds, script)
            before_ratios.append(o_rps / b_rps)
            before_cpu_ratios.append(b_cpu / o_cpu)
            before_p99s.append(o_p99)
            line += (
                f" | before {o_rps:6.0f} req/s p99 {o_p99:6.1f} ms {o_cpu:5.0f} us CPU"
                f" | ratio {before_ratios[-1]:.2f}"
            )
        print(line)
    cpu = f"; CPU per request, {base}'s / {name}'s: median {statistics.median(cpu_ratios):.2f}"
    ratio, p99 = statistics.median(ratios), statistics.median(p99s)
    aim = f"target >= {target:.2f}" + (f", p99 <= {p99_target_ms:.0f} ms" if p99_target_ms else "")
    print(f"   {name}: median ratio {ratio:.2f}, median p99 {p99:.1f} ms ({aim}){cpu}")
    if before_ratios:
        print(
            f"   {name} before ({args.against}): median ratio {statistics.median(before_ratios):.2f}, "
            f"median p99 {statistics.median(before_p99s):.1f} ms; CPU per request, {base}'s / before's: "
            f"median {statistics.median(before_cpu_ratios):.2f}"
        )
    if base == "bare":
        met = ratio >= target and (p99_target_ms is None or p99 <= p99_target_ms)
        print(f"   aim {name} ({aim}): {'PASS' if met else 'FAIL'}")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=5, help="per side and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=200, help="jobs for the latency figure")
    parser.add_argument(
        "--replica-ack", action="store_true", help="also initiate with a replica confirming each job (WAIT)"
    )
    parser.add_argument(
        "--only",
        default=",".join(PARTS),
        help=f"comma-separated parts to run, of {','.join(PARTS)} (default: all)",
    )
    parser.add_argument(
        "--against", type=Path, help="a checkout of another version, measured in the same rounds"
    )
    parser.add_argument("--profile", type=Path, help="py-spy the API under wrk; write stacks here")
    args = parser.parse_args()
    args.only = {part for part in args.only.split(",") if part}
    if unknown := args.only - set(PARTS):
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")
    with harness.private_backends("delineate-bench-", "delineate", settings=LOAD_SETTINGS) as backends:
        bench(args, backends)


def bench(args: argparse.Namespace, backends: Backends) -> None:
    home = backends.home
    env = backends.env(  # the queue depth check still runs, it never refuses here
        DOWNLOAD_DELAY_ENABLED="false",
        DEDUPE_WINDOW_S="0",  # every benchmark request is a new job
        PYTHONPATH=str(home),
        PROMETHEUS_MULTIPROC_DIR=str(home / "prom"),
    )
    (home / "prom").mkdir()
    (home / "bench_bare.py").write_text(BARE)
    lua = home / "post.lua"
    lua.write_text(POST_LUA)
    procs: list[Proc] = []
    try:
        import redis

        redis.Redis.from_url(backends.redis.url).set("bench", "x" * 200)
        bare_port = harness.free_port()
        logs, service = home / "logs", harness.PACKAGE_PARENT
        real_env = {**env, "LOG_LEVEL": "info"}
        api, real = serve_api("api", real_env, logs, service)
        procs.append(api)
        SERVERS[real] = api.process.pid
        message = httpx.get(f"{real}/").json()["message"]  # the bare root answers the same JSON
        bare_env = {**env, "BENCH_ROOT_MESSAGE": message}
        procs.append(serve("bare", "bench_bare:app", bare_env, bare_port, logs, home))
        bare = f"http://127.0.0.1:{bare_port}"
        SERVERS[bare] = procs[-1].process.pid
        before = None
        if args.against:
            before_api, before = serve_api("before", real_env, logs, args.against.resolve())
            procs.append(before_api)
            SERVERS[before] = before_api.process.pid
        job = httpx.post(f"{real}/v1/download/initiate", json={"file_ids": [70000]}).json()["jobId"]
        each = f"{args.rounds} rounds of {args.seconds} s each, wrk -t2 -c64"

        if args.profile:
            api = procs[0].process.pid
            profile(api, f"{real}/", args.profile / "root.txt", args.seconds)
            profile(api, f"{real}/v1/download/status/{job}", args.profile / "status.txt", args.seconds)
        if "root" in args.only:
            print(f"0. GET / vs bare Starlette answering the same JSON ({each})")
            side_by_side(f"{bare}/", f"{real}/", "root", args, None, 0.40, before_url=before and f"{before}/")
        if "status" in args.only:
            print(f"1. status route vs bare Starlette + one async Redis GET ({each})")
            status = f"/v1/download/status/{job}"
            side_by_side(
                f"{bare}/get",
                real + status,
                "status",
                args,
                None,
                0.80,
                before_url=before and before + status,
            )
        if "initiate" in args.only:
            print("2. initiate vs bare Queue.enqueue in the thread pool")
            side_by_side(
                f"{bare}/enqueue",
                f"{real}/v1/download/initiate",
                "initiate",
                args,
                lua,
                1.50,
                before_url=before and f"{before}/v1/download/initiate",
                p99_target_ms=100,
            )
        if args.replica_ack:
            replica = harness.start_redis(
                home / "replica", binary=shutil.which("redis-server"), replica_of=backends.redis
            )
            procs.append(replica)
            harness.wait_until(lambda: harness.replica_synced(replica), 10, "replica synced")
            acked_env = {**real_env, "REDIS_MIN_REPLICAS_ACK": "1"}
            acked_api, acked = serve_api("api-acked", acked_env, logs, service)
            procs.append(acked_api)
            SERVERS[acked] = acked_api.process.pid
            print("2b. initiate with REDIS_MIN_REPLICAS_ACK=1 (a replica confirms each job) vs without")
            side_by_side(
                f"{real}/v1/download/initiate",
                f"{acked}/v1/download/initiate",
                "initiate+WAIT",
                args,
                lua,
                0.0,  # no aim: what durable acceptance keeps
                base="initiate",
            )

        if "latency" not in args.only:
            return
        print(
            f"3. initiate -> completed, zero delay, one file, idle worker ({args.jobs} jobs, one at a time)"
        )
        redis.Redis.from_url(backends.redis.url).flushdb()  # our private server: drop the queued backlog
        worker = [sys.executable, "-m", "service", "worker"]
        procs.append(harness.spawn("worker", worker, {**env, "LOG_LEVEL": "warning"}, home / "logs"))
        latencies = []
        with httpx.Client(base_url=real, timeout=10) as http:
            for _ in range(args.jobs):
                job_id = http.post("/v1/download/initiate", json={"file_ids": [70000]}).json()["jobId"]
                while (body := http.get(f"/v1/download/status/{job_id}").json())["status"] != "completed":
                    time.sleep(0.002)
                created = datetime.fromisoformat(body["createdAt"])
                ms = (datetime.fromisoformat(body["finishedAt"]) - created).total_seconds() * 1000
                latencies.append(ms)
        latencies.sort()
        p50, p99 = statistics.median(latencies), latencies[int(0.99 * (len(latencies) - 1))]
        print(f"   p50 {p50:.1f} ms  p99 {p99:.1f} ms   (target p50 <= 50 ms)")
        print(json.dumps({"latency_ms": {"p50": p50, "p99": p99}}))
    finally:
        with contextlib.ExitStack() as stops:  # every one stopped, each asserting a clean exit
            for proc in procs:
                stops.callback(proc.stop)


if __name__ == "__main__":
    main()
