"""What the sync and async clients share: the job and status values, the typed errors, reading
an error answer, the SSE line decoder and the waiting rules. No I/O here.

Only httpx and the standard library (and service/backoff.py, itself standard library only), so
an integrator can use the client without the server's dependencies.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from service import backoff

INITIATE = "/v1/download/initiate"
TERMINAL = frozenset({"completed", "failed", "cancelled"})
DEFAULT_POLL_S = 2.0  # when a status answer carries no Retry-After
DEFAULT_RECONNECT_S = 2.0  # the server's SSE_RETRY_MS default, until a stream says otherwise
BACKOFF_BASE_S = 1.0  # after a network error or a proxy's 502/504/524 without Retry-After
MAX_WAIT_S = 30.0  # no single wait between two requests is longer
STREAM_IDLE_S = 60.0  # no byte (event or heartbeat) for this long: the stream is dead, reconnect
MAX_EMPTY_STREAMS = 3  # consecutive streams that brought no event: stop streaming, poll instead
# Answers after which the same request may simply be repeated: told to wait (429, 503), or a
# proxy that lost it (502, 504, Cloudflare's 524). Initiate repeats only with an Idempotency-Key.
RETRYABLE = frozenset({429, 502, 503, 504, 524})


# ------------------------------------------------------------------ values


@dataclass(frozen=True)
class Job:
    """What initiate answered (202): the job id and where to follow it."""

    job_id: str
    status: str
    total_file_ids: int
    replayed: bool  # the Idempotency-Key was seen before: this is the job that first request made
    request_id: str | None
    body: dict[str, Any] = field(repr=False)

    @classmethod
    def from_response(cls, response: httpx.Response) -> Job:
        body = response.json()
        return cls(
            job_id=body["jobId"],
            status=body["status"],
            total_file_ids=body["totalFileIds"],
            replayed=response.headers.get("idempotent-replayed") == "true",
            request_id=response.headers.get("x-request-id"),
            body=body,
        )


@dataclass(frozen=True)
class Status:
    """A job's status body (GET /v1/download/status/{jobId}; docs/frontend.md lists its fields)."""

    job_id: str
    status: str
    done: int
    total: int
    percent: float
    size: int | None
    error: str | None
    download_url: str | None  # the service's /file route, once completed
    request_id: str | None
    body: dict[str, Any] = field(repr=False)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def from_body(cls, body: dict[str, Any], request_id: str | None = None) -> Status:
        progress = body.get("progress") or {}
        return cls(
            job_id=body["jobId"],
            status=body["status"],
            done=progress.get("done", 0),
            total=progress.get("total", 0),
            percent=progress.get("percent", 0.0),
            size=body.get("size"),
            error=body.get("error"),
            download_url=body.get("downloadUrl"),
            request_id=request_id,
            body=body,
        )

    @classmethod
    def from_response(cls, response: httpx.Response) -> Status:
        return cls.from_body(response.json(), response.headers.get("x-request-id"))


@dataclass(frozen=True)
class Event:
    """One Server-Sent Event: `snapshot`, `status`, `progress` or a terminal one (its data parsed).

    While polling, `wait` reports each status body as a `snapshot` without an id.
    """

    event: str
    data: Any
    id: str | None = None


def job_id_of(job: Job | Status | str) -> str:
    """Every call takes what initiate returned, a status, or a plain job id."""
    return job if isinstance(job, str) else job.job_id


def status_path(job_id: str) -> str:
    return f"/v1/download/status/{job_id}"


def stream_path(job_id: str) -> str:
    return f"/v1/download/stream/{job_id}"


def file_path(job_id: str) -> str:
    return f"/v1/download/{job_id}/file"


def cancel_path(job_id: str) -> str:
    return f"/v1/download/{job_id}"


def initiate_request(
    file_ids: list[int], idempotency_key: str | None, callback_url: str | None
) -> tuple[dict[str, Any], dict[str, str]]:
    """The initiate body and headers."""
    body: dict[str, Any] = {"file_ids": list(file_ids)}
    if callback_url is not None:
        body["callbackUrl"] = callback_url
    return body, ({"Idempotency-Key": idempotency_key} if idempotency_key else {})


