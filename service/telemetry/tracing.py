"""OpenTelemetry tracing: one trace from the initiate request through the queue to the job.

Off unless OTEL_EXPORTER_OTLP_ENDPOINT is set: then nothing is instrumented, no provider is
installed (OpenTelemetry's API stays a no-op) and every helper here returns at once.

On: spans go by OTLP/HTTP (protobuf) to `{endpoint}/v1/traces` (Jaeger, an OTel collector).
Starlette (the server span per request), Redis and botocore are instrumented. The enqueue
span's W3C `traceparent` is stored in the job's hash; the worker continues that trace, so one
trace holds the HTTP request, the enqueue, the job, each S3 call it made and the webhook
delivery (its job span and one CLIENT span per attempt).

Root client spans (RQ's own Redis polling, health-check S3 calls outside any request) are
not sampled: they would bury the traces that matter under thousands of one-span traces.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

NOT_TRACED = "/metrics,/health/live,/health/ready"
_propagator = TraceContextTextMapPropagator()
_enabled = False


def enabled() -> bool:
    return _enabled


def setup(endpoint: str | None, service_name: str, sample_ratio: float = 1.0) -> bool:
    """Install the SDK, the OTLP exporter and the Redis/botocore instrumentation; once per process."""
    global _enabled
    if not endpoint or _enabled:
        return _enabled
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.botocore import BotocoreInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased

    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name}),
        sampler=ParentBased(root=_root_sampler(sample_ratio)),
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=_traces_url(endpoint))))
    trace.set_tracer_provider(provider)
    RedisInstrumentor().instrument(tracer_provider=provider)
    BotocoreInstrumentor().instrument(tracer_provider=provider)
    _enabled = True
    return True


def _traces_url(endpoint: str) -> str:
    base = endpoint.rstrip("/")
    return base if base.endswith("/v1/traces") else f"{base}/v1/traces"


def _root_sampler(ratio: float) -> Any:
    """Root sampler: drop CLIENT spans that have no parent; keep `ratio` of the other roots.

    Children follow their parent (ParentBased), so a job's spans are kept exactly when the
    initiate request's trace was.
    """
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult, TraceIdRatioBased

    by_ratio = TraceIdRatioBased(ratio)

    class NoOrphanClientSpans(Sampler):
        def should_sample(
            self,
            parent_context: Any,
            trace_id: int,
            name: str,
            kind: SpanKind | None = None,
            attributes: Any = None,
            links: Sequence[Any] | None = None,
            trace_state: Any = None,
        ) -> SamplingResult:
            if kind == SpanKind.CLIENT:
                return SamplingResult(Decision.DROP)
            return by_ratio.should_sample(
                parent_context, trace_id, name, kind, attributes, links, trace_state
            )

        def get_description(self) -> str:
            return "NoOrphanClientSpans"

    return NoOrphanClientSpans()


def instrument_app(app: Any) -> None:
    """Add OpenTelemetry's ASGI middleware (outermost), spans named after the route template.

    StarletteInstrumentor.instrument_app would add it too, but also a span for every
    `send`/`receive` message: for an SSE stream, one per event. Those are excluded here.
    """
    if not _enabled:
        return
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from opentelemetry.instrumentation.starlette import _get_default_span_details
    from opentelemetry.util.http import parse_excluded_urls

    app.add_middleware(
        OpenTelemetryMiddleware,
        excluded_urls=parse_excluded_urls(NOT_TRACED),
        default_span_details=_get_default_span_details,
        exclude_spans=["receive", "send"],
    )


def current_trace_id() -> str | None:
    """The active trace's id (32 hex digits); None when tracing is off or the trace is not sampled
    (it would be a dead link: nothing of it reaches Jaeger)."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid and context.trace_flags.sampled else None


def current_traceparent() -> str | None:
    """The W3C traceparent of the active span, to store with a job."""
    if not _enabled:
        return None
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id inside a stored traceparent (`00-<trace id>-<span id>-<flags>`), if sampled."""
    parts = (traceparent or "").split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or not int(parts[3] or "0", 16) & 1:
        return None
    return parts[1]


@contextmanager
def producer_span(queue: str, job_id: str) -> Iterator[None]:
    """The enqueue, as a PRODUCER span: the job's span will be its child."""
    if not _enabled:
        yield
        return
    tracer = trace.get_tracer("delineate.jobs")
    attributes = {"messaging.system": "rq", "messaging.destination.name": queue, "delineate.job_id": job_id}
    with tracer.start_as_current_span(f"enqueue {queue}", kind=SpanKind.PRODUCER, attributes=attributes):
        yield


@contextmanager
def job_span(job_id: str, traceparent: str | None, queue: str, attempt: int) -> Iterator[None]:
    """The job's run, a CONSUMER span continuing the trace of the request that created it."""
    if not _enabled:
        yield
        return
    parent = _propagator.extract({"traceparent": traceparent}) if traceparent else None
    tracer = trace.get_tracer("delineate.jobs")
    attributes = {
        "messaging.system": "rq",
        "messaging.destination.name": queue,
        "delineate.job_id": job_id,
        "delineate.attempt": attempt,
    }
    with tracer.start_as_current_span(
        f"process {queue}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
    ):
        yield


@contextmanager
def webhook_span(url_host: str, attempt: int) -> Iterator[Any]:
    """One webhook attempt, a CLIENT span inside the delivery job's span; yields the span
    (or None when tracing is off) so the caller can record the answer's status code."""
    if not _enabled:
        yield None
        return
    tracer = trace.get_tracer("delineate.webhooks")
    attributes = {"http.request.method": "POST", "server.address": url_host, "delineate.attempt": attempt}
    with tracer.start_as_current_span("POST webhook", kind=SpanKind.CLIENT, attributes=attributes) as span:
        yield span


def add_trace_ids(_logger: object, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: the active span's trace_id and span_id on every log line."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event.setdefault("trace_id", format(context.trace_id, "032x"))
        event.setdefault("span_id", format(context.span_id, "016x"))
    return event


def force_flush(timeout_ms: int = 5_000) -> None:
    """Export buffered spans now (worker shutdown; the SDK also does it at exit)."""
    provider = trace.get_tracer_provider()
    flush = getattr(provider, "force_flush", None)
    if flush is not None:
        flush(timeout_ms)
