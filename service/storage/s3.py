"""The S3 operations the service needs: HEAD a source file, presign a result, stream a zip.

Retries with exponential backoff and jitter are botocore's own ("standard" mode), bounded by
S3_MAX_ATTEMPTS; nothing here re-implements them.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from service.settings import Settings

PART_SIZE = 8 * 1024 * 1024  # S3 needs >= 5 MiB for every part but the last
READ_CHUNK = 1024 * 1024


def source_key(file_id: int) -> str:
    """Where a downloadable file lives; the id is an int, so the key cannot be steered."""
    return f"downloads/{int(file_id)}.zip"


def bundle_key(job_id: str) -> str:
    """Deterministic, so a retried job overwrites its bundle instead of leaving a second one."""
    return f"results/{job_id}.zip"


def make_client(settings: Settings, *, public: bool = False, pool_size: int = 10) -> Any:
    """A boto3 S3 client; `public=True` signs URLs for the endpoint clients can reach."""
    endpoint = settings.s3_public_endpoint if public and settings.s3_public_endpoint else settings.s3_endpoint
    config = Config(
        s3={"addressing_style": "path" if settings.s3_force_path_style else "auto"},
        retries={"mode": "standard", "total_max_attempts": settings.s3_max_attempts},
        connect_timeout=3,
        read_timeout=10,
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
    def from_settings(cls, settings: Settings, *, pool_size: int = 10) -> Storage:
        client = make_client(settings, pool_size=pool_size)
        signer = make_client(settings, public=True) if settings.s3_public_endpoint else client
        return cls(client, signer, settings.s3_bucket_name, settings.s3_presign_expires_s)

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
