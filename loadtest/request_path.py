"""Where a request's CPU goes, layer by layer: the API's ASGI stack called in process, A/B.

`GET /` and the status route are called through the real application (create_app, its
middleware, a private Redis for the rate limiter and the job read, prometheus-client in
multiprocess mode as `delineate api` runs it: chosen before any metric is imported, JSON access
lines to a file), 64 at a time on one event loop, with no
network and no uvicorn: the CPU time per request (time.process_time) of the whole stack, then
with one piece taken out at a time (the access line, the request metrics, the rate limiter's
Redis hit), beside a bare Starlette app answering the same JSON. The difference is what that
piece costs a request. Best of three passes each, so another tenant's burst costs less.
bench_api.py measures the same routes over real sockets; this says where their time goes.

    .venv/bin/python loadtest/request_path.py [--requests 3000]
    .venv/bin/python loadtest/request_path.py --callgrind [--requests 640]

With --callgrind the script runs itself under `valgrind --tool=callgrind` and counts the
instructions each request executes in this process (one pass, collection on only while it
runs), rather than CPU time: a count that other tenants of a shared machine do not move, at
about 50 times the run time. Redis is another process, not counted. Initiate is measured
too there (each pass queues its jobs: too many for the CPU mode's passes). Another checkout's
code, measured by this script: `PYTHONPATH=DIR .venv/bin/python loadtest/request_path.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# prometheus-client picks its value class (mmap files in multiprocess mode) when first imported
PROM_DIR = tempfile.mkdtemp(prefix="delineate-request-path-prom-")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = PROM_DIR
atexit.register(shutil.rmtree, PROM_DIR, True)

import httpx  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from backends import LOAD_SETTINGS  # noqa: E402
from service import harness  # noqa: E402
from service.api import middleware  # noqa: E402
from service.api.ratelimit import Decision  # noqa: E402
from service.telemetry import metrics  # noqa: E402

CONCURRENCY = 64
UNDER_CALLGRIND = "REQUEST_PATH_CALLGRIND_OUT"  # set for the run under valgrind: its dump files
INITIATE_BODY = b'{"file_ids": [70000]}'


class ScopeHeaders:
    """Headers added to every request (a client's own X-Request-ID spares the API a new one)."""

    extra: list[tuple[bytes, bytes]] = []


def scope_for(path: str) -> dict[str, Any]:
    post = path == "/v1/download/initiate"
    body = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(INITIATE_BODY))]
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST" if post else "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"user-agent", b"wrk"),
            *(body if post else ()),
            *ScopeHeaders.extra,
        ],
        "client": ("127.0.0.1", 5555),
        "server": ("127.0.0.1", 8000),
    }


