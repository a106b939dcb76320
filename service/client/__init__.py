"""A Python client for Delineate: start a download job, follow it, fetch its file.

    from service.client import Client

    with Client("https://delineate.example") as delineate:
        job = delineate.initiate([70000, 70007])
        delineate.wait(job, timeout=600)  # SSE, resumed after proxy cuts, else polling
        delineate.download(job, "bundle.zip")

`AsyncClient` is the same over asyncio. `verify_webhook` checks a webhook delivery with the
service's own signing code. Only httpx and the standard library are needed (docs/client.md).
"""

from service.client.aio import AsyncClient
from service.client.core import (
    ApiError,
    BadRequest,
    Conflict,
    DelineateError,
    Event,
    Job,
    JobCancelled,
    JobEnded,
    JobFailed,
    NotFound,
    RateLimited,
    Status,
    Unavailable,
    WaitTimeout,
)
from service.client.sync import Client
from service.webhooks.signature import InvalidSignature
from service.webhooks.signature import verify as verify_webhook

__all__ = [
    "ApiError",
    "AsyncClient",
    "BadRequest",
    "Client",
    "Conflict",
    "DelineateError",
    "Event",
    "InvalidSignature",
    "Job",
    "JobCancelled",
    "JobEnded",
    "JobFailed",
    "NotFound",
    "RateLimited",
    "Status",
    "Unavailable",
    "WaitTimeout",
    "verify_webhook",
]
