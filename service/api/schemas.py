"""Request bodies, validated with pydantic; ranges and shapes are the original service's."""

from __future__ import annotations

import json
from typing import Annotated, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError
from starlette.requests import Request

from service.api.errors import ApiError
from service.settings import FILE_ID_MAX, FILE_ID_MIN, FILE_IDS_MAX

FileId = Annotated[StrictInt, Field(ge=FILE_ID_MIN, le=FILE_ID_MAX)]
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
        None, min_length=1, max_length=2_048, description="Signed webhook on the terminal state"
    )


async def read_body(request: Request, model: type[Model], max_bytes: int) -> Model:
    """Read and validate a JSON body: 415, 413 or 400 with a message that says what is wrong."""
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise ApiError(415, f"Content-Type must be application/json, not {content_type!r}")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"Request body is larger than {max_bytes} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise ApiError(413, f"Request body is larger than {max_bytes} bytes")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "Request body is not valid JSON") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors()
        )
        raise ApiError(400, problems) from None
