"""The catalogue: every Prometheus metric the service exports, defined once
(docs/observability.md lists them), and the small helpers that record them.

Who serves them is telemetry/exposition.py; S3 calls are timed by telemetry/s3.py's botocore
hooks; queue depth and RQ worker states are read from Redis per scrape by
jobs/enqueue.py:QueueCollector. Names: `delineate_*`; label values are bounded (route
templates, never raw paths).
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from service import keys

# -- API -------------------------------------------------------------------------------------

HTTP_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

HTTP_LABELS = ("route", "method", "status")
HTTP_LATENCY_NAME = "delineate_http_request_duration_seconds"
HTTP_LATENCY = Histogram(
    HTTP_LATENCY_NAME,
    "Time from request to the end of the response, by route template, method and status class. "
    "For SSE streams this is the stream's lifetime.",
    HTTP_LABELS,
    buckets=HTTP_LATENCY_BUCKETS,
)


class RequestCounter(Collector):
    """`delineate_http_requests_total`, the requests answered, read at scrape time from the
    duration histogram's `_count`: every answered request is one observation there, so a
    counter written beside it counted the same thing a second time on every request's path
    (one more locked write to a metrics file). Same name, help, labels and values as when it
    was a Counter of its own. Wraps the collector that yields the histogram (`exposition`)."""

    NAME = "delineate_http_requests"
    HELP = "HTTP requests answered, by route template, method and status class (2xx..5xx)."

    def __init__(self, source: Collector) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        for family in self.source.collect():
            yield family
            if family.name != HTTP_LATENCY_NAME:
                continue
            counts, created = {}, {}
            for sample in family.samples:
                labels = tuple(sample.labels[name] for name in HTTP_LABELS)
                if sample.name == HTTP_LATENCY_NAME + "_count":
                    counts[labels] = sample.value
                elif sample.name == HTTP_LATENCY_NAME + "_created":  # single-process mode only
                    created[labels] = sample.value
            counter = CounterMetricFamily(self.NAME, self.HELP, labels=HTTP_LABELS)
            for labels, count in counts.items():
                counter.add_metric(labels, count, created=created.get(labels))
            yield counter


HTTP_SERVER_ERRORS = Counter(
    "delineate_http_server_errors",
    "5xx responses the API itself sent, by route and exact status (504 = legacy /start cut at "
    "REQUEST_TIMEOUT_MS). A 504/524 invented by a proxy never reaches the API.",
    ["route", "status"],
)
HTTP_IN_PROGRESS = Gauge(
    "delineate_http_requests_in_progress",
    "Requests being handled right now (SSE streams included).",
    multiprocess_mode="livesum",
)


class TurnGauge:
    """A gauge whose changes during one event-loop turn reach it as one write, at the turn's end.

    In multiprocess mode every write of a metric takes a lock and stores into this process's
    metrics file; the in-progress gauge went up and down once per request, two writes on every
    request's path. Requests start and end by the dozen in one turn under load: the turn's net
    change is one write. A scrape reads the files, so the exposition flushes first (the scrape
    then counts itself, as before). Used from the event loop only.
    """

    def __init__(self, gauge: Gauge) -> None:
        self.gauge = gauge
        self.value = 0
        self._scheduled = False

    def add(self, amount: int) -> None:
        self.value += amount
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        self.gauge.set(self.value)


IN_PROGRESS = TurnGauge(HTTP_IN_PROGRESS)
SSE_CONNECTIONS = Gauge(
    "delineate_sse_connections",
    "Open SSE streams (GET /v1/download/stream/{job_id}).",
    multiprocess_mode="livesum",
)
RATE_LIMITED = Counter(
    "delineate_rate_limit_rejections",
    "Requests answered 429 because the client's shared budget (Redis) was spent.",
)

# -- Jobs --------------------------------------------------------------------------------------

# Resolve 1 s .. 300 s; 150 is a bucket edge because the job SLO is "finished within 150 s".
JOB_DURATION_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 150, 180, 240, 300, 600)
QUEUE_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
OUTCOMES = ("completed", "failed", "cancelled")

JOBS_ACCEPTED = Counter(
    "delineate_jobs_accepted", "Jobs accepted by POST /v1/download/initiate (enqueued).", ["queue"]
)
JOBS_STARTED = Counter(
    "delineate_jobs_started", "Job attempts a worker started (a retry is a new start).", ["queue"]
)
JOBS_FINISHED = Counter(
    "delineate_jobs_finished",
    "Jobs that reached a terminal state, by outcome (completed, failed, cancelled).",
    ["queue", "outcome"],
)
JOB_DURATION = Histogram(
    "delineate_job_duration_seconds",
    "Accepted -> terminal state, the client's wait (queue wait and retries included). "
    "The job SLO reads the le=150 bucket.",
    ["queue", "outcome"],
    buckets=JOB_DURATION_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "delineate_job_queue_wait_seconds",
    "Enqueued (or re-enqueued for a retry) -> a worker starts the attempt.",
    ["queue"],
    buckets=QUEUE_WAIT_BUCKETS,
)
JOBS_REJECTED = Counter(
    "delineate_jobs_rejected",
    "Initiate requests refused: queue_full (QUEUE_MAX_DEPTH, 503), client_limit "
    "(PER_CLIENT_MAX_ACTIVE_JOBS, 429) or not_replicated (fewer than REDIS_MIN_REPLICAS_ACK "
    "replicas confirmed the job in time, 503; the job was withdrawn).",
    ["reason"],
)
JOB_RETRIES = Counter(
    "delineate_job_retries", "Failed attempts that RQ will run again after a backoff.", ["queue"]
)
JOBS_CANCELLED = Counter(
    "delineate_jobs_cancelled", "Jobs cancelled by their client (DELETE /v1/download/{job_id})."
)
JOBS_REAPED = Counter(
    "delineate_jobs_reaped",
    "Jobs the reaper (service/jobs/reaper.py) requeued or failed, by action and reason: "
    "orphaned (in no queue or registry), rq_missing, rq_failed, timeout (stuck beyond it).",
    ["action", "reason"],
)
WEBHOOK_DELIVERIES = Counter(
    "delineate_webhook_deliveries",
    "Webhook delivery attempts by outcome: delivered (2xx), failed (other status or network "
    "error, will be retried), gave_up (last attempt failed).",
    ["outcome"],
)
# Set by worker processes only (the API exports them as 0, harmless under sum()).
WORKER_RUNNING = Gauge(
    "delineate_worker_downloads_running",
    "Downloads running in this worker process (busy slots).",
    multiprocess_mode="livesum",
)
WORKER_SLOTS = Gauge(
    "delineate_worker_download_slots",
    "WORKER_CONCURRENCY: downloads this worker process may run at once.",
    multiprocess_mode="livesum",
)

# Set once by each API and worker process as it starts (record_process_start).
PROCESS_START = Gauge(
    "delineate_process_start_time_seconds",
    "Unix time the newest live process started: a new value marks a restart or a deploy "
    "(the dashboards' annotations place one at this time).",
    multiprocess_mode="livemax",
)


def record_process_start() -> None:
    PROCESS_START.set(time.time())


# -- S3 ----------------------------------------------------------------------------------------

S3_LATENCY = Histogram(
    "delineate_s3_request_duration_seconds",
    "S3 API calls, by operation (HeadObject, GetObject, UploadPart...), botocore retries included.",
    ["operation"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
S3_ERRORS = Counter(
    "delineate_s3_errors",
    "S3 calls that failed, by operation and reason (HTTP status or exception class). "
    "A 404 from HeadObject is an answer (file missing), not an error.",
    ["operation", "reason"],
)


def _initialise() -> None:
    """Create the label sets we know, at 0: a series born at 1 loses its first increment to rate()."""
    for queue in keys.DOWNLOAD_QUEUES:
        for metric in (JOBS_ACCEPTED, JOBS_STARTED, JOB_RETRIES, QUEUE_WAIT):
            metric.labels(queue)
        for outcome in OUTCOMES:
            JOBS_FINISHED.labels(queue, outcome)
            JOB_DURATION.labels(queue, outcome)
    for outcome in ("delivered", "failed", "gave_up"):
        WEBHOOK_DELIVERIES.labels(outcome)
    for reason in ("queue_full", "client_limit", "not_replicated"):
        JOBS_REJECTED.labels(reason)
    JOBS_REAPED.labels("requeued", "orphaned")
    for reason in ("orphaned", "rq_missing", "rq_failed", "timeout"):
        JOBS_REAPED.labels("failed", reason)


_initialise()


# -- helpers used by the API -------------------------------------------------------------------

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_children: dict[tuple[str, str, int], Any] = {}
_observed: dict[tuple[str, str, int], list[float]] = {}


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    """One answered request (counted too: RequestCounter), written at the end of the event-loop
    turn with the turn's others of its route, method and status (`_write_observed`): in
    multiprocess mode each write takes a lock and stores into the metrics file, and a request's
    observation was two (the sum and a bucket) where a busy turn's dozens now share them.
    Off the event loop (a test, a thread) it is written at once."""
    pending = _observed.get(key := (route, method, status))
    if pending is None:
        _observed[key] = [seconds]
        try:
            asyncio.get_running_loop().call_soon(_write_observed, key)
        except RuntimeError:
            _write_observed(key)
    else:
        pending.append(seconds)
    if status >= 500:
        HTTP_SERVER_ERRORS.labels(route, str(status)).inc()


def _write_observed(key: tuple[str, str, int]) -> None:
    """What `Histogram.observe` would have written for each of `key`'s pending observations, in
    one write of the sum and one per bucket (its buckets are cumulative when exposed, not
    stored: each value is stored in the first bucket whose bound it does not exceed)."""
    seconds = _observed.pop(key, None)
    if not seconds:
        return
    child = _children.get(key)
    if child is None:
        route, method, status = key
        label_method = method if method in METHODS else "other"
        child = _children[key] = HTTP_LATENCY.labels(route, label_method, f"{status // 100}xx")
    child._sum.inc(sum(seconds))
    for bucket, count in collections.Counter(
        bisect.bisect_left(HTTP_LATENCY_BUCKETS, s) for s in seconds
    ).items():
        child._buckets[bucket].inc(count)


def flush_request_metrics() -> None:
    """Write what this turn's requests left pending (before an exposition reads the files)."""
    for key in list(_observed):
        _write_observed(key)
    IN_PROGRESS.flush()


