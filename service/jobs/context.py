"""What a job needs at run time (settings, Redis, S3), built once per worker process.

RQ imports job functions by name, so the worker installs the context explicitly before it
starts working; jobs call `current()`.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from service.redis_client import sync_client
from service.settings import Settings
from service.storage.s3 import Storage


@dataclass(frozen=True)
class JobContext:
    settings: Settings
    redis: redis.Redis
    storage: Storage

    @classmethod
    def from_settings(cls, settings: Settings) -> JobContext:
        assert settings.redis_url, "REDIS_URL must be set for workers"
        pool = settings.worker_concurrency + 8
        return cls(
            settings=settings,
            redis=sync_client(settings.redis_url),
            storage=Storage.from_settings(settings, pool_size=pool),
        )


_current: JobContext | None = None


def install(context: JobContext) -> None:
    global _current
    _current = context


def current() -> JobContext:
    if _current is None:
        raise RuntimeError("no job context installed: start jobs through `delineate worker`")
    return _current
