"""Throughput of GET /v1/download/status/{id} vs a bare Starlette + Redis GET, over real sockets.

Three servers, one at a time, each a single uvicorn process (uvloop, httptools) on a private
Redis: a bare Starlette app doing one async Redis GET; the real API with its telemetry
(metrics in multiprocess mode, tracing off); the real API with TelemetryMiddleware removed.
The load generator is a keep-alive asyncio client in this process (64 connections).
Logs as `delineate api` does (JSON, LOG_LEVEL, default info: one access line per request).
Prints requests/s for each. A script, not a test: figures on a shared 2-core machine are noisy.

    .venv/bin/python observability/bench/status_throughput.py [seconds]
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from service import embedded

CONNECTIONS = 64

BARE = textwrap.dedent(
    """
    import os
    import redis.asyncio as aioredis
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    r = aioredis.Redis.from_url(os.environ["REDIS_URL"])

    async def get(request):
        return JSONResponse({"v": (await r.get("bench")).decode()})

    app = Starlette(routes=[Route("/v1/download/status/{job_id}", get)])
    """
)

REAL = textwrap.dedent(
    """
    from service.api.app import create_app
    from service.api.middleware import TelemetryMiddleware
    from service.settings import load_settings
    from service.telemetry.logging import configure
    import os

    settings = load_settings()
    configure(settings.log_level, settings.log_format)  # as `delineate api` does
    app = create_app(settings)
    if os.environ.get("BENCH_NO_TELEMETRY"):
        app.user_middleware = [m for m in app.user_middleware if m.cls is not TelemetryMiddleware]
    """
)


async def load(port: int, path: str, seconds: float) -> float:
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    count = 0
    deadline = time.monotonic() + seconds

    async def connection() -> None:
        nonlocal count
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < deadline:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(
                next(
                    line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
                ).split(b":")[1]
            )
            await reader.readexactly(length)
            count += 1
        writer.close()

    await asyncio.gather(*(connection() for _ in range(CONNECTIONS)))
    return count / seconds


def serve(module: Path, env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    args = [
        sys.executable,
        "-m",
        "uvicorn",
        f"{module.stem}:app",
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
        "--app-dir",
        str(module.parent),
    ]
    process = subprocess.Popen(args, env=env)
    embedded.wait_until(lambda: _answers(port), 30, "server", process)
    return process


def _answers(port: int) -> bool:
    import httpx

    try:
        httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=1)
        return True
    except httpx.HTTPError:
        return False


def main() -> None:
    import redis

    from service.jobs import state

    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10
    home = Path(tempfile.mkdtemp(prefix="bench-"))
    server = embedded.start_redis(home / "redis")
    conn = redis.Redis.from_url(server.url)
    conn.set("bench", "x" * 200)
    job = state.JobRecord(
        id="00000000-0000-4000-8000-000000000001",
        status="queued",
        file_ids=[70000],
        created_at=state.now_iso(),
        queue="downloads-small",
    )
    with conn.pipeline() as pipe:
        state.queue_create(pipe, job, 3600)
        pipe.execute()
    (home / "bare_app.py").write_text(BARE)
    (home / "real_app.py").write_text(REAL)
    base = {
        **os.environ,
        "REDIS_URL": server.url,
        "RATE_LIMIT_MAX_REQUESTS": "100000000",
        "LOG_LEVEL": os.environ.get("LOG_LEVEL", "info"),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "PROMETHEUS_MULTIPROC_DIR": str(home / "metrics"),
    }
    (home / "metrics").mkdir()
    base.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    runs = [
        ("bare Starlette + Redis GET", "bare_app.py", {}),
        ("status route, telemetry on (metrics)", "real_app.py", {}),
        ("status route, TelemetryMiddleware removed", "real_app.py", {"BENCH_NO_TELEMETRY": "1"}),
    ]
    results = {}
    try:
        for name, module, extra in runs:
            port = embedded.free_port()
            process = serve(home / module, {**base, **extra}, port)
            try:
                asyncio.run(load(port, f"/v1/download/status/{job.id}", 2))  # warm-up
                results[name] = asyncio.run(load(port, f"/v1/download/status/{job.id}", seconds))
            finally:
                process.terminate()
                process.wait(10)
            print(f"{name:45s} {results[name]:8.0f} req/s", flush=True)
    finally:
        server.stop()
    bare = results["bare Starlette + Redis GET"]
    for name, value in results.items():
        print(f"{name:45s} {100 * value / bare:6.1f} % of bare")


if __name__ == "__main__":
    main()
