"""What the request telemetry costs per request, in-process (no network, no Redis).

Runs a trivial ASGI endpoint N times bare, then wrapped in EdgeMiddleware (request id,
headers, access log, metrics in prometheus-client multiprocess mode, as the API runs), then
with tracing on as well (spans exported to an unreachable OTLP endpoint through the batch
processor, never blocking the request). Prints microseconds per request for each, to
compare with a bare Starlette + Redis GET (about 300 us per request at ~3,300 req/s,
docs/observability.md).

    .venv/bin/python observability/bench/telemetry_overhead.py [requests]
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="bench-metrics-"))


class _Route:
    path = "/v1/download/status/{job_id}"


async def endpoint(scope: dict, receive: object, send) -> None:  # type: ignore[no-untyped-def]
    scope["route"] = _Route
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": b"{}"})


async def run(app, n: int) -> float:  # type: ignore[no-untyped-def]
    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    async def send(message: dict) -> None:
        pass

    started = time.perf_counter()
    for _ in range(n):
        scope = {"type": "http", "method": "GET", "path": "/v1/download/status/x", "headers": []}
        await app(scope, receive, send)
    return (time.perf_counter() - started) / n * 1e6


def measure(mode: str, n: int) -> None:
    from service.api.middleware import EdgeMiddleware
    from service.telemetry import tracing
    from service.telemetry.logging import configure

    configure("info", "json")  # the access log line as the API writes it (to stderr, discarded)

    if mode == "metrics":
        bare = asyncio.run(run(endpoint, n))
        metered = asyncio.run(run(EdgeMiddleware(endpoint), n))
        print(f"bare endpoint:                            {bare:7.2f} us/request")
        print(f"+ EdgeMiddleware (log, headers, metrics): {metered:7.2f} us/request")
        return
    logging.getLogger("opentelemetry").setLevel(logging.CRITICAL)  # the sink is unreachable
    ratio = 1.0 if mode == "traced" else 0.0
    tracing.setup("http://127.0.0.1:9", "bench", ratio)
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    app = OpenTelemetryMiddleware(EdgeMiddleware(endpoint), exclude_spans=["receive", "send"])
    traced = asyncio.run(run(app, n // 5))
    print(f"+ OpenTelemetry server span, ratio {ratio:.0f}:     {traced:7.2f} us/request")


def main() -> None:
    n = sys.argv[1] if len(sys.argv) > 1 else "50000"
    if len(sys.argv) > 2:
        measure(sys.argv[2], int(n))
        return
    for mode in ("metrics", "traced", "unsampled"):  # one process each: tracing is per process
        subprocess.run([sys.executable, __file__, n, mode], check=True, stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
