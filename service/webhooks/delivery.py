"""Signed webhook deliveries: one RQ job per attempt, on the worker's delivery pool.

`queue()` runs inside the MULTI that makes a job terminal (jobs/lifecycle.finish, through
`Runtime.announce`), so every ending of a job with a callbackUrl is announced exactly once,
even if the worker dies a moment later.
`deliver()` is the RQ job: ONE attempt. It signs the final status per the Standard Webhooks
scheme (webhook-id, webhook-timestamp, webhook-signature: HMAC-SHA256 with WEBHOOK_SECRET, by
webhooks/signature.py, shared with the client's verify_webhook), resolves and judges the host
once (webhooks/guard.py) and POSTs to that judged address, all within WEBHOOK_TIMEOUT_S
(resolution, connect, request and response headers: a receiver trickling bytes cannot stretch
it).

One retry policy, this module's: network errors, timeouts, 5xx, 408 and 429 schedule the next
attempt on RQ's scheduler after service/backoff.py's wait (the worker is free meanwhile; no
sleeping in a slot), up to WEBHOOK_MAX_ATTEMPTS; an attempt whose worker died counts as a
failed one (`on_lost`, RQ's failure callback, also run for abandoned jobs). RQ's own Retry is
never used. At most WEBHOOK_PER_HOST_CONCURRENCY attempts per destination host run at once in
a worker; one more is put back for a moment without spending an attempt.

The outcome is kept in the job's `webhook` field (shown in its status, written by
lifecycle.record_webhook); a delivery that gives up is kept as a dead letter that
`delineate webhooks` lists and redelivers (the newest WEBHOOK_DEAD_LETTERS_MAX, for JOB_TTL_S).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import redis
from rq import Callback, Queue
from rq.job import Job

from service import backoff, keys, runtime
from service.jobs import lifecycle, state
from service.jobs.enqueue import RESULT_TTL_S
from service.jobs.view import status_body
from service.settings import Settings
from service.telemetry import metrics, tracing
from service.telemetry.logging import get_logger
from service.webhooks import guard, signature

if TYPE_CHECKING:
    from service.runtime import Runtime

RETRYABLE_STATUSES = frozenset({408, 429})
USER_AGENT = "Delineate-Webhooks/1"
# What `lastError` says: coarse on purpose (a precise network error would tell a client which
# ports of a host are open, filtered or closed).
BLOCKED, NO_RESPONSE = "blocked", "no response"
log = get_logger("service.webhooks")


def queue(pipe: Any, rt: Runtime, job_id: str, event_id: str | None = None) -> None:
    """Stage the delivery of `job_id`'s terminal event on `pipe` (in MULTI)."""
    event_id = event_id or f"msg_{uuid.uuid4().hex}"
    record = {"state": "pending", "eventId": event_id, "attempts": 0, "lastStatus": None, "lastError": None}
    lifecycle.stage_webhook(pipe, job_id, record)
    hooks = Queue(keys.WEBHOOK_QUEUE, connection=rt.redis)
    hooks.enqueue_job(_attempt_job(hooks, rt.settings, job_id, event_id), pipeline=pipe)


def _attempt_job(hooks: Queue, settings: Settings, job_id: str, event_id: str) -> Job:
    return hooks.create_job(
        deliver,
        args=(job_id, event_id),
        timeout=int(settings.webhook_timeout_s) + 30,  # the attempt's own deadline ends it first
        result_ttl=RESULT_TTL_S,
        failure_ttl=settings.job_ttl_s,
        on_failure=Callback(on_lost),
    )


def _schedule(rt: Runtime, job_id: str, event_id: str, delay_s: float) -> None:
    """The next attempt, on RQ's scheduler (ScheduledJobRegistry), `delay_s` from now."""
    hooks = Queue(keys.WEBHOOK_QUEUE, connection=rt.redis)
    due = datetime.now(UTC) + timedelta(seconds=delay_s)
    hooks.schedule_job(_attempt_job(hooks, rt.settings, job_id, event_id), due)


