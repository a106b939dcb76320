"""The S3 operations the service needs: HEAD a source file, presign a result, stream a zip.

Retries with exponential backoff and jitter are botocore's own ("standard" mode), bounded by
S3_MAX_ATTEMPTS; nothing here re-implements them. Which errors are worth retrying is also
botocore's verdict (`Storage.is_transient`): a download rides those out (jobs/outage.py).

The API never calls S3 on its event loop's shared thread pool: `RequestLane` gives its S3 calls
their own few threads and a deadline (S3_REQUEST_TIMEOUT_S), so a hung S3 costs a request at
most that long and never holds the threads every other route uses.
"""

from __future__ import annotations

import asyncio
import threading
import zipfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, IncompleteReadError
from botocore.retries.standard import RetryContext, StandardRetryConditions

if TYPE_CHECKING:
    from service.settings import Settings

PART_SIZE = 8 * 1024 * 1024  # S3 needs >= 5 MiB for every part but the last
READ_CHUNK = 1024 * 1024
WORKER_CONNECT_TIMEOUT_S, WORKER_READ_TIMEOUT_S = 3.0, 10.0  # a worker's calls (streams are long)
REQUEST_LANE_THREADS = 8  # an API process's S3 calls at once; more answer 503 at once
T = TypeVar("T")
# botocore's standard-mode retry conditions (transient, throttled, modeled retryable) without
# its attempt limit: "worth retrying" as botocore itself decides it
_RETRYABLE = StandardRetryConditions(max_attempts=2)


def source_key(file_id: int) -> str:
    """Where a downloadable file lives; the id is an int, so the key cannot be steered."""
    return f"downloads/{int(file_id)}.zip"


def bundle_key(job_id: str) -> str:
    """Deterministic, so a retried job overwrites its bundle instead of leaving a second one."""
    return f"results/{job_id}.zip"


def make_client(
    settings: Settings, *, public: bool = False, pool_size: int = 10, timeout_s: float | None = None
) -> Any:
    """A boto3 S3 client; `public=True` signs URLs for the endpoint clients can reach.

    `timeout_s` is the connect and the read deadline of each try (the API's request path);
    without it a worker's defaults apply.
    """
    endpoint = settings.s3_public_endpoint if public and settings.s3_public_endpoint else settings.s3_endpoint
    config = Config(
        s3={"addressing_style": "path" if settings.s3_force_path_style else "auto"},
        retries={"mode": "standard", "total_max_attempts": settings.s3_max_attempts},
        connect_timeout=timeout_s or WORKER_CONNECT_TIMEOUT_S,
        read_timeout=timeout_s or WORKER_READ_TIMEOUT_S,
        max_pool_connections=pool_size,
        signature_version="s3v4",
    )
    secret = settings.s3_secret_access_key.get_secret_value() if settings.s3_secret_access_key else None
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=secret,
        config=config,
    )


def _is_not_found(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}


@dataclass(frozen=True)
class Storage:
    """A bucket plus the clients that talk to it (internal for I/O, public for presigning)."""

    client: Any
    signer: Any
    bucket: str
    presign_expires_s: int

    @classmethod
    def from_settings(
        cls, settings: Settings, *, pool_size: int = 10, timeout_s: float | None = None
    ) -> Storage:
        client = make_client(settings, pool_size=pool_size, timeout_s=timeout_s)
        signer = make_client(settings, public=True) if settings.s3_public_endpoint else client
        return cls(client, signer, settings.s3_bucket_name, settings.s3_presign_expires_s)

    def is_transient(self, exc: BaseException) -> bool:
        """Is `exc` S3 being unreachable, overloaded or slow (botocore's retryable errors:
        connection refused or reset, timeouts, 5xx, throttling) rather than something about
        the request itself (a missing bucket, access denied), which no wait will fix?"""
        model = self.client.meta.service_model
        if isinstance(exc, ClientError):
            meta = exc.response.get("ResponseMetadata", {})
            context = RetryContext(
                1,
                operation_model=model.operation_model(exc.operation_name),
                parsed_response=exc.response,
                http_response=_Status(meta.get("HTTPStatusCode", 0)),
            )
        elif isinstance(exc, IncompleteReadError):
            return True  # a body cut short: read after botocore's retries, the same outage
        elif isinstance(exc, BotoCoreError):
            any_call = model.operation_model("HeadObject")  # the checkers read only the service
            context = RetryContext(1, operation_model=any_call, caught_exception=exc)
        else:
            return False
        return bool(_RETRYABLE.is_retryable(context))

    def size_of(self, key: str) -> int | None:
        """Object size from a HEAD, None when it does not exist; other errors propagate."""
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except ClientError as exc:
            if _is_not_found(exc):
                return None
            raise

    def check(self) -> None:
        """Raise unless the bucket answers: the storage health check."""
        self.client.head_bucket(Bucket=self.bucket)

    def presign(self, key: str, filename: str | None = None) -> str:
        """A fresh GET URL; a new signature on every call so a stale link is never a dead end."""
        params: dict[str, str] = {"Bucket": self.bucket, "Key": key}
        if filename:
            params["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
        return self.signer.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=self.presign_expires_s
        )

    def ensure_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)

    def put(self, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=body)

    def write_zip(self, key: str, members: Iterable[tuple[str, str]]) -> int:
        """Stream the objects `members` (archive name, source key) into one zip at `key`.

        The archive goes to S3 by multipart upload, one part at a time: memory stays at about
        one part whatever the total size. Returns the archive's size in bytes.
        """
        upload = _MultipartWriter(self.client, self.bucket, key)
        try:
            with zipfile.ZipFile(
                upload, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True
            ) as archive:
                for name, source in members:
                    body = self.client.get_object(Bucket=self.bucket, Key=source)["Body"]
                    with archive.open(name, mode="w", force_zip64=True) as entry:
                        for chunk in body.iter_chunks(READ_CHUNK):
                            entry.write(chunk)
            return upload.complete()
        except BaseException:
            upload.abort()
            raise