def seconds_since(moment: str | datetime | None) -> float | None:
    """Seconds since a UTC moment (ISO-8601 text as stored in a job, or RQ's datetime)."""
    if moment is None or moment == "":
        return None
    if isinstance(moment, str):
        try:
            moment = datetime.fromisoformat(moment)
        except ValueError:
            return None
    if moment.tzinfo is None:  # RQ stores naive UTC
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (datetime.now(UTC) - moment).total_seconds())


def job_finished(
    queue: str, outcome: str, created_at: str | datetime | None, trace_id: str | None = None
) -> None:
    """Count a terminal job and observe accepted -> now (with the trace id as an exemplar)."""
    JOBS_FINISHED.labels(queue or "unknown", outcome).inc()
    elapsed = seconds_since(created_at)
    if elapsed is not None:
        # exemplars exist in single-process exposition only (a worker's registry)
        exemplar = (
            {"trace_id": trace_id} if trace_id and "PROMETHEUS_MULTIPROC_DIR" not in os.environ else None
        )
        JOB_DURATION.labels(queue or "unknown", outcome).observe(elapsed, exemplar=exemplar)


def job_started(queue: str, enqueued_at: datetime | None) -> None:
    """A worker starts an attempt: count it and observe how long it waited in the queue."""
    JOBS_STARTED.labels(queue or "unknown").inc()
    waited = seconds_since(enqueued_at)
    if waited is not None:
        QUEUE_WAIT.labels(queue or "unknown").observe(waited)
