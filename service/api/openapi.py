"""The OpenAPI 3.1 document, served at /openapi and rendered by /docs.

Request schemas come from the pydantic models the routes validate with; a test checks that
every route the app serves is described here, so the document cannot drift from the code.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from service.api.events import EVENT_ID_PATTERN
from service.api.schemas import FileRequest, InitiateRequest

ERROR = {"$ref": "#/components/schemas/Error"}
JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
JOB_STATUSES = {"enum": ["queued", "processing", "retrying", "completed", "failed", "cancelled"]}
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    "description": (
        "Printable ASCII. A repeat with the same key (and body) within IDEMPOTENCY_TTL_S returns "
        "the first request's job with `Idempotent-Replayed: true`, unless that job failed or was "
        "cancelled: then a new job starts, and the key names the new one from then on. The same "
        "key with another body is a 422."
    ),
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(code): _json(ERROR, "Error with the request id") for code in codes}


def _body(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
    }


LAST_EVENT_ID = {
    "name": "Last-Event-ID",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "pattern": f"^({EVENT_ID_PATTERN})?$"},
    "description": (
        "The id of the last event received (EventSource sends it on reconnect): the stream "
        "resumes after it. Empty is the same as none; an id this stream never sent starts afresh "
        "with a snapshot."
    ),
}
# What a job's operations take from initiate's and status's answers: the links schemathesis
# follows (initiate -> status -> stream -> file -> cancel) in make test's stateful fuzzing.
JOB_LINKS = {
    name: {"operationId": name, "parameters": {"job_id": "$response.body#/jobId"}}
    for name in ("status", "stream", "file", "cancel", "cancelByPost")
}


def _obj(**props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": props}


STR, INT, BOOL = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}
NULL_STR, NULL_INT = {"type": ["string", "null"]}, {"type": ["integer", "null"]}
HEALTH = _obj(
    status={"enum": ["healthy", "unhealthy"]},
    checks=_obj(storage={"enum": ["ok", "error"]}, redis={"enum": ["ok", "error"]}),
)
READY = _obj(
    status={"enum": ["healthy", "degraded", "unhealthy"]},
    checks=_obj(storage={"enum": ["ok", "degraded", "error"]}, redis={"enum": ["ok", "error"]}),
)
STATUS = _obj(
    jobId=STR,
    status=JOB_STATUSES,
    attempt=INT,
    progress=_obj(done=INT, total=INT, percent={"type": "number"}),
    files={"type": "array", "items": _obj(file_id=INT, available=BOOL, size=NULL_INT)},
    createdAt=STR,
    startedAt=NULL_STR,
    finishedAt=NULL_STR,
    error=NULL_STR,
    size=NULL_INT,
    downloadUrl=NULL_STR,
    traceId=NULL_STR,
    webhook=_obj(  # only for jobs started with a callbackUrl (docs/webhooks.md)
        state={"enum": ["waiting", "pending", "retrying", "delivered", "failed"]},
        eventId=STR,
        attempts=INT,
        lastStatus=NULL_INT,
        lastError=NULL_STR,
        lastAttemptAt=STR,
        deliveredAt=STR,
    ),
)

PATHS: dict[str, dict[str, Any]] = {
    "/": {
        "get": {
            "operationId": "root",
            "summary": "Welcome message",
            "responses": {"200": _json(_obj(message=STR), "Welcome")},
        }
    },
    "/health": {
        "get": {
            "operationId": "health",
            "summary": "Health of the service and its dependencies (storage, redis)",
            "responses": {"200": _json(HEALTH, "Healthy"), "503": _json(HEALTH, "Unhealthy")},
        }
    },
    "/health/live": {
        "get": {
            "operationId": "live",
            "summary": "Liveness: the process answers",
            "responses": {"200": _json(_obj(status=STR), "Alive")},
        }
    },
    "/health/ready": {
        "get": {
            "operationId": "ready",
            "summary": "Readiness: Redis answers (503 if not); S3 failing its check is `degraded`",
            "responses": {"200": _json(READY, "Ready"), "503": _json(READY, "Not ready")},
        }
    },
    "/v1/download/check": {
        "post": {
            "operationId": "check",
            "summary": "Check whether a file exists in storage (S3 HEAD)",
            "requestBody": _body(FileRequest),
            "responses": {
                "200": _json(
                    _obj(file_id=INT, available=BOOL, s3Key=NULL_STR, size=NULL_INT), "Availability"
                ),
                **_errors(400, 408, 413, 415, 429, 503),
            },
        }
    },
    "/v1/download/start": {
        "post": {
            "operationId": "start",
            "summary": "Deprecated synchronous download: holds the request for the whole processing time",
            "deprecated": True,
            "requestBody": _body(FileRequest),
            "responses": {
                "200": _json(
                    _obj(
                        file_id=INT,
                        status={"enum": ["completed", "failed"]},
                        downloadUrl=NULL_STR,
                        size=NULL_INT,
                        processingTimeMs=INT,
                        message=STR,
                    ),
                    "Finished within REQUEST_TIMEOUT_MS",
                ),
                **_errors(400, 408, 413, 415, 429, 503, 504),
            },
        }
    },
    "/v1/download/initiate": {
        "post": {
            "operationId": "initiate",
            "summary": "Start a download job; answers at once with its id (202)",
            "parameters": [IDEMPOTENCY_KEY],
            "requestBody": _body(InitiateRequest),
            "responses": {
                "202": _json(
                    _obj(
                        jobId=STR,
                        status=JOB_STATUSES,  # a replay answers the earlier job's status
                        totalFileIds=INT,
                        statusUrl=STR,
                        streamUrl=STR,
                        fileUrl=STR,
                    ),
                    "Accepted; Location and Retry-After say where and when to poll",
                )
                | {"links": JOB_LINKS},
                **_errors(400, 408, 413, 415, 422, 429, 503),
            },
        }
    },
    "/v1/download/status/{job_id}": {
        "get": {
            "operationId": "status",
            "summary": "A job's status and progress (Retry-After while it runs)",
            "parameters": [JOB_ID],
            "responses": {
                "200": _json(STATUS, "Job status") | {"links": JOB_LINKS},
                **_errors(404, 410, 429, 503),
            },
        }
    },
    "/v1/download/{job_id}/file": {
        "get": {
            "operationId": "file",
            "summary": "Redirect (302) to a freshly presigned S3 URL of the job's result",
            "parameters": [JOB_ID],
            "responses": {
                "302": {"description": "Location is a presigned GET URL"},
                **_errors(404, 409, 410, 429, 503),
            },
        }
    },
    "/v1/download/stream/{job_id}": {
        "get": {
            "operationId": "stream",
            "summary": "Server-Sent Events: snapshot, status, progress, then completed|failed|cancelled",
            "description": (
                "Send Last-Event-ID to resume; heartbeat comments every SSE_HEARTBEAT_S. Open streams "
                "are capped per client (429) and per process (503), both with Retry-After: poll the "
                "status instead. An HTTP/1.0 client gets the events there are now, with a "
                "Content-Length, and reconnects."
            ),
            "parameters": [JOB_ID, LAST_EVENT_ID],
            "responses": {
                "200": {"description": "text/event-stream", "content": {"text/event-stream": {}}},
                "204": {"description": "Resumed after the terminal event: nothing left"},
                **_errors(400, 404, 410, 429, 503),
            },
        }
    },
    "/v1/download/{job_id}": {
        "delete": {
            "operationId": "cancel",
            "summary": "Cancel a queued or running job (status becomes cancelled)",
            "parameters": [JOB_ID],
            "responses": {
                "200": _json(STATUS, "Cancelled; the job's status"),
                **_errors(404, 405, 409, 410, 429, 503),
            },
        }
    },
    "/v1/download/{job_id}/cancel": {
        "post": {
            "operationId": "cancelByPost",
            "summary": "Same as DELETE /v1/download/{job_id}, for clients that cannot send DELETE",
            "parameters": [JOB_ID],
            "responses": {
                "200": _json(STATUS, "Cancelled; the job's status"),
                **_errors(404, 409, 410, 429, 503),
            },
        }
    },
    "/metrics": {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics (all API processes merged)",
            "responses": {"200": {"description": "Prometheus text format", "content": {"text/plain": {}}}},
        }
    },
    "/openapi": {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "responses": {"200": {"description": "OpenAPI 3.1"}},
        }
    },
    "/docs": {
        "get": {
            "operationId": "docs",
            "summary": "Human-readable API reference",
            "responses": {"200": {"description": "HTML"}},
        }
    },
    "/ui": {
        "get": {
            "operationId": "ui",
            "summary": "The downloads page: start jobs and follow them live (HTML, strict CSP)",
            "responses": {"200": {"description": "HTML"}},
        }
    },
    "/ui/config.json": {
        "get": {
            "operationId": "uiConfig",
            "summary": "Settings the downloads page reads (Jaeger UI URL, poll interval)",
            "responses": {"200": _json(_obj(jaegerUrl=NULL_STR, pollIntervalS=INT), "Page configuration")},
        }
    },
}


def document() -> dict[str, Any]:
    schemas: dict[str, Any] = {
        "Error": _obj(error=STR, message=STR, requestId=STR),
        FileRequest.__name__: FileRequest.model_json_schema(),
        InitiateRequest.__name__: InitiateRequest.model_json_schema(),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Delineate download service",
            "version": "1.0.0",
            "description": "Long downloads as jobs: initiate, follow (poll, SSE, webhook), fetch from S3.",
        },
        "paths": PATHS,
        "components": {"schemas": schemas},
    }
