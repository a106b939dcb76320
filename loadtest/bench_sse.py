"""SSE fan-out benchmark (issues #3 and #22): N concurrent streams on one API process.

Aims (issue #22 aim 4): 10,000 streams on one API process, RSS <= 30 KiB per stream; when 50
jobs end within 0.5 s, p99 from a job's `finishedAt` to its clients' reconnect being answered
204 <= 250 ms; with --phases, each per-stream CPU <= 1.5x the bare floor's.

A private Redis + SeaweedFS S3, one API process started the production way (`python -m
service api`: uvicorn, 1 worker, uvloop + httptools, the tests' time-compressed delays of
100-300 ms) and, once every subscriber is connected, one worker. The stream caps are set by
environment to admit every stream (API_MAX_CONNECTIONS 2 x N + 1000: uvicorn counts running
requests as well as connections, and a stream's request still runs in WindDown when its
client's reconnect arrives; SSE_MAX_STREAMS and SSE_MAX_STREAMS_PER_CLIENT N + 100), and
RLIMIT_NOFILE is raised to the hard limit for this client and the API. Jobs are queued first;
the client opens N streams spread over --jobs jobs (all on one job with --jobs 1), waits for
each stream's snapshot, and reads the API's VmRSS before and after (delta / N). Then the worker
runs the jobs and every subscriber records when the terminal event's bytes arrived (wall clock
in `data_received`, before parsing) and then, as EventSource does when a stream ends, sends a
GET with Last-Event-ID on the same keep-alive connection (at once, not after `retry`: every
reconnect lands in the burst) and records when its 204 arrived. Delays run from the job's
`finishedAt` (ms precision, taken by the worker just before its terminal MULTI); the terminal
event is also shown against its Redis Stream id (the Redis clock at the XADD). One machine, so
one clock.

The client is this process: one asyncio Protocol per connection (no task per connection),
httptools to de-chunk, uvloop. On a shared 2-core box the client's own CPU time is part of the
figures (it is conservative: a receive timestamp can only be late).

    .venv/bin/python loadtest/bench_sse.py [--subscribers 10000] [--jobs 50] [--batch 200]

    .venv/bin/python loadtest/bench_sse.py --phases 2   # per-stream costs, all streams on one job

`--phases` measures the API's CPU per stream for one event, for the last event with the
stream's ending, and for every client's reconnect (Last-Event-ID, answered 204), then runs
loadtest/sse_floor.py (a bare ASGI app, one task per stream, answering such a reconnect 204 too)
on the same uvicorn with the same client, and prints the service's costs as ratios to that
floor, and the RSS per stream, each with its aim.

Measured 2026-12-02 on a shared 2-core VM (1-min load 3-9, another tenant benchmarking),
10,000 streams, one API process (docs/benchmarks.md has every run):
- RSS 25-26 KiB per stream (PASS). Redis PUBSUB NUMSUB delineate:events = 1.
- Bunched ends (50 jobs ending within 1.0-1.3 s), back to back at load 4.2 then 2.8: API CPU
  from the worker's start 26.5 s before this session's changes, 3.0 s after; finishedAt -> 204
  p99 26.1 s before, 2.3 s after (FAIL; 5.3 s in a run at load 7). Bare uvicorn needs ~0.2 ms
  per stream for the same writes, ending and reconnect: the aim is out of reach here.
- --phases 2, service / bare: one event 38-48 / 42-43 us (ratio 0.91-1.11; the floor itself
  swings 19-50 us between runs), the ending 87-91 / 23-25 us (3.5-3.9, FAIL), the reconnect
  202-215 / 108-119 us (1.8-1.9, FAIL; 1583 us, ratio 14.4, before). The cyclic GC took
  2.8-3.9 s of a bunched run's 11-13 s of API CPU (a 0.8-1 s gen2 pause inside the burst).
Runs where the line "API CPU ... % of the window" is far below 100% were starved by other
processes on the machine; compare CPU figures, not delays, across such runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httptools
import httpx
import redis
import redis.asyncio as aioredis
import uvloop

from backends import LOAD_SETTINGS
from procstat import threads_cpu_s, usage
from service import harness, keys
from service.harness import Backends, Proc, private_backends, spawn, start_api
from service.jobs import state

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "delineate"

TARGET_P99_MS = 250.0
TARGET_KIB_PER_CONNECTION = 30.0
TARGET_RATIO = 1.5  # --phases: the service's CPU per stream to the bare floor's
TERMINAL = {e.encode() for e in state.TERMINAL}


@dataclass(eq=False)
class Subscriber(asyncio.Protocol):
    """One SSE stream: parses just enough to time the snapshot, the terminal event and the
    reconnect after it.

    A real EventSource reconnects when a stream ends, with Last-Event-ID: after the terminal
    event the API answers that request 204 and the client stops. With `reconnect` the
    subscriber sends that GET as soon as the stream's response is complete, on the same
    keep-alive connection (as a browser's connection pool would), without waiting the `retry`
    interval (SSE_RETRY_MS): every reconnect lands in the burst, the worst case for the API.
    `closed` resolves when the 204 has arrived.
    """

    request: bytes
    snapshot: asyncio.Future[None]
    finished: asyncio.Future[None]
    closed: asyncio.Future[None]
    reconnect_at_end: bool = True
    status: int = 0
    terminal: dict[str, object] | None = None
    transport: asyncio.Transport | None = None
    _buffer: bytes = b""
    _arrived: float = 0.0
    _resumed: bool = False
    _parser: httptools.HttpResponseParser = field(init=False)

    def __post_init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self._arrived = time.time()  # first thing: the bytes are here
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("closed before the terminal event and the 204"))

    def _fail(self, exc: BaseException) -> None:
        for future in (self.snapshot, self.finished, self.closed):
            if not future.done():
                future.set_exception(exc)

    def reconnect(self) -> None:
        """What EventSource does when the stream has ended: GET again with Last-Event-ID."""
        assert self.terminal is not None and self.transport is not None
        self._resumed = True
        head, _, _ = self.request.partition(b"\r\n\r\n")
        self.transport.write(head + b"\r\nLast-Event-ID: " + str(self.terminal["id"]).encode() + b"\r\n\r\n")

    # httptools callbacks
    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        if self.status != (204 if self._resumed else 200):
            self._fail(ConnectionError(f"HTTP {self.status}"))

    def on_body(self, body: bytes) -> None:
        self._buffer = (self._buffer + body).replace(b"\r\n", b"\n")
        while b"\n\n" in self._buffer:
            block, _, self._buffer = self._buffer.partition(b"\n\n")
            self._event(block)

    def on_message_complete(self) -> None:
        if self._resumed:  # the 204
            if self.terminal is not None and self.status == 204:
                self.terminal["closed_at"] = self._arrived
            if not self.closed.done():
                self.closed.set_result(None)
            if self.transport:
                self.transport.close()
            return
        if not self.finished.done():
            self._fail(ConnectionError("stream ended without a terminal event"))
            if self.transport:
                self.transport.close()
        elif self.reconnect_at_end:
            self.reconnect()

    def _event(self, block: bytes) -> None:
        fields: dict[bytes, bytes] = {}
        for line in block.split(b"\n"):
            if line and not line.startswith(b":"):
                name, _, value = line.partition(b":")
                fields[name] = value.removeprefix(b" ")
        name = fields.get(b"event")
        if name == b"snapshot" and not self.snapshot.done():
            self.snapshot.set_result(None)
        elif name in TERMINAL and not self.finished.done():
            data = json.loads(fields[b"data"])
            self.terminal = {"at": self._arrived, "id": fields[b"id"].decode(), **data}
            self.finished.set_result(None)


def median_delay(got: list[dict[str, object]], job_id: str) -> float:
    mine = [t for t in got if t["jobId"] == job_id]
    return statistics.median((float(t["at"]) - iso_seconds(str(t["finishedAt"]))) * 1000 for t in mine)


def rss_kib(pid: int) -> int:
    return usage(pid, {}).rss // 1024


def cpu_s(pid: int) -> float:
    """CPU seconds over the process's life, exited threads included (a worker's downloads run
    in threads that end), in 10 ms ticks: for spans of seconds."""
    return usage(pid, {}).cpu_s


def raise_nofile(wanted: int) -> int:
    """Soft RLIMIT_NOFILE up to the hard limit; children (the API) inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = hard if hard != resource.RLIM_INFINITY else max(soft, wanted)
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    if new < wanted:
        print(f"warning: RLIMIT_NOFILE hard limit {hard} < {wanted} wanted", file=sys.stderr)
    return new


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def iso_seconds(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


async def connect_all(
    port: int, job_ids: list[str], per_job: int, batch: int, reconnect_at_end: bool = True
) -> tuple[list[Subscriber], list[BaseException]]:
    """Open the streams, at most `batch` not yet streaming at once (uvicorn's backlog is 2048)."""
    loop = asyncio.get_running_loop()
    subscribers: list[Subscriber] = []
    errors: list[BaseException] = []
    gate = asyncio.Semaphore(batch)

    async def one(job_id: str) -> None:
        async with gate:
            request = (
                f"GET /v1/download/stream/{job_id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Accept: text/event-stream\r\n\r\n"
            ).encode()
            sub = Subscriber(
                request, loop.create_future(), loop.create_future(), loop.create_future(), reconnect_at_end
            )
            for future in (sub.finished, sub.closed):
                future.add_done_callback(lambda f: f.exception())  # retrieved later; no warning
            try:
                await loop.create_connection(lambda: sub, "127.0.0.1", port)
                await asyncio.wait_for(sub.snapshot, 60)
                subscribers.append(sub)
            except Exception as exc:
                errors.append(exc)

    await asyncio.gather(*(one(job_id) for _ in range(per_job) for job_id in job_ids))
    return subscribers, errors


def redis_view(url: str) -> tuple[int, int, int]:
    """(PUBSUB NUMSUB of the events channel, clients subscribed to anything, all clients)."""
    conn = redis.Redis.from_url(url)
    try:
        numsub = dict(conn.pubsub_numsub(keys.EVENTS_CHANNEL))
        clients = conn.client_list()
        subscribed = sum(1 for c in clients if int(c.get("sub", 0)) + int(c.get("psub", 0)) > 0)
        return int(numsub.get(keys.EVENTS_CHANNEL.encode(), 0)), subscribed, len(clients)
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, default=10000)
    parser.add_argument("--jobs", type=int, default=50, help="subscribers are spread evenly (1: all on one)")
    parser.add_argument(
        "--batch", type=int, default=200, help="streams being opened at once (< uvicorn's backlog, 2048)"
    )
    parser.add_argument(
        "--delay-ms", default="100-300", help="DOWNLOAD_DELAY_MIN_MS-MAX_MS: how bunched completions are"
    )
    parser.add_argument("--pin", action="store_true", help="API on CPU 0, client and worker on CPU 1")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds before the loaded RSS read")
    parser.add_argument("--timeout", type=float, default=120.0, help="for every terminal event")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    parser.add_argument(
        "--phases",
        type=int,
        metavar="ROUNDS",
        help="instead: API CPU per stream for an event and for a stream's ending, all streams on one "
        "job, events written straight to Redis (no worker), ROUNDS rounds",
    )
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    per_job = max(1, args.subscribers // args.jobs)
    total = per_job * args.jobs
    nofile = raise_nofile(total + 1024)

    with private_backends("delineate-bench-sse-", BUCKET, settings=LOAD_SETTINGS, keep=args.keep) as backends:
        bench(args, backends, per_job, total, nofile)


def bench(args: argparse.Namespace, backends: Backends, per_job: int, total: int, nofile: int) -> None:
    """The API (and, for the fan-out run, a worker) on `backends`; then the chosen mode."""
    home = backends.home
    low, _, high = args.delay_ms.partition("-")
    env = backends.env(
        DEDUPE_WINDOW_S="0",  # --jobs identical one-file jobs must stay separate jobs
        # Caps that must admit every stream (the defaults derive them from the fd limit: half of
        # 90 % of it for streams), with room for the reconnects and the script's other requests.
        # uvicorn applies API_MAX_CONNECTIONS to its running requests as well as to connections,
        # and a stream's request still runs (WindDown) when its client's reconnect arrives: 2x.
        API_MAX_CONNECTIONS=str(2 * total + 1000),
        SSE_MAX_STREAMS=str(total + 100),
        SSE_MAX_STREAMS_PER_CLIENT=str(total + 100),
        DOWNLOAD_DELAY_MIN_MS=low,
        DOWNLOAD_DELAY_MAX_MS=high or low,
    )
    procs: list[Proc] = []
    try:
        api, url = start_api(env, home / "logs")
        procs.append(api)
        if args.pin:  # the API alone on CPU 0; this client and the worker (spawned later) on CPU 1
            os.sched_setaffinity(api.process.pid, {0})
            os.sched_setaffinity(0, {1})
        port = int(url.rsplit(":", 1)[1])
        with httpx.Client(base_url=url, timeout=30) as http:
            job_ids = [
                http.post("/v1/download/initiate", json={"file_ids": [70000]}).json()["jobId"]
                for _ in range(args.jobs)
            ]
            for job_id in job_ids[:3]:  # warm the route (imports, caches) before the baseline
                with http.stream("GET", f"/v1/download/stream/{job_id}") as response:
                    next(response.iter_lines())
        time.sleep(1)
        rss_before = rss_kib(api.process.pid)
        cpu_before = cpu_s(api.process.pid)
        print(
            f"SSE fan-out: {total} subscribers over {args.jobs} job(s) ({per_job} each), one API process "
            f"(pid {api.process.pid}), RLIMIT_NOFILE {nofile}, "
            f"load {Path('/proc/loadavg').read_text().split()[0]}"
        )

        if args.phases:
            uvloop.run(phases(args, url, api, backends.redis.url, env, home))
            return
        base = (rss_before, cpu_before)
        uvloop.run(run(args, port, job_ids, per_job, api, env, home, procs, backends.redis.url, base, total))
    finally:
        with contextlib.ExitStack() as stops:  # every one stopped, each asserting a clean exit
            for proc in procs:
                stops.callback(proc.stop)


async def run(
    args: argparse.Namespace,
    port: int,
    job_ids: list[str],
    per_job: int,
    api: Proc,
    env: dict[str, str],
    home: Path,
    procs: list[Proc],
    redis_url: str,
    baseline: tuple[int, float],
    total: int,
) -> None:
    rss_before, cpu_before = baseline
    started = time.monotonic()
    subscribers, errors = await connect_all(port, job_ids, per_job, args.batch)
    connect_s = time.monotonic() - started
    cpu_connect = cpu_s(api.process.pid) - cpu_before
    await asyncio.sleep(args.settle)
    rss_loaded = rss_kib(api.process.pid)
    numsub, subscribed, clients = redis_view(redis_url)
    per_conn = (rss_loaded - rss_before) / max(1, len(subscribers))
    print(
        f"connected {len(subscribers)}/{total} in {connect_s:.1f} s ({len(errors)} errors"
        f"{': ' + repr(errors[0]) if errors else ''}); API CPU {cpu_connect:.1f} s"
    )
    print(
        f"API RSS {rss_before / 1024:.1f} MiB idle -> {rss_loaded / 1024:.1f} MiB with "
        f"{len(subscribers)} streams: {per_conn:.1f} KiB per connection"
    )
    print(
        f"Redis: PUBSUB NUMSUB {keys.EVENTS_CHANNEL} = {numsub}, clients subscribed = {subscribed}, "
        f"all clients = {clients}  ({'PASS' if numsub == 1 else 'FAIL'}: one subscription per process)"
    )

    cpu_mark, client_mark = cpu_s(api.process.pid), time.process_time()
    worker = spawn("worker", [sys.executable, "-m", "service", "worker"], env, home / "logs")
    procs.append(worker)
    done, pending = await asyncio.wait([sub.closed for sub in subscribers], timeout=args.timeout)
    cpu_fanout = cpu_s(api.process.pid) - cpu_mark
    cpu_client, cpu_worker = time.process_time() - client_mark, cpu_s(worker.process.pid)
    rss_after = rss_kib(api.process.pid)
    got = [sub.terminal for sub in subscribers if sub.terminal is not None]
    closed = [t for t in got if "closed_at" in t]
    failed = [f.exception() for f in done if f.exception() is not None]
    delays = [(float(t["at"]) - iso_seconds(str(t["finishedAt"]))) * 1000 for t in got]
    delays_204 = [(float(t["closed_at"]) - iso_seconds(str(t["finishedAt"]))) * 1000 for t in closed]
    commit = [(float(t["at"]) - int(str(t["id"]).split("-")[0]) / 1000) * 1000 for t in got]
    statuses = sorted({str(t["status"]) for t in got})
    print(
        f"terminal events: {len(got)}/{len(subscribers)} ({'/'.join(statuses)}), reconnects answered 204: "
        f"{len(closed)}, {len(failed)} streams failed{': ' + repr(failed[0]) if failed else ''}, "
        f"{len(pending)} waiting after {args.timeout:.0f} s; "
        f"RSS after {rss_after / 1024:.1f} MiB"
    )
    finished = [iso_seconds(str(t["finishedAt"])) for t in got]
    print(f"Redis clients after the burst: {redis_view(redis_url)[2]} (API's pool, worker, this script)")
    print(
        f"jobs finished within {1000 * (max(finished, default=0) - min(finished, default=0)):.0f} ms; CPU "
        f"from worker start: API {cpu_fanout:.2f} s, client {cpu_client:.2f} s, worker {cpu_worker:.2f} s"
    )
    if not delays_204:
        print("no reconnect answered 204: FAIL")
        return
    by_job: dict[str, list[float]] = {}
    for t in got:
        by_job.setdefault(str(t["jobId"]), []).append(float(t["at"]))
    spread = [1000 * (max(v) - min(v)) for v in by_job.values()]

    def line(name: str, values: list[float]) -> str:
        return (
            f"{name}: p50 {statistics.median(values):6.1f}  p95 {percentile(values, 0.95):6.1f}  "
            f"p99 {percentile(values, 0.99):6.1f}  max {max(values):6.1f} ms"
        )

    ends = {str(t["jobId"]): iso_seconds(str(t["finishedAt"])) for t in got}
    first_job = min(ends, key=ends.__getitem__)
    window = max(float(t["closed_at"]) for t in closed) - min(finished)
    print(
        f"first job to finish: its subscribers' median delay {median_delay(got, first_job):.1f} ms; "
        f"API CPU since the worker started = {100 * cpu_fanout / max(window, 1e-3):.0f}% of the "
        f"{1000 * window:.0f} ms from the first completion to the last 204 received"
    )
    print(line("delay finishedAt -> terminal event", delays))
    print(line("delay finishedAt -> reconnect's 204", delays_204))
    print(line("delay Redis XADD -> terminal event", commit))
    print(line("first -> last subscriber of a job ", spread))
    p99 = percentile(delays_204, 0.99)
    complete = len(closed) == total and not errors
    print(
        f"aim p99 finishedAt -> 204 <= {TARGET_P99_MS:.0f} ms: {p99:.1f} ms, ratio {p99 / TARGET_P99_MS:.2f} "
        f"{'PASS' if p99 <= TARGET_P99_MS and complete else 'FAIL'}"
    )
    print(
        f"aim <= {TARGET_KIB_PER_CONNECTION:.0f} KiB/stream: {per_conn:.2f} KiB, ratio "
        f"{per_conn / TARGET_KIB_PER_CONNECTION:.2f} "
        f"{'PASS' if per_conn <= TARGET_KIB_PER_CONNECTION and complete else 'FAIL'}"
    )
    print(
        json.dumps(
            {
                "subscribers": total,
                "connected": len(subscribers),
                "terminal": len(got),
                "reconnects_204": len(closed),
                "kib_per_connection": round(per_conn, 1),
                "delay_ms": {
                    "p50": round(statistics.median(delays), 1),
                    "p95": round(percentile(delays, 0.95), 1),
                    "p99": round(percentile(delays, 0.99), 1),
                    "max": round(max(delays), 1),
                },
                "delay_204_ms": {
                    "p50": round(statistics.median(delays_204), 1),
                    "p95": round(percentile(delays_204, 0.95), 1),
                    "p99": round(p99, 1),
                    "max": round(max(delays_204), 1),
                },
                "redis_numsub": numsub,
            }
        )
    )
    for sub in subscribers:
        if sub.transport:
            sub.transport.close()


def settled_cpu_s(pid: int) -> float:
    """The process's CPU time once it has stopped using any (its work on the last event done),
    at ns resolution: a phase of a few streams takes well under a 10 ms tick."""
    last = threads_cpu_s(pid)
    while True:
        time.sleep(0.3)
        now = threads_cpu_s(pid)
        if now - last < 0.002:
            return now
        last = now


Costs = dict[str, list[float]]
PHASES = ("event", "ending", "reconnect")


async def per_stream_costs(
    pid: int,
    rounds: int,
    open_streams: Callable[[], Awaitable[list[Subscriber]]],
    fire: Callable[[str], Awaitable[None]],
    timeout_s: float,
) -> Costs:
    """Per round: open the streams, then `fire("event")` (one more event on each stream),
    `fire("ending")` (the terminal event, which ends them) and every client's reconnect with
    Last-Event-ID (answered 204), each timed by the server's CPU once it has gone idle again.
    Returns, one value per round: the CPU per stream for each phase (us), and the delay (p50,
    p99, ms) from firing the terminal event to each subscriber."""
    cost: Costs = {name: [] for name in (*PHASES, "p50", "p99", "kib")}
    for _ in range(rounds):
        rss_before = rss_kib(pid)
        subscribers = await open_streams()
        await asyncio.to_thread(settled_cpu_s, pid)
        cost["kib"].append((rss_kib(pid) - rss_before) / len(subscribers))
        for name in PHASES:
            before = await asyncio.to_thread(settled_cpu_s, pid)
            sent = time.time()
            if name == "reconnect":
                for sub in subscribers:
                    sub.reconnect()
                await asyncio.wait([sub.closed for sub in subscribers], timeout=timeout_s)
                if missed := sum(1 for sub in subscribers if not sub.closed.done() or sub.closed.exception()):
                    raise SystemExit(f"{missed} reconnects were not answered 204")
            else:
                await fire(name)
            if name == "ending":
                await asyncio.wait([sub.finished for sub in subscribers], timeout=timeout_s)
                delays = [1000 * (float(sub.terminal["at"]) - sent) for sub in subscribers if sub.terminal]
                if len(delays) != len(subscribers):
                    raise SystemExit(f"{len(subscribers) - len(delays)} streams missed the terminal event")
                cost["p50"].append(statistics.median(delays))
                cost["p99"].append(percentile(delays, 0.99))
            after = await asyncio.to_thread(settled_cpu_s, pid)
            cost[name].append(1e6 * (after - before) / len(subscribers))
    return cost


async def phases(
    args: argparse.Namespace, url: str, api: Proc, redis_url: str, env: dict[str, str], home: Path
) -> None:
    """The service's per-stream CPU for one event (a `progress`) and for the last one with the
    stream's ending, then the same for loadtest/sse_floor.py (a bare ASGI app on the same
    server), and the ratios: what Delineate adds to the least a stream costs on this machine."""
    conn = aioredis.Redis.from_url(redis_url)
    port = int(url.rsplit(":", 1)[1])
    job_id = ""

    async def open_job_streams() -> list[Subscriber]:
        nonlocal job_id
        async with httpx.AsyncClient(base_url=url) as http:
            job_id = (await http.post("/v1/download/initiate", json={"file_ids": [70000]})).json()["jobId"]
        return await open_streams(port, [job_id], args.subscribers, args.batch, reconnect_at_end=False)

    async def write_event(name: str) -> None:
        event, data = (
            ("progress", {"done": 0, "total": 1, "file": {}})
            if name == "event"
            else (state.COMPLETED, {"status": state.COMPLETED, "finished_at": state.now_iso()})
        )
        async with conn.pipeline() as pipe:
            if event in state.TERMINAL:  # as the worker ends a job: the hash too (a reconnect reads it)
                pipe.hset(keys.job(job_id), mapping={"status": event, "finished_at": data["finished_at"]})
            state.queue_event(pipe, job_id, event, data, 600)
            await pipe.execute()

    service = await per_stream_costs(
        api.process.pid, args.phases, open_job_streams, write_event, args.timeout
    )
    await conn.aclose()
    api.stop()  # the floor gets the machine to itself, as the service had

    floor_port = harness.free_port()
    floor = spawn(
        "sse_floor",
        [
            sys.executable, "-m", "uvicorn", "loadtest.sse_floor:app", "--host", "127.0.0.1",
            "--port", str(floor_port), "--loop", "uvloop", "--http", "httptools",
            "--no-access-log", "--log-level", "warning",
        ],
        env,
        home / "logs",
        cwd=ROOT,
    )  # fmt: skip
    try:
        harness.wait_until(lambda: _accepts(floor_port), 30, "sse_floor", floor.process)
        if args.pin:
            os.sched_setaffinity(floor.process.pid, {0})
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{floor_port}") as http:

            async def fire(_name: str) -> None:
                await http.post("/fire")

            async def open_floor_streams() -> list[Subscriber]:
                return await open_streams(
                    floor_port, ["floor"], args.subscribers, args.batch, reconnect_at_end=False
                )

            bare = await per_stream_costs(
                floor.process.pid, args.phases, open_floor_streams, fire, args.timeout
            )
    finally:
        floor.stop()

    print(f"{args.subscribers} streams on one job, {args.phases} rounds (median, then each round):")
    for name in PHASES:
        mine, least = statistics.median(service[name]), statistics.median(bare[name])
        ratio = mine / least
        print(
            f"  API CPU per stream for {name:9}: {mine:5.0f} us ({_each(service[name])}); "
            f"bare uvicorn {least:4.0f} us ({_each(bare[name])}); ratio {ratio:.2f} "
            f"(aim <= {TARGET_RATIO}: {'PASS' if ratio <= TARGET_RATIO else 'FAIL'})"
        )
    kib = max(service["kib"])
    verdict = "PASS" if kib <= TARGET_KIB_PER_CONNECTION else "FAIL"
    print(
        f"  API RSS per stream: {kib:.1f} KiB, the most of the rounds ({_each(service['kib'])}: later rounds "
        f"reuse memory the first freed); bare uvicorn {max(bare['kib']):.1f} KiB "
        f"(aim <= {TARGET_KIB_PER_CONNECTION:.0f} KiB: {verdict})"
    )
    for label, cost in (("service", service), ("bare uvicorn", bare)):
        print(
            f"  terminal event written -> received, {label}: p50 {statistics.median(cost['p50']):.0f} ms, "
            f"p99 {statistics.median(cost['p99']):.0f} ms  (p99s {_each(cost['p99'])})"
        )


def _each(values: list[float]) -> str:
    return ", ".join(f"{v:.0f}" for v in values)


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


async def open_streams(
    port: int, job_ids: list[str], per_job: int, batch: int, reconnect_at_end: bool
) -> list[Subscriber]:
    """connect_all, and stop the run if any stream failed to open."""
    subscribers, errors = await connect_all(port, job_ids, per_job, batch, reconnect_at_end)
    if errors:
        raise SystemExit(f"{len(errors)} streams failed to open: {errors[0]!r}")
    return subscribers


if __name__ == "__main__":
    main()
