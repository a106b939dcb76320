"""Signed webhook deliveries: one RQ job per terminal event, retried with backoff and jitter.

`queue()` runs inside the MULTI that makes a job terminal (jobs/lifecycle.finish, through
`Runtime.announce`), so every ending of a job with a callbackUrl is announced exactly once,
even if the worker dies a moment later.
`deliver()` is the RQ job: it signs the final status per the Standard Webhooks scheme
(webhook-id, webhook-timestamp, webhook-signature: HMAC-SHA256 with WEBHOOK_SECRET, by
webhooks/signature.py, shared with the client's verify_webhook), POSTs it, and retries network
errors, timeouts, 5xx, 408 and 429 up to WEBHOOK_MAX_ATTEMPTS, waiting by service/backoff.py.
The outcome is kept in the job's
`webhook` field (shown in its status, written by lifecycle.record_webhook); a delivery that
gives up is kept as a dead letter that `delineate webhooks` lists and redelivers. The waits
happen inside the job, like download retries, so they never need RQ's scheduler.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import redis
from rq import Queue, Retry

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
log = get_logger("service.webhooks")


def queue(pipe: Any, rt: Runtime, job_id: str, event_id: str | None = None) -> None:
    """Stage the delivery of `job_id`'s terminal event on `pipe` (in MULTI)."""
    event_id = event_id or f"msg_{uuid.uuid4().hex}"
    record = {"state": "pending", "eventId": event_id, "attempts": 0, "lastStatus": None, "lastError": None}
    lifecycle.stage_webhook(pipe, job_id, record)
    Queue(keys.WEBHOOK_QUEUE, connection=rt.redis).enqueue_call(
        deliver,
        args=(job_id, event_id),
        timeout=_job_timeout_s(rt.settings),
        result_ttl=RESULT_TTL_S,
        failure_ttl=rt.settings.job_ttl_s,
        retry=Retry(max=2),  # the worker died mid-delivery: the next run resumes the count
        pipeline=pipe,
    )


def deliver(job_id: str, event_id: str) -> dict[str, Any] | None:
    """RQ entry point: deliver the job's terminal event until it succeeds or attempts run out."""
    rt = runtime.current()
    conn, settings = rt.redis, rt.settings
    job = state.load(conn, job_id)
    if job is None or not job.callback_url or settings.webhook_secret is None:
        return None  # expired meanwhile, or webhooks switched off since: nothing to announce
    record = dict(job.webhook or {})
    if record.get("eventId") != event_id or record.get("state") in ("delivered", "failed"):
        return record  # a later redelivery owns the record, or this one already finished
    payload = json.dumps(
        {
            "id": event_id,
            "type": f"download.{job.status}",
            "timestamp": state.now_iso(),
            "data": status_body(job),
        },
        separators=(",", ":"),
    )
    signer = signature.Signer(settings.webhook_secret.get_secret_value())
    url = job.callback_url
    host = urlsplit(url).hostname or ""
    with (
        tracing.job_span(job_id, job.traceparent, keys.WEBHOOK_QUEUE, int(record.get("attempts", 0)) + 1),
        httpx.Client(timeout=settings.webhook_timeout_s, follow_redirects=False) as client,
    ):
        while record["attempts"] < settings.webhook_max_attempts:
            record["attempts"] += 1
            with tracing.webhook_span(host, record["attempts"]) as span:
                status, error, retryable = _attempt(client, signer, url, event_id, payload, settings)
                if span is not None and status is not None:
                    span.set_attribute("http.response.status_code", status)
            record.update(lastStatus=status, lastError=error, lastAttemptAt=state.now_iso())
            if error is None:
                record.update(state="delivered", deliveredAt=record["lastAttemptAt"])
                metrics.WEBHOOK_DELIVERIES.labels("delivered").inc()
                lifecycle.record_webhook(conn, job_id, record)
                log.info("webhook_delivered", job_id=job_id, host=host, attempts=record["attempts"])
                return record
            last = not retryable or record["attempts"] >= settings.webhook_max_attempts
            metrics.WEBHOOK_DELIVERIES.labels("gave_up" if last else "failed").inc()
            log.warning("webhook_attempt_failed", job_id=job_id, host=host, error=error, final=last)
            if last:
                break
            record["state"] = "retrying"
            lifecycle.record_webhook(conn, job_id, record)
            time.sleep(backoff.delay_s(settings.webhook_retry_base_s, record["attempts"] - 1))
    record["state"] = "failed"
    lifecycle.record_webhook(conn, job_id, record)
    conn.zadd(keys.DEAD_LETTERS, {job_id: time.time()})
    return record


def _attempt(
    client: httpx.Client, signer: signature.Signer, url: str, event_id: str, payload: str, settings: Settings
) -> tuple[int | None, str | None, bool]:
    """One signed POST: (HTTP status, error or None, whether a retry may help)."""
    try:
        guard.check(url, settings)  # DNS may have changed since initiate
    except guard.UnsafeCallback as exc:
        return None, str(exc), False
    now = datetime.now(UTC)
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": event_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signer.sign(event_id, now, payload),
    }
    try:
        response = client.post(url, content=payload, headers=headers)
    except httpx.HTTPError as exc:
        return None, type(exc).__name__, True
    status = response.status_code
    if 200 <= status < 300:
        return status, None, True
    return status, f"HTTP {status}", status >= 500 or status in RETRYABLE_STATUSES


def _job_timeout_s(settings: Settings) -> int:
    base, attempts = settings.webhook_retry_base_s, settings.webhook_max_attempts
    waits = sum(backoff.longest_s(base, i) for i in range(attempts))
    return int(settings.webhook_max_attempts * (settings.webhook_timeout_s + 5) + waits) + 60


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