async def cpu_per_request(app: Any, path: str, requests: int) -> float:
    """µs of this process's CPU per request, best of three passes (after a warm-up pass); under
    callgrind, thousands of instructions per request in one pass (after the warm-up pass)."""
    body = INITIATE_BODY if path == "/v1/download/initiate" else b""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and message["status"] not in (200, 202):
            raise RuntimeError(f"{path} answered {message['status']}")

    async def client() -> None:
        for _ in range(requests // CONCURRENCY):
            await app(scope_for(path), receive, send)

    done = requests // CONCURRENCY * CONCURRENCY
    await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    if os.environ.get(UNDER_CALLGRIND):
        callgrind("-z")
        callgrind("-i", "on")
        await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
        callgrind("-i", "off")
        return instructions() / done / 1000
    passes = []
    for _ in range(3):
        started = time.process_time()
        await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
        passes.append((time.process_time() - started) / done * 1e6)
    return min(passes)


def callgrind(*command: str) -> None:
    """Tell the callgrind running this process `command` (callgrind_control, through vgdb)."""
    subprocess.run(["callgrind_control", *command, str(os.getpid())], check=True, capture_output=True)


def instructions() -> int:
    """Instructions collected since the last `-z`: dumped to a file of its own, read back."""
    before = set(glob.glob(os.environ[UNDER_CALLGRIND] + ".*"))
    callgrind("-d")
    for _ in range(100):
        if new := set(glob.glob(os.environ[UNDER_CALLGRIND] + ".*")) - before:
            text = Path(new.pop()).read_text()
            return int(next(line for line in text.splitlines() if line.startswith("totals:")).split()[1])
        time.sleep(0.05)
    raise RuntimeError("callgrind wrote no dump")


@contextmanager
def replaced(owner: Any, name: str, value: Any) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


class Silent:
    def info(self, *args: object, **kwargs: object) -> None:
        pass


async def always_allowed(client: str) -> Decision:
    return Decision(True, 100, 99, 60)


def layers(app: Starlette) -> list[Any]:
    found, layer = [], app.middleware_stack
    while layer is not None:
        found.append(layer)
        layer = getattr(layer, "app", None)
    return found


async def measure(backends: harness.Backends, requests: int) -> None:
    from service.api.app import create_app
    from service.settings import load_settings
    from service.telemetry.logging import configure

    os.environ.update(backends.env(LOG_LEVEL="info", PROMETHEUS_MULTIPROC_DIR=PROM_DIR))
    log = (backends.home / "api.log").open("wb")
    os.dup2(log.fileno(), 2)  # the access lines go to a file, as under a container runtime
    settings = load_settings()
    configure(settings.log_level, settings.log_format)
    app = create_app(settings)
    message = {"message": "Delineate download service", "docs": "/docs"}

    async def bare_root(request: Any) -> JSONResponse:
        return JSONResponse(message)

    bare = Starlette(routes=[Route("/", bare_root)])
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as http:
            job = (await http.post("/v1/download/initiate", json={"file_ids": [70000]})).json()["jobId"]
        paths = {"GET /": "/", "status": f"/v1/download/status/{job}"}
        if os.environ.get(UNDER_CALLGRIND):
            paths["initiate"] = "/v1/download/initiate"
        stack = layers(app)
        edge = next(layer for layer in stack if isinstance(layer, middleware.EdgeMiddleware))
        limit = next(layer for layer in stack if isinstance(layer, middleware.RateLimitMiddleware))
        without: dict[str, Callable[[], Any]] = {
            "the access line": lambda: replaced(edge, "access", Silent()),
            "the request metrics": lambda: replaced(metrics, "observe_request", lambda *args: None),
            "the rate limiter's Redis hit": lambda: replaced(limit.limiter, "hit", always_allowed),
            "the new request id": lambda: replaced(ScopeHeaders, "extra", [(b"x-request-id", b"given-id")]),
        }
        if os.environ.get(UNDER_CALLGRIND):
            unit = "k instr"
            print(f"Instructions per request in process (callgrind), {CONCURRENCY} at a time, {requests}")
        else:
            unit = "us"
            print(f"CPU per request in process, {CONCURRENCY} at a time, best of 3 passes of {requests}")
        print(f"  bare Starlette JSON              {await cpu_per_request(bare, '/', requests):6.1f} {unit}")
        for name, path in paths.items():
            whole = await cpu_per_request(app, path, requests)
            print(f"  {name:32} {whole:6.1f} {unit}, every layer")
            for piece, taken_out in without.items():
                with taken_out():
                    rest = await cpu_per_request(app, path, requests)
                print(f"    {'without ' + piece:30} {rest:6.1f} {unit}: it costs {whole - rest:5.1f} {unit}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, help="per pass (default 3000, 640 with --callgrind)")
    parser.add_argument("--callgrind", action="store_true", help="count instructions under valgrind")
    args = parser.parse_args()
    if args.callgrind and not os.environ.get(UNDER_CALLGRIND):
        with tempfile.TemporaryDirectory(prefix="delineate-request-path-callgrind-") as out:
            dumps = f"{out}/callgrind.out"
            command = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={dumps}"]
            command += [sys.executable, *sys.argv, "--requests", str(args.requests or 640)]
            run = subprocess.run(
                command, env={**os.environ, UNDER_CALLGRIND: dumps}, stderr=subprocess.DEVNULL
            )
        raise SystemExit(run.returncode)
    args.requests = args.requests or 3000
    with harness.private_backends("delineate-request-path-", "delineate", settings=LOAD_SETTINGS) as backends:
        asyncio.run(measure(backends, args.requests))


if __name__ == "__main__":
    main()
