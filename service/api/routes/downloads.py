"""Download routes: the legacy synchronous pair (check, start) and the async job flow."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from service import keys
from service.api.errors import ApiError, error_response
from service.api.responses import JSONResponse
from service.api.schemas import FileRequest, InitiateRequest, read_body
from service.jobs import cancel as cancellation
from service.jobs import enqueue, state
from service.jobs.download import pick_delay_s
from service.jobs.view import status_body
from service.runtime import Runtime
from service.settings import Settings
from service.storage.s3 import source_key
from service.webhooks import guard

SUCCESSOR = "/v1/download/initiate"
DEPRECATION_HEADERS = {
    "Deprecation": "true",
    "Link": f'<{SUCCESSOR}>; rel="successor-version", </docs>; rel="deprecation"',
}


async def check(request: Request) -> JSONResponse:
    """Is `downloads/{file_id}.zip` in the bucket? A real S3 HEAD, within S3_REQUEST_TIMEOUT_S."""
    rt: Runtime = request.app.state.runtime
    body = await read_body(request, FileRequest, rt.settings)
    key = source_key(body.file_id)
    size = await request.app.state.s3.size_of(key)
    available = size is not None
    return JSONResponse(
        {"file_id": body.file_id, "available": available, "s3Key": key if available else None, "size": size}
    )


async def start(request: Request) -> Response:
    """Deprecated: holds the request for the whole simulated download, as the original did.

    Behind a proxy this is exactly what times out; it is cut at REQUEST_TIMEOUT_MS with a JSON
    504 so the client hears it from us rather than from the proxy.
    """
    rt: Runtime = request.app.state.runtime
    body = await read_body(request, FileRequest, rt.settings)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(rt.settings.request_timeout_ms / 1000):
            await asyncio.sleep(pick_delay_s(rt.settings))
            key = source_key(body.file_id)
            size = await request.app.state.s3.size_of(key)
    except TimeoutError:
        message = (
            f"Processing took longer than REQUEST_TIMEOUT_MS ({rt.settings.request_timeout_ms} ms); "
            f"use {SUCCESSOR} for long downloads"
        )
        return error_response(request, 504, message, DEPRECATION_HEADERS)
    elapsed_ms = int((time.perf_counter() - started) * 1000)
    seconds = f"{elapsed_ms / 1000:.1f}"
    if size is None:
        payload: dict[str, Any] = {
            "file_id": body.file_id,
            "status": "failed",
            "downloadUrl": None,
            "size": None,
            "processingTimeMs": elapsed_ms,
            "message": f"File not found after {seconds} seconds of processing",
        }
    else:
        url = rt.storage.presign(key, f"{body.file_id}.zip")
        payload = {
            "file_id": body.file_id,
            "status": "completed",
            "downloadUrl": url,
            "size": size,
            "processingTimeMs": elapsed_ms,
            "message": f"Download ready after {seconds} seconds",
        }
    return JSONResponse(payload, headers=DEPRECATION_HEADERS)


async def initiate(request: Request) -> JSONResponse:
    """Accept a job and answer at once (202); the job is on its queue before we answer."""
    rt: Runtime = request.app.state.runtime
    body = await read_body(request, InitiateRequest, rt.settings)
    if body.callbackUrl is not None:
        await _check_callback(rt.settings, body.callbackUrl)
    retry_later = {"Retry-After": str(max(rt.settings.poll_interval_s, 5))}
    try:
        job = await enqueue.submit(
            rt,
            body.file_ids,
            client=request.client.host if request.client else "",
            body=body.model_dump(exclude_none=True),
            idempotency_key=_idempotency_key(request),
            callback_url=body.callbackUrl,
        )
    except enqueue.QueueFull:
        raise ApiError(503, "Too many jobs are waiting; retry later", retry_later) from None
    except enqueue.TooManyActive as exc:
        message = f"You already have {exc} unfinished jobs (PER_CLIENT_MAX_ACTIVE_JOBS); retry later"
        raise ApiError(429, message, retry_later) from None
    except enqueue.NotReplicated:
        message = "The job could not be stored durably (Redis replicas did not confirm it); retry"
        raise ApiError(503, message, retry_later) from None
    except enqueue.IdempotencyConflict:
        raise ApiError(422, "This Idempotency-Key was used with a different request body") from None
    status_url = f"/v1/download/status/{job.job_id}"
    headers = {"Location": status_url, "Retry-After": poll_after(rt.settings)}
    if job.replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(
        {
            "jobId": job.job_id,
            "status": job.status,
            "totalFileIds": job.total,
            "statusUrl": status_url,
            "streamUrl": f"/v1/download/stream/{job.job_id}",
            "fileUrl": f"/v1/download/{job.job_id}/file",
        },
        202,
        headers=headers,
    )


async def _check_callback(settings: Settings, url: str) -> None:
    """400 unless webhooks are configured and the URL passes the SSRF guard (its DNS lookup
    runs on the guard's own pool with a timeout, never on the shared thread pool)."""
    if settings.webhook_secret is None:
        raise ApiError(400, "callbackUrl is not available: this service has no WEBHOOK_SECRET configured")
    try:
        await guard.check(url, settings)
    except guard.UnsafeCallback as exc:
        raise ApiError(400, str(exc)) from None


def poll_after(settings: Settings) -> str:
    """Retry-After for pollers: POLL_INTERVAL_S ± 1 s, so a thousand clients that all honour
    it drift apart instead of arriving in the same second (loadtest/capacity.py saw the
    lock-step bursts a fixed interval makes)."""
    interval = settings.poll_interval_s
    return str(random.randint(max(1, interval - 1), interval + 1))


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not key.isprintable() or not key.isascii():
        raise ApiError(400, "Idempotency-Key must be 1 to 255 printable ASCII characters")
    return key


async def load_job(request: Request) -> state.JobRecord:
    """The job named in the path, or 404 (never existed) / 410 (expired)."""
    raw = request.path_params["job_id"]
    try:
        job_id = str(uuid.UUID(raw))
    except ValueError:
        raise ApiError(404, f"No job {raw!r}") from None
    rt: Runtime = request.app.state.runtime
    job = state.JobRecord.from_redis(await rt.batched.submit("HGETALL", keys.job(job_id)))
    if job is not None:
        return job
    if await rt.aredis.zscore(keys.JOB_INDEX, job_id) is not None:
        raise ApiError(410, f"Job {job_id} has expired; its results are no longer kept")
    raise ApiError(404, f"No job {job_id}")


async def status(request: Request) -> JSONResponse:
    job = await load_job(request)
    headers = {} if job.finished else {"Retry-After": poll_after(request.app.state.runtime.settings)}
    return JSONResponse(status_body(job), headers=headers)


async def file(request: Request) -> Response:
    """302 to a freshly signed S3 URL: an expired link is never a dead end, just ask again."""
    job = await load_job(request)
    if job.status != state.COMPLETED or not job.result_key:
        raise ApiError(409, f"Job {job.id} is {job.status}; the file exists once it is completed")
    rt: Runtime = request.app.state.runtime
    name = "download.zip" if job.result_key.startswith("results/") else job.result_key.rsplit("/", 1)[-1]
    url = rt.storage.presign(job.result_key, name)
    return RedirectResponse(url, 302, headers={"Cache-Control": "no-store"})


# Fixed paths that `DELETE /v1/download/{job_id}` also matches (POST .../cancel does not: there
# `/v1/download/check/cancel` names no resource): for them it is the wrong method on an existing
# resource (405), not an unknown job (404).
POST_ONLY = frozenset({"/v1/download/check", "/v1/download/initiate", "/v1/download/start"})


async def cancel(request: Request) -> JSONResponse:
    """DELETE /v1/download/{job_id} (or POST .../cancel): stop a queued or running job."""
    if request.url.path in POST_ONLY:
        raise ApiError(405, f"{request.method} is not allowed here", {"Allow": "POST"})
    job = await load_job(request)
    rt: Runtime = request.app.state.runtime
    try:
        await run_in_threadpool(cancellation.request, rt, job.id)
    except cancellation.AlreadyFinished:
        raise ApiError(409, f"Job {job.id} has already finished; nothing to cancel") from None
    return JSONResponse(status_body(await load_job(request)))