@dataclass(frozen=True)
class _Status:
    """The one attribute of an HTTP response botocore's retry checkers read."""

    status_code: int


class StorageUnavailable(BotoCoreError):
    """The API's S3 call did not answer in time, or every S3 thread is busy (an API 503)."""

    fmt = "S3 {why}"


class RequestLane:
    """The API's S3 calls: REQUEST_LANE_THREADS threads of their own and a deadline each.

    A call waits at most `deadline_s` (S3_REQUEST_TIMEOUT_S), then StorageUnavailable; the
    client's own connect and read timeouts are the same deadline, so a thread left behind by a
    call that gave up is freed within S3_MAX_ATTEMPTS such deadlines. With every thread busy a
    call fails at once rather than queueing behind a hung S3: nothing else in the API waits on S3.
    """

    def __init__(self, storage: Storage, deadline_s: float, threads: int = REQUEST_LANE_THREADS) -> None:
        self.storage = storage
        self.deadline_s = deadline_s
        self._free = threading.BoundedSemaphore(threads)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="s3-request")

    async def size_of(self, key: str) -> int | None:
        return await self._call(self.storage.size_of, key)

    async def check(self) -> None:
        await self._call(self.storage.check)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if not self._free.acquire(blocking=False):
            raise StorageUnavailable(why="is slow: every S3 thread of this process is busy")
        future = self._pool.submit(fn, *args)
        future.add_done_callback(lambda _: self._free.release())  # also when cancelled unstarted
        try:
            async with asyncio.timeout(self.deadline_s):
                return await asyncio.wrap_future(future)
        except TimeoutError:
            raise StorageUnavailable(why=f"did not answer within {self.deadline_s:g} s") from None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class _MultipartWriter:
    """A write-only, non-seekable file object that ships every PART_SIZE bytes as one part."""

    def __init__(self, client: Any, bucket: str, key: str) -> None:
        self._client, self._bucket, self._key = client, bucket, key
        self._upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        self._buffer = bytearray()
        self._parts: list[dict[str, Any]] = []
        self._written = 0
        self._done = False

    def write(self, data: bytes) -> int:
        self._buffer += data
        self._written += len(data)
        while len(self._buffer) >= PART_SIZE:
            self._send(bytes(self._buffer[:PART_SIZE]))
            del self._buffer[:PART_SIZE]
        return len(data)

    def tell(self) -> int:
        return self._written

    def flush(self) -> None:
        """Parts are sent as they fill; zipfile calls this, nothing to do."""

    def _send(self, chunk: bytes) -> None:
        number = len(self._parts) + 1
        answer = self._client.upload_part(
            Bucket=self._bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number, Body=chunk
        )
        self._parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    def complete(self) -> int:
        if self._buffer or not self._parts:
            self._send(bytes(self._buffer))
            self._buffer.clear()
        self._client.complete_multipart_upload(
            Bucket=self._bucket,
            Key=self._key,
            UploadId=self._upload_id,
            MultipartUpload={"Parts": self._parts},
        )
        self._done = True
        return self._written

    def abort(self) -> None:
        if not self._done:
            self._client.abort_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=self._upload_id)
            self._done = True
