"""`AsyncClient`: the Delineate flow over httpx.AsyncClient, line for line the twin of sync.py
(what both share, including every waiting rule, is core.py)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import IO, Any

import httpx

from service.client import core
from service.client.core import Event, Job, Status, job_id_of

OnEvent = Callable[[Event], object]


class AsyncClient:
    """An asyncio client for one Delineate service (the same rules as `Client`).

    `retries`: how often a request answered 429, 502, 503, 504, 524 or not at all is repeated,
    waiting what Retry-After says (else by backoff); initiate repeats only with an
    Idempotency-Key, and makes one up when none is given and `retries` > 0.
    `options` go to httpx.AsyncClient (headers, transport, verify, ...).
    """

    def __init__(self, base_url: str, *, retries: int = 3, timeout: float = 30.0, **options: Any) -> None:
        self.retries = retries
        self._timeout = timeout
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout, follow_redirects=False, **options)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def initiate(
        self, file_ids: Iterable[int], *, idempotency_key: str | None = None, callback_url: str | None = None
    ) -> Job:
        """POST /v1/download/initiate: the job, accepted (or the one this key already made)."""
        key = idempotency_key or (str(uuid.uuid4()) if self.retries else None)
        body, headers = core.initiate_request(list(file_ids), key, callback_url)
        response = await self._send("POST", core.INITIATE, key is not None, json=body, headers=headers)
        return Job.from_response(response)

    async def status(self, job: Job | Status | str) -> Status:
        """GET /v1/download/status/{jobId}, once."""
        return Status.from_response(await self._send("GET", core.status_path(job_id_of(job))))

    async def wait(
        self,
        job: Job | Status | str,
        *,
        timeout: float | None = 900.0,  # noqa: ASYNC109 (as Client.wait: one deadline over many requests)
        on_event: OnEvent | None = None,
    ) -> Status:
        """Follow the job until it ends; its final status when completed.

        Streams first, resuming a cut stream with Last-Event-ID; polls (honouring Retry-After)
        when the stream cannot be opened or keeps ending empty. Raises JobFailed or
        JobCancelled when the job ends so, WaitTimeout after `timeout` seconds, NotFound for
        an unknown or expired job. `on_event` sees every event (a polled status as `snapshot`).
        """
        job_id = job_id_of(job)
        deadline = core.Deadline(timeout)
        await self._follow(job_id, deadline, on_event)
        return core.ended(await self._poll(job_id, deadline, on_event))

    async def download(self, job: Job | Status | str, dest: str | os.PathLike[str] | IO[bytes]) -> int:
        """Fetch a completed job's file into `dest` (a path, written whole or not at all, or a
        binary stream); the number of bytes. The file route answers with a freshly presigned S3
        URL, fetched directly (none of this client's headers go to S3)."""
        url = core.presigned_url(await self._send("GET", core.file_path(job_id_of(job))))
        async with httpx.AsyncClient(timeout=self._timeout) as s3, s3.stream("GET", url) as got:
            if got.status_code != 200:
                await got.aread()
                raise core.error_from(got)
            if not isinstance(dest, str | os.PathLike):
                return await _copy(got.aiter_bytes(), dest)
            path = Path(dest)
            part = path.with_name(path.name + ".part")
            with part.open("wb") as out:
                size = await _copy(got.aiter_bytes(), out)
            part.replace(path)
            return size

    async def cancel(self, job: Job | Status | str) -> Status:
        """DELETE /v1/download/{jobId}: the status after cancelling; Conflict when it had ended."""
        return Status.from_response(await self._send("DELETE", core.cancel_path(job_id_of(job))))

    # -- the rules, applied with blocking I/O

    async def _send(self, method: str, url: str, retry: bool = True, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = await self._http.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                error = core.unreachable(exc)
                if not retry or attempt >= self.retries:
                    raise error from exc
            else:
                if response.status_code < 400:
                    return response
                error = core.error_from(response)
                if not retry or attempt >= self.retries or response.status_code not in core.RETRYABLE:
                    raise error
            await asyncio.sleep(core.retry_wait_s(error, attempt))
            attempt += 1

    async def _follow(self, job_id: str, deadline: core.Deadline, on_event: OnEvent | None) -> None:
        """Read the job's stream until its terminal event, resuming after cuts; returns early
        when polling should take over."""
        state = core.StreamState()
        while deadline.left() > 0:
            decoder = None
            try:
                async with self._http.stream(
                    "GET",
                    core.stream_path(job_id),
                    headers=state.headers(),
                    timeout=deadline.stream_timeout(self._timeout),
                ) as response:
                    if response.status_code != 200:
                        await response.aread()  # an error body, read before judging it
                    if not core.streaming(response):
                        return
                    decoder = core.SSEDecoder()
                    async for line in response.aiter_lines():
                        event = decoder.feed(line)
                        if event is not None:
                            if on_event is not None:
                                on_event(event)
                            if state.seen(event):
                                return
            except httpx.TransportError:
                pass  # cut by a proxy or a deploy, or silent past STREAM_IDLE_S: resume
            if not state.closed(decoder):
                return
            await asyncio.sleep(min(state.reconnect_s, deadline.left()))

    async def _poll(self, job_id: str, deadline: core.Deadline, on_event: OnEvent | None) -> Status:
        failures = 0
        while True:
            try:
                response = await self._http.get(core.status_path(job_id), timeout=self._timeout)
            except httpx.TransportError as exc:
                status, wait_s = None, core.retry_wait_s(core.unreachable(exc), failures)
            else:
                status, wait_s = core.polled(response, failures)
            if status is not None:
                failures = 0
                if on_event is not None:
                    on_event(Event("snapshot", status.body))
                if status.finished:
                    return status
            else:
                failures += 1
            deadline.check(job_id)
            await asyncio.sleep(min(wait_s, deadline.left()))


async def _copy(chunks: AsyncIterator[bytes], out: IO[bytes]) -> int:
    size = 0
    async for chunk in chunks:
        out.write(chunk)
        size += len(chunk)
    return size