# ------------------------------------------------------------------ errors


class DelineateError(Exception):
    """Anything the client raises; `request_id` is the one to quote in a bug report."""

    def __init__(self, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id


class ApiError(DelineateError):
    """The service (or a proxy before it) answered with an error status."""

    def __init__(
        self,
        status: int | None,
        message: str,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, request_id)
        self.status = status
        self.retry_after = retry_after  # seconds, when the answer said how long to wait

    def __str__(self) -> str:
        where = f" (request id {self.request_id})" if self.request_id else ""
        return f"{self.status or 'no answer'}: {self.message}{where}"


class BadRequest(ApiError):
    """400, 413, 415, 422: the request is wrong; repeating it will not help."""


class NotFound(ApiError):
    """404: no such job; 410 (`gone`): it existed but has expired (JOB_TTL_S)."""

    @property
    def gone(self) -> bool:
        return self.status == 410


class Conflict(ApiError):
    """409: the file of an unfinished job, or cancelling a job that has already finished."""


class RateLimited(ApiError):
    """429: over the rate limit or the per-client limit of unfinished jobs; see `retry_after`."""


class Unavailable(ApiError):
    """503 (queue full, Redis or S3 down), a proxy's 502/504/524, or no answer at all."""


class JobEnded(DelineateError):
    """`wait` saw the job end otherwise than completed; `status` is its final status."""

    def __init__(self, status: Status) -> None:
        reason = status.error or "no error given"
        super().__init__(f"job {status.job_id} {status.status}: {reason}", status.request_id)
        self.status = status


class JobFailed(JobEnded):
    """The job failed (its retries ran out); `status.error` says why."""


class JobCancelled(JobEnded):
    """Someone cancelled the job."""


class WaitTimeout(DelineateError, TimeoutError):
    """`wait`'s timeout passed before the job ended (the job itself goes on)."""


def retry_after_of(response: httpx.Response) -> float | None:
    try:
        value = float(response.headers.get("retry-after", ""))
    except ValueError:
        return None
    return value if value >= 0 else None


def error_from(response: httpx.Response) -> ApiError:
    """The typed error for an error answer: the service's JSON `{error, message, requestId}`,
    or whatever a proxy sent instead."""
    try:
        body = json.loads(response.read())
    except ValueError:
        body = None
    body = body if isinstance(body, dict) else {}
    message = str(body.get("message") or response.reason_phrase or "error")
    request_id = body.get("requestId") or response.headers.get("x-request-id")
    code = response.status_code
    kind: type[ApiError] = ApiError
    if code in (404, 410):
        kind = NotFound
    elif code == 409:
        kind = Conflict
    elif code == 429:
        kind = RateLimited
    elif code in RETRYABLE or code >= 500:
        kind = Unavailable
    elif 400 <= code < 500:
        kind = BadRequest
    return kind(code, message, request_id, retry_after_of(response))


def unreachable(exc: httpx.TransportError) -> Unavailable:
    return Unavailable(None, f"no answer: {type(exc).__name__}: {exc}")


def retry_wait_s(error: ApiError, attempt: int) -> float:
    """How long to wait before repeating after `error` (attempt counts from 0)."""
    if error.retry_after is not None:
        return min(error.retry_after, MAX_WAIT_S)
    return min(backoff.delay_s(BACKOFF_BASE_S, attempt), MAX_WAIT_S)


def ended(status: Status) -> Status:
    """A finished status returned as is when completed; otherwise raised as its typed error."""
    if status.status == "failed":
        raise JobFailed(status)
    if status.status == "cancelled":
        raise JobCancelled(status)
    return status


class Deadline:
    """wait()'s timeout, as what is left of it."""

    def __init__(self, timeout_s: float | None) -> None:
        self.timeout_s = timeout_s
        self.at = None if timeout_s is None else time.monotonic() + timeout_s

    def left(self) -> float:
        return float("inf") if self.at is None else max(0.0, self.at - time.monotonic())

    def check(self, job_id: str) -> None:
        if self.left() <= 0:
            raise WaitTimeout(f"job {job_id} did not end within {self.timeout_s:g} s")

    def stream_timeout(self, connect_s: float) -> httpx.Timeout:
        """A stream's timeouts: it is dead after STREAM_IDLE_S without a byte, or at the deadline."""
        read = max(0.1, min(STREAM_IDLE_S, self.left()))
        return httpx.Timeout(connect_s, read=read)


# ------------------------------------------------------------------ Server-Sent Events


class SSEDecoder:
    """Lines of a text/event-stream in, events out (comments, i.e. heartbeats, skipped)."""

    def __init__(self) -> None:
        self.retry_s: float | None = None  # the server's reconnect hint (SSE_RETRY_MS)
        self._reset()

    def _reset(self) -> None:
        self._event, self._data, self._id, self._fields = "message", [], None, False

    def feed(self, line: str) -> Event | None:
        """One line (without its end); the event it completes, if any."""
        if line == "":
            event = None
            if self._fields and self._data:
                data = "\n".join(self._data)
                try:
                    parsed: Any = json.loads(data)
                except ValueError:
                    parsed = data
                event = Event(self._event, parsed, self._id)
            self._reset()
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        self._fields = True
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = value
        elif name == "retry" and value.isdigit():
            self.retry_s = int(value) / 1000
        return None


class StreamState:
    """Following a job's stream across reconnects: the last event id, and when to give up on it.

    A stream that brings no event before it ends (a proxy cutting a silent stream, say) counts
    as empty; after MAX_EMPTY_STREAMS of those in a row the client polls instead.
    """

    def __init__(self) -> None:
        self.last_id: str | None = None
        self.reconnect_s = DEFAULT_RECONNECT_S
        self.empty = 0
        self.events = 0  # in the current stream

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream"}
        if self.last_id:
            headers["Last-Event-ID"] = self.last_id
        return headers

    def seen(self, event: Event) -> bool:
        """Record an event; whether it is the job's last."""
        self.events += 1
        if event.id:
            self.last_id = event.id
        return event.event in TERMINAL

    def closed(self, decoder: SSEDecoder | None) -> bool:
        """The stream ended without a terminal event; whether to stream again (else poll)."""
        if decoder is not None and decoder.retry_s is not None:
            self.reconnect_s = decoder.retry_s
        self.empty = 0 if self.events else self.empty + 1
        self.events = 0
        return self.empty < MAX_EMPTY_STREAMS


def streaming(response: httpx.Response) -> bool:
    """Whether a stream request's answer is an event stream to read. Anything else (204 after
    the job's end, a proxy's error page, a 5xx) leaves it to polling; 404 and 410 raise."""
    if response.status_code in (404, 410):
        raise error_from(response)
    content_type = response.headers.get("content-type", "")
    return response.status_code == 200 and content_type.startswith("text/event-stream")


def presigned_url(response: httpx.Response) -> str:
    """Where the file route's 302 points: an S3 URL presigned for this very request."""
    location = response.headers.get("location")
    if response.status_code != 302 or not location:
        message = f"expected a 302 to the file, got {response.status_code}"
        raise ApiError(response.status_code, message, response.headers.get("x-request-id"))
    return str(response.url.join(location))


def polled(response: httpx.Response, failures: int) -> tuple[Status | None, float]:
    """One poll's answer: the status (None after a retryable error) and how long to wait
    (`failures`: retryable errors in a row before this one).

    Errors that waiting cannot fix (404, 410, 400) raise.
    """
    if response.status_code == 200:
        status, wait_s = Status.from_response(response), retry_after_of(response)
        return status, min(DEFAULT_POLL_S if wait_s is None else wait_s, MAX_WAIT_S)
    error = error_from(response)
    if response.status_code in RETRYABLE or response.status_code >= 500:
        return None, retry_wait_s(error, failures)
    raise error