def deliver(job_id: str, event_id: str) -> dict[str, Any] | None:
    """RQ entry point: one attempt to deliver the job's terminal event, then its consequence
    (delivered, the next attempt scheduled, or a dead letter)."""
    rt = runtime.current()
    found = _pending(rt, job_id, event_id)
    if found is None:
        return None
    job, record = found
    settings = rt.settings
    url = job.callback_url or ""
    host = urlsplit(url).hostname or ""
    with _host_slot(host, settings.webhook_per_host_concurrency) as admitted:
        if not admitted:  # this host has its share of attempts running: back in a moment
            _schedule(rt, job_id, event_id, backoff.delay_s(settings.webhook_retry_base_s, 0))
            return record
        payload = json.dumps(
            {
                "id": event_id,
                "type": f"download.{job.status}",
                "timestamp": state.now_iso(),
                "data": status_body(job),
            },
            separators=(",", ":"),
        )
        attempt = int(record.get("attempts", 0)) + 1
        with (
            tracing.job_span(job_id, job.traceparent, keys.WEBHOOK_QUEUE, attempt),
            tracing.webhook_span(host, attempt) as span,
        ):
            status, error, retryable = asyncio.run(_post(url, event_id, payload, settings))
            if span is not None and status is not None:
                span.set_attribute("http.response.status_code", status)
    record["attempts"] = attempt
    return _conclude(rt, job_id, record, host, status, error, retryable)


def on_lost(job: Job, connection: redis.Redis, *exc_info: Any) -> None:
    """RQ's failure callback: the attempt raised, timed out or its worker died (an abandoned
    job). It counts as an attempt that got no response."""
    job_id, event_id = job.args
    rt = runtime.current()
    found = _pending(rt, job_id, event_id)
    if found is None:
        return
    stored, record = found
    record["attempts"] = int(record.get("attempts", 0)) + 1
    _conclude(rt, job_id, record, urlsplit(stored.callback_url or "").hostname or "", None, NO_RESPONSE, True)


def _pending(rt: Runtime, job_id: str, event_id: str) -> tuple[state.JobRecord, dict[str, Any]] | None:
    """The job and its delivery record, if this event still waits to be delivered."""
    job = state.load(rt.redis, job_id)
    if job is None or not job.callback_url or rt.settings.webhook_secret is None:
        return None  # expired meanwhile, or webhooks switched off since: nothing to announce
    record = dict(job.webhook or {})
    if record.get("eventId") != event_id or record.get("state") in ("delivered", "failed"):
        return None  # a later redelivery owns the record, or this one already finished
    return job, record


def _conclude(
    rt: Runtime,
    job_id: str,
    record: dict[str, Any],
    host: str,
    status: int | None,
    error: str | None,
    retryable: bool,
) -> dict[str, Any]:
    """Record an attempt's outcome and act on it: done, next attempt scheduled, or dead letter."""
    conn, settings = rt.redis, rt.settings
    record.update(lastStatus=status, lastError=error, lastAttemptAt=state.now_iso())
    if error is None:
        record.update(state="delivered", deliveredAt=record["lastAttemptAt"])
        metrics.WEBHOOK_DELIVERIES.labels("delivered").inc()
        lifecycle.record_webhook(conn, job_id, record)
        log.info("webhook_delivered", host=host, attempts=record["attempts"])
        return record
    last = not retryable or record["attempts"] >= settings.webhook_max_attempts
    metrics.WEBHOOK_DELIVERIES.labels("gave_up" if last else "failed").inc()
    log.warning("webhook_attempt_failed", host=host, error=error, final=last)
    record["state"] = "failed" if last else "retrying"
    lifecycle.record_webhook(conn, job_id, record)
    if last:
        _dead_letter(conn, settings, job_id)
    else:
        wait_s = backoff.delay_s(settings.webhook_retry_base_s, record["attempts"] - 1)
        _schedule(rt, job_id, record["eventId"], wait_s)
    return record


# Built once: a client made without one loads the CA bundle again (~25 ms of CPU), and each
# attempt needs its own client (it connects to its own judged address). Shared across threads
# and event loops, as an SSLContext may be.
_TLS = httpx.create_ssl_context()


@functools.lru_cache(maxsize=1)
def _signer(secret: str) -> signature.Signer:
    return signature.Signer(secret)


