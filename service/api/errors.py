"""Every error leaves as JSON `{error, message, requestId}`, the original service's shape."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from service.api.responses import JSONResponse
from service.telemetry.logging import get_logger

log = get_logger(__name__)
UNAVAILABLE_RETRY_AFTER_S = 5


class ApiError(Exception):
    """Raised by routes for a client-visible error."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def request_id_of(scope: Any) -> str | None:
    return scope.get("state", {}).get("request_id")


def error_body(status: int, message: str, request_id: str | None) -> dict[str, Any]:
    return {"error": HTTPStatus(status).phrase, "message": message, "requestId": request_id}


def error_response(
    request: Request, status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(status, message, request_id_of(request.scope)), status, headers=headers)


async def on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(request, exc.status, exc.message, exc.headers)


async def on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    messages = {404: f"No route for {request.url.path}", 405: f"{request.method} is not allowed here"}
    message = messages.get(exc.status_code, str(exc.detail))
    return error_response(request, exc.status_code, message, dict(exc.headers or {}))


async def on_dependency_down(request: Request, exc: Exception) -> Response:
    """Redis or S3 unreachable: a 503 the client may retry, never a 500."""
    which = "redis" if isinstance(exc, RedisError) else "storage"
    log.warning("dependency_unavailable", dependency=which, error=type(exc).__name__)
    return error_response(
        request,
        503,
        f"A dependency ({which}) is unavailable; retry shortly.",
        {"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)},
    )


HANDLERS = {
    ApiError: on_api_error,
    HTTPException: on_http_exception,
    RedisError: on_dependency_down,
    BotoCoreError: on_dependency_down,
    ClientError: on_dependency_down,
}
