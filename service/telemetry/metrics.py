"""Every Prometheus metric the service exports, defined once (docs/observability.md lists them).

Two kinds of process export them:
- the API (`GET /metrics`) may run several uvicorn workers, so it uses prometheus-client's
  multiprocess mode: the CLI points PROMETHEUS_MULTIPROC_DIR at a fresh directory before any
  metric exists, each worker process writes its values to mmap files there, and the scrape
  merges them. Gauges say how they merge (`livesum`: processes that exited are dropped).
- a download worker is one process (downloads run in threads), so it keeps the default
  in-memory registry and serves it with `start_http_server` on WORKER_METRICS_PORT.

Queue depth and RQ worker states are read from Redis at scrape time by `QueueCollector`
(registered by the API), so they are right even when every worker is down.
Names: `delineate_*`; label values are bounded (route templates, never raw paths).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

# -- API -------------------------------------------------------------------------------------

HTTP_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

HTTP_REQUESTS = Counter(
    "delineate_http_requests",
    "HTTP requests answered, by route template, method and status class (2xx..5xx).",
    ["route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "delineate_http_request_duration_seconds",
    "Time from request to the end of the response, by route template, method and status class. "
    "For SSE streams this is the stream's lifetime.",
    ["route", "method", "status"],
    buckets=HTTP_LATENCY_BUCKETS,
)
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
    "Initiate requests refused before a job was created: queue_full (QUEUE_MAX_DEPTH, 503) or "
    "client_limit (PER_CLIENT_MAX_ACTIVE_JOBS, 429).",
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
    for queue in ("downloads-small", "downloads-large"):
        for metric in (JOBS_ACCEPTED, JOBS_STARTED, JOB_RETRIES, QUEUE_WAIT):
            metric.labels(queue)
        for outcome in OUTCOMES:
            JOBS_FINISHED.labels(queue, outcome)
            JOB_DURATION.labels(queue, outcome)
    for outcome in ("delivered", "failed", "gave_up"):
        WEBHOOK_DELIVERIES.labels(outcome)
    for reason in ("queue_full", "client_limit"):
        JOBS_REJECTED.labels(reason)
    JOBS_REAPED.labels("requeued", "orphaned")
    for reason in ("orphaned", "rq_missing", "rq_failed", "timeout"):
        JOBS_REAPED.labels("failed", reason)


_initialise()


# -- helpers used by the API -------------------------------------------------------------------

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    """One answered request. Children are cached: `.labels()` costs a lock and a dict build."""
    key = (route, method, status)
    pair = _children.get(key)
    if pair is None:
        label_method = method if method in METHODS else "other"
        status_class = f"{status // 100}xx"
        pair = (
            HTTP_REQUESTS.labels(route, label_method, status_class),
            HTTP_LATENCY.labels(route, label_method, status_class),
        )
        _children[key] = pair
    pair[0].inc()
    pair[1].observe(seconds)
    if status >= 500:
        HTTP_SERVER_ERRORS.labels(route, str(status)).inc()


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
        exemplar = {"trace_id": trace_id} if trace_id and not _multiprocess() else None
        JOB_DURATION.labels(queue or "unknown", outcome).observe(elapsed, exemplar=exemplar)


def job_started(queue: str, enqueued_at: datetime | None) -> None:
    """A worker starts an attempt: count it and observe how long it waited in the queue."""
    JOBS_STARTED.labels(queue or "unknown").inc()
    waited = seconds_since(enqueued_at)
    if waited is not None:
        QUEUE_WAIT.labels(queue or "unknown").observe(waited)


# -- S3 via botocore's event system ------------------------------------------------------------

_S3_STARTED = "delineate_metrics_started"


def _before_call(model: Any, context: dict[str, Any], **_: Any) -> None:
    context[_S3_STARTED] = time.perf_counter()


def _after_call(http_response: Any, model: Any, context: dict[str, Any], **_: Any) -> None:
    started = context.pop(_S3_STARTED, None)
    if started is not None:
        S3_LATENCY.labels(model.name).observe(time.perf_counter() - started)
    status = getattr(http_response, "status_code", 0)
    if status >= 400 and not (status == 404 and model.name in ("HeadObject", "HeadBucket", "GetObject")):
        S3_ERRORS.labels(model.name, str(status)).inc()


def _after_call_error(exception: BaseException, context: dict[str, Any], **kwargs: Any) -> None:
    started = context.pop(_S3_STARTED, None)
    operation = kwargs.get("event_name", "").rsplit(".", 1)[-1] or "unknown"
    if started is not None:
        S3_LATENCY.labels(operation).observe(time.perf_counter() - started)
    S3_ERRORS.labels(operation, type(exception).__name__).inc()


def instrument_s3(client: Any) -> Any:
    """Time every call of this boto3 S3 client and count its errors; returns the client."""
    events = client.meta.events
    events.register("before-call.s3", _before_call, unique_id="delineate-metrics-before")
    events.register("after-call.s3", _after_call, unique_id="delineate-metrics-after")
    events.register("after-call-error.s3", _after_call_error, unique_id="delineate-metrics-error")
    return client


# -- scrape-time collectors --------------------------------------------------------------------

RQ_WORKER_STATES = ("busy", "idle", "started", "suspended")


class QueueCollector(Collector):
    """LLEN of each RQ queue, RQ's registered workers by state and Redis's memory against its
    maxmemory (with `noeviction` a full Redis refuses new jobs), read from Redis per scrape.

    `conn_factory` returns a synchronous redis client; errors yield no samples (a scrape must
    not fail because Redis is down: the API's own metrics still matter then).
    """

    def __init__(self, conn_factory: Callable[[], Any], queues: Iterable[str]) -> None:
        self.conn_factory = conn_factory
        self.queues = tuple(queues)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from rq.queue import Queue
        from rq.worker import Worker

        conn = self.conn_factory()
        try:
            with conn.pipeline(transaction=False) as pipe:
                for name in self.queues:
                    pipe.llen(Queue(name, connection=conn).key)
                pipe.info("memory")
                *depths, memory = pipe.execute()
            workers = Worker.all(connection=conn)
            states = [str(getattr(w.get_state(), "value", w.get_state())) for w in workers]
        except Exception:  # Redis unreachable: export nothing rather than fail the scrape
            return
        depth = GaugeMetricFamily("delineate_queue_depth", "Jobs waiting in each RQ queue.", labels=["queue"])
        for name, value in zip(self.queues, depths, strict=True):
            depth.add_metric([name], value)
        yield depth
        family = GaugeMetricFamily(
            "delineate_rq_workers",
            "Workers registered in RQ, by state (busy = running >= 1 job).",
            labels=["state"],
        )
        for state in sorted({*RQ_WORKER_STATES, *states}):
            family.add_metric([state], states.count(state))
        yield family
        yield GaugeMetricFamily(
            "delineate_redis_memory_used_bytes", "Redis used_memory.", value=memory["used_memory"]
        )
        yield GaugeMetricFamily(
            "delineate_redis_memory_max_bytes",
            "Redis maxmemory (0: no limit, then the host's memory is).",
            value=memory["maxmemory"],
        )


# -- exposition --------------------------------------------------------------------------------


def _multiprocess() -> bool:
    return "PROMETHEUS_MULTIPROC_DIR" in os.environ


def api_registry(extra: Iterable[Collector] = ()) -> CollectorRegistry:
    """What `GET /metrics` renders: every API process's values merged, plus `extra` collectors."""
    registry = CollectorRegistry()
    if _multiprocess():
        multiprocess.MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY

        registry.register(_Delegate(REGISTRY))
    for collector in extra:
        registry.register(collector)
    return registry


class _Delegate(Collector):
    """Expose another registry's metrics inside ours (single-process API)."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        return iter(self.source.collect())


def render(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The exposition body and its content type (OpenMetrics when the scraper asks for it)."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


def mark_process_dead(pid: int | None = None) -> None:
    """Drop an exiting API process's live gauges (in-progress requests, SSE) from the merge."""
    if _multiprocess():
        multiprocess.mark_process_dead(pid or os.getpid())


def start_worker_exporter(port: int, addr: str, running: Callable[[], int], slots: int) -> None:
    """Serve this worker process's registry on `addr:port` (a daemon thread)."""
    from prometheus_client import start_http_server

    WORKER_RUNNING.set_function(lambda: float(running()))
    WORKER_SLOTS.set(slots)
    start_http_server(port, addr=addr)
