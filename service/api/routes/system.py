"""Service-level routes: welcome, health (legacy, live, ready).

Every check answers within its dependency's deadline (S3: S3_REQUEST_TIMEOUT_S, on the API's
own S3 threads), so a hung dependency makes a probe fail, never hang.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request

from service.api.responses import JSONResponse
from service.runtime import Runtime
from service.storage.s3 import RequestLane


async def root(request: Request) -> JSONResponse:
    return JSONResponse(
        {
            "message": "Delineate download service: POST /v1/download/initiate, then follow the job.",
            "docs": "/docs",
        }
    )


async def _checks(request: Request) -> dict[str, str]:
    rt: Runtime = request.app.state.runtime
    lane: RequestLane = request.app.state.s3

    async def storage() -> str:
        try:
            await lane.check()
            return "ok"
        except Exception:
            return "error"

    async def redis() -> str:
        try:
            await rt.aredis.ping()
            return "ok"
        except Exception:
            return "error"

    storage_state, redis_state = await asyncio.gather(storage(), redis())
    return {"storage": storage_state, "redis": redis_state}


def _verdict(checks: dict[str, str]) -> tuple[dict[str, Any], int]:
    healthy = all(value == "ok" for value in checks.values())
    return {"status": "healthy" if healthy else "unhealthy", "checks": checks}, 200 if healthy else 503


async def health(request: Request) -> JSONResponse:
    """200 healthy or 503 unhealthy with the failing check (the original service's answer)."""
    body, status = _verdict(await _checks(request))
    return JSONResponse(body, status)


async def ready(request: Request) -> JSONResponse:
    """Readiness: 503 only when Redis fails, which every route needs.

    S3 failing its check is `degraded` (still 200): status polls, streams, cancels and new jobs
    need only Redis (jobs ride out an S3 outage, docs/jobs.md), so taking every API instance out
    of its load balancer because S3 is down would turn a partial outage into a full one.
    """
    checks = await _checks(request)
    if checks["redis"] == "ok" and checks["storage"] != "ok":
        return JSONResponse({"status": "degraded", "checks": {**checks, "storage": "degraded"}})
    body, status = _verdict(checks)
    return JSONResponse(body, status)


async def live(request: Request) -> JSONResponse:
    """The process answers: nothing else is checked, so a Redis outage never restarts it."""
    return JSONResponse({"status": "ok"})