async def _post(
    url: str, event_id: str, payload: str, settings: Settings
) -> tuple[int | None, str | None, bool]:
    """One signed POST to the judged address, within WEBHOOK_TIMEOUT_S all told:
    (HTTP status, coarse error or None, whether a retry may help)."""
    now = datetime.now(UTC)
    assert settings.webhook_secret is not None  # deliveries are only queued with a secret
    signer = _signer(settings.webhook_secret.get_secret_value())
    try:
        async with asyncio.timeout(settings.webhook_timeout_s):
            target = await guard.resolve(url, settings)  # DNS may have changed since initiate
            headers = {
                "host": target.host_header,
                "content-type": "application/json",
                "user-agent": USER_AGENT,
                "webhook-id": event_id,
                "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": signer.sign(event_id, now, payload),
            }
            # the TLS handshake names (and the certificate must match) the host, not the address
            extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
            async with (
                httpx.AsyncClient(verify=_TLS, follow_redirects=False, trust_env=False) as client,
                client.stream(
                    "POST", target.pinned_url, content=payload, headers=headers, extensions=extensions
                ) as response,
            ):
                status = response.status_code  # the body is never read
    except guard.Unresolvable:
        return None, NO_RESPONSE, True  # DNS trouble may pass
    except guard.UnsafeCallback:
        return None, BLOCKED, False
    except (httpx.HTTPError, OSError, TimeoutError):
        return None, NO_RESPONSE, True
    if 200 <= status < 300:
        return status, None, True
    return status, f"HTTP {status}", status >= 500 or status in RETRYABLE_STATUSES


_in_flight: dict[str, int] = {}  # attempts running per destination host (only hosts with any)
_in_flight_lock = threading.Lock()


@contextlib.contextmanager
def _host_slot(host: str, limit: int) -> Iterator[bool]:
    """One of `limit` attempts to `host` in this process, if one is free (never waits)."""
    with _in_flight_lock:
        running = _in_flight.get(host, 0)
        admitted = running < limit
        if admitted:
            _in_flight[host] = running + 1
    try:
        yield admitted
    finally:
        if admitted:
            with _in_flight_lock:
                _in_flight[host] -= 1
                if not _in_flight[host]:
                    del _in_flight[host]


def _dead_letter(conn: redis.Redis, settings: Settings, job_id: str) -> None:
    """Keep a given-up delivery for `delineate webhooks`: the newest WEBHOOK_DEAD_LETTERS_MAX,
    none older than JOB_TTL_S (its job is gone by then), the set itself expiring with them: a
    client whose callback always answers 4xx cannot grow it in a `noeviction` Redis."""
    now = time.time()
    with conn.pipeline() as pipe:
        pipe.zadd(keys.DEAD_LETTERS, {job_id: now})
        pipe.zremrangebyscore(keys.DEAD_LETTERS, "-inf", now - settings.job_ttl_s)
        pipe.zremrangebyrank(keys.DEAD_LETTERS, 0, -settings.webhook_dead_letters_max - 1)
        pipe.expire(keys.DEAD_LETTERS, settings.job_ttl_s)
        pipe.execute()


# -- dead letters ------------------------------------------------------------------------------


def dead_letters(conn: redis.Redis) -> list[dict[str, Any]]:
    """Deliveries that gave up, oldest first; entries whose job expired are dropped."""
    found: list[dict[str, Any]] = []
    for raw_id, failed_at in conn.zrange(keys.DEAD_LETTERS, 0, -1, withscores=True):
        job_id = raw_id.decode()
        job = state.load(conn, job_id)
        if job is None or not job.webhook or job.webhook.get("state") != "failed":
            conn.zrem(keys.DEAD_LETTERS, job_id)
            continue
        found.append(
            {
                "jobId": job_id,
                "status": job.status,
                "host": urlsplit(job.callback_url or "").hostname,  # never the full URL: it may hold a token
                "failedAt": datetime.fromtimestamp(failed_at, UTC).isoformat(timespec="seconds"),
                **job.webhook,
            }
        )
    return found


def redeliver(rt: Runtime, job_id: str) -> bool:
    """Queue a dead letter again with the same event id (receivers de-duplicate by it)."""
    job = state.load(rt.redis, job_id)
    if job is None or not job.webhook or job.webhook.get("state") != "failed":
        return False
    with rt.redis.pipeline() as pipe:
        pipe.multi()  # RQ's enqueue joins a pipeline only once it is in MULTI
        queue(pipe, rt, job_id, job.webhook["eventId"])
        pipe.zrem(keys.DEAD_LETTERS, job_id)
        pipe.execute()
    return True
