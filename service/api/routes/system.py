"""Service-level routes: welcome, health (legacy, live, ready)."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from service.api.responses import JSONResponse
from service.runtime import Runtime


async def root(request: Request) -> JSONResponse:
    return JSONResponse(
        {
            "message": "Delineate download service: POST /v1/download/initiate, then follow the job.",
            "docs": "/docs",
        }
    )


async def _checks(request: Request) -> dict[str, str]:
    rt: Runtime = request.app.state.runtime

    async def storage() -> str:
        try:
            await run_in_threadpool(rt.storage.check)
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
    """200 healthy or 503 unhealthy with the failing check; also served as /health/ready."""
    body, status = _verdict(await _checks(request))
    return JSONResponse(body, status)


async def live(request: Request) -> JSONResponse:
    """The process answers: nothing else is checked, so a Redis outage never restarts it."""
    return JSONResponse({"status": "ok"})
