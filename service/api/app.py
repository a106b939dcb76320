"""The API application: every route and middleware, wired explicitly in one place.

A request travels: Edge (real client IP from a trusted proxy, request id, security headers,
metrics, access log) -> CORS -> RateLimit (shared budget in Redis) -> the route in routes/,
which validates with schemas.py and makes one call into jobs/ (enqueue.submit, cancel.request)
or reads a job (jobs/state.py) or S3 (storage/s3.py), through the process's Runtime on
`app.state.runtime`; its S3 calls go through `app.state.s3` (storage.s3.RequestLane: threads
of their own, a deadline each).
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources as package_files

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from service.api import openapi
from service.api.connection import connection_limit
from service.api.errors import HANDLERS
from service.api.events import EventHub
from service.api.middleware import CORSMiddleware, EdgeMiddleware, RateLimitMiddleware
from service.api.ratelimit import RateLimiter
from service.api.responses import JSONResponse
from service.api.routes import downloads, stream, system, ui
from service.api.sse import StreamSlots
from service.jobs.enqueue import QueueCollector
from service.runtime import Runtime
from service.settings import Settings, load_settings
from service.storage.s3 import REQUEST_LANE_THREADS, RequestLane
from service.telemetry import exposition, metrics, tracing
from service.telemetry.logging import configure

STATIC = package_files.files("service.api") / "static"


async def openapi_document(request: Request) -> JSONResponse:
    return JSONResponse(request.app.state.openapi)


async def docs(request: Request) -> HTMLResponse:
    return HTMLResponse((STATIC / "docs.html").read_text())


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus exposition: all API processes merged, plus queue depth read from Redis now."""
    metrics.flush_request_metrics()  # as of now: this request in progress too
    body, content_type = await run_in_threadpool(
        exposition.render, request.app.state.metrics_registry, request.headers.get("accept")
    )
    return Response(body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})


def routes() -> list[Route | Mount]:
    """Every route. Starlette tries them in order and stops at the first full match, so the
    two hot ones come first (still ahead of the `{job_id}` patterns that also match them)."""
    return [
        Route("/v1/download/status/{job_id}", downloads.status, methods=["GET"]),
        Route("/v1/download/initiate", downloads.initiate, methods=["POST"]),
        Route("/", system.root, methods=["GET"]),
        Route("/health", system.health, methods=["GET"]),
        Route("/health/live", system.live, methods=["GET"]),
        Route("/health/ready", system.ready, methods=["GET"]),
        Route("/openapi", openapi_document, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
        Route("/ui", ui.page, methods=["GET"]),
        Route("/ui/config.json", ui.config, methods=["GET"]),
        Route("/v1/download/check", downloads.check, methods=["POST"]),
        Route("/v1/download/start", downloads.start, methods=["POST"]),
        Route("/v1/download/{job_id}/file", downloads.file, methods=["GET"]),
        Route("/v1/download/stream/{job_id}", stream.stream, methods=["GET"]),
        Route("/v1/download/{job_id}", downloads.cancel, methods=["DELETE"]),
        Route("/v1/download/{job_id}/cancel", downloads.cancel, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(STATIC)), name="static"),
    ]


# young allocations before a collection; young collections before a middle one; middle ones
# before a full one is considered (CPython's defaults: 700, 10, 10)
GC_THRESHOLDS = (10_000, 2, 500)


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the request path, where it was measured to take a
    large share of a status request's CPU and, with thousands of open streams, pauses of up to
    a second (docs/benchmarks.md).

    Requests in flight together (a rate-limit batch resumes dozens at once) push the young
    generation past Python's default threshold of 700 live allocations many times a second,
    and each full collection walks every object the imports left. Objects alive at start-up
    are frozen (never scanned again) and the young generation may grow to 10,000. An open
    stream keeps a few hundred tracked objects alive (its task, coroutines, scope, futures):
    at 10,000 streams a middle collection walked up to ten young generations (50-180 ms) and a
    full one millions of objects (0.3-1 s), finding almost no garbage: the API's requests make
    few reference cycles. So a middle collection comes after two young ones (shorter pauses,
    the same work in all: a survivor is walked there once either way), and a full one is
    considered after 500 middle ones (about ten million allocations) rather than 10. Garbage
    without cycles is still freed at once by reference counting.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def create_app(settings: Settings) -> Starlette:
    tracing.setup(
        settings.otel_exporter_otlp_endpoint,
        settings.otel_service_name or "delineate-api",
        settings.otel_traces_sample_ratio,
    )
    runtime = Runtime.open(
        settings, s3_pool_size=REQUEST_LANE_THREADS, s3_timeout_s=settings.s3_request_timeout_s
    )
    s3_lane = RequestLane(runtime.storage, settings.s3_request_timeout_s)
    hub = EventHub(runtime.aredis, sweep_s=settings.sse_heartbeat_s)  # a missed change: one heartbeat late

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await hub.start()
        tune_gc()
        metrics.record_process_start()
        yield
        await hub.stop()
        s3_lane.close()
        await runtime.aclose()
        exposition.mark_process_dead()

    limiter = RateLimiter(runtime.batched, settings.rate_limit_max_requests, settings.rate_limit_window_ms)
    middleware = [
        Middleware(EdgeMiddleware, trusted=settings.trusted_networks),
        Middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=[
                "Content-Type",
                "Authorization",
                "X-Request-ID",
                "Idempotency-Key",
                "Last-Event-ID",
            ],
            expose_headers=[
                "X-Request-ID",
                "X-Trace-Id",
                "Location",
                "Retry-After",
                "RateLimit-Limit",
                "RateLimit-Remaining",
                "RateLimit-Reset",
            ],
            max_age=86400,
        ),
        Middleware(RateLimitMiddleware, limiter=limiter),
    ]
    app = Starlette(routes=routes(), middleware=middleware, exception_handlers=HANDLERS, lifespan=lifespan)
    app.state.runtime = runtime
    app.state.s3 = s3_lane
    app.state.hub = hub
    app.state.stream_slots = StreamSlots(
        settings.sse_max_streams or connection_limit(settings) // 2, settings.sse_max_streams_per_client
    )
    app.state.openapi = openapi.document()
    app.state.metrics_registry = exposition.api_registry([QueueCollector(runtime.redis)])
    tracing.instrument_app(app)  # outermost: the server span covers every middleware
    return app


def app_from_env() -> Starlette:
    """uvicorn's factory (`delineate api`): settings from the environment, validated.

    Logging is configured here too, not only by the CLI: with API_WORKERS > 1 each worker is a
    fresh process that imports this factory and nothing else.
    """
    settings = load_settings()
    configure(settings.log_level, settings.log_format)
    return create_app(settings)
