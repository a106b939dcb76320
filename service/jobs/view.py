"""The public view of a job: the JSON the status route, SSE snapshots and webhooks all send."""

from __future__ import annotations

from typing import Any

from service.jobs import state
from service.telemetry.tracing import trace_id_of


def status_body(job: state.JobRecord) -> dict[str, Any]:
    """The job as clients see it (`/openapi`); the download URL is ours, never a presigned one."""
    percent = round(100 * job.done / job.total, 1) if job.total else 100.0
    body: dict[str, Any] = {
        "jobId": job.id,
        "status": job.status,
        "attempt": job.attempt,
        "progress": {"done": job.done, "total": job.total, "percent": percent},
        "files": job.files,
        "createdAt": job.created_at,
        "startedAt": job.started_at,
        "finishedAt": job.finished_at,
        "error": job.error,
        "size": job.result_size,
        "downloadUrl": f"/v1/download/{job.id}/file" if job.status == state.COMPLETED else None,
        "traceId": trace_id_of(job.traceparent),  # the job's trace, to look up in Jaeger
    }
    if job.callback_url:
        body["webhook"] = job.webhook or {"state": "waiting", "attempts": 0}
    return body
