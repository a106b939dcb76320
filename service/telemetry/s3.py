"""S3 calls timed and counted through botocore's event system; whoever builds an S3 client
attaches them (service/runtime.py), so storage/s3.py knows nothing of metrics."""

from __future__ import annotations

import time
from typing import Any

from service.telemetry.metrics import S3_ERRORS, S3_LATENCY

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


def instrument(client: Any) -> Any:
    """Time every call of this boto3 S3 client and count its errors; returns the client."""
    events = client.meta.events
    events.register("before-call.s3", _before_call, unique_id="delineate-metrics-before")
    events.register("after-call.s3", _after_call, unique_id="delineate-metrics-after")
    events.register("after-call-error.s3", _after_call_error, unique_id="delineate-metrics-error")
    return client
