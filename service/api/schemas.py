"""Request bodies, validated with pydantic; ranges and shapes are the original service's."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictStr, ValidationError
from starlette.requests import Request

from service.api.errors import ApiError
from service.settings import FILE_ID_MAX, FILE_ID_MIN, FILE_IDS_MAX, Settings


def _json_number(value: object) -> object:
    """A JSON number only: `10000.0` is the integer 10000 (the original service took it, and
    JSON Schema's `integer` means any number without a fraction), but `"10000"` and `true`
    stay errors (pydantic's lax mode would coerce them)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number")
    return value


FileId = Annotated[int, Field(ge=FILE_ID_MIN, le=FILE_ID_MAX), BeforeValidator(_json_number)]
Model = TypeVar("Model", bound=BaseModel)


class FileRequest(BaseModel):
    """Body of /v1/download/check and /v1/download/start."""

    model_config = ConfigDict(extra="ignore")
    file_id: FileId = Field(description="File ID to check (10K to 100M)")


class InitiateRequest(BaseModel):
    """Body of /v1/download/initiate."""

    model_config = ConfigDict(extra="ignore")
    file_ids: list[FileId] = Field(min_length=1, max_length=FILE_IDS_MAX, description="1 to 1,000 file IDs")
    callbackUrl: StrictStr | None = Field(
        None,
        min_length=1,
        max_length=2_048,
        description="Signed webhook on the terminal state",
        json_schema_extra={"format": "uri"},
    )


async def read_body(request: Request, model: type[Model], settings: Settings) -> Model:
    """Read and validate a JSON body: 415, 413, 408 or 400 with a message that says what is
    wrong. The body must arrive within HTTP_READ_TIMEOUT_S (a client trickling it would hold
    the connection forever)."""
    max_bytes = settings.max_body_bytes
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise ApiError(415, f"Content-Type must be application/json, not {content_type!r}")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"Request body is larger than {max_bytes} bytes")
    body = bytearray()
    try:
        async with asyncio.timeout(settings.http_read_timeout_s):
            async for chunk in request.stream():
                body += chunk
                if len(body) > max_bytes:
                    raise ApiError(413, f"Request body is larger than {max_bytes} bytes")
    except TimeoutError:
        message = f"The body did not arrive within HTTP_READ_TIMEOUT_S ({settings.http_read_timeout_s} s)"
        raise ApiError(408, message, {"Connection": "close"}) from None
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "Request body is not valid JSON") from None
    except RecursionError:  # json's C parser stops cleanly at the interpreter's depth limit
        raise ApiError(400, "Request body nests JSON too deeply") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors()
        )
        raise ApiError(400, problems) from None
