"""What a running process holds (settings, Redis clients, S3), built once, passed explicitly.

The API builds one in `create_app` and finds it on `app.state`; a worker builds one in
`delineate worker` and installs it, because RQ calls job functions by reference with only the
job's arguments (`current()` is how a job reaches its process's clients). The wiring that
crosses packages happens here and nowhere else: S3 calls are timed by the botocore hooks, and a
job's terminal state announces itself through webhooks when WEBHOOK_SECRET is set
(`announce`, called by jobs/lifecycle.py, which never imports webhooks/).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis

from service.redis_client import TurnPipeline, async_primary, sync_primary
from service.settings import Settings
from service.storage.s3 import Storage
from service.telemetry import s3 as s3_telemetry


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    redis: redis.Redis  # synchronous: RQ, the worker's threads, the reaper, cancellation
    aredis: aioredis.Redis  # the API's event loop (created unconnected; workers never use it)
    batched: TurnPipeline  # `aredis`, one pipeline per event-loop turn (the API's hot reads)
    storage: Storage
    # Stages the webhook delivery of a job's terminal state on a MULTI pipeline (None: off).
    announce: Callable[[Any, Runtime, str], None] | None = None

    @classmethod
    def open(cls, settings: Settings, *, s3_pool_size: int, s3_timeout_s: float | None = None) -> Runtime:
        from service.webhooks import delivery

        aredis = async_primary(settings)
        storage = Storage.from_settings(settings, pool_size=s3_pool_size, timeout_s=s3_timeout_s)
        s3_telemetry.instrument(storage.client)
        return cls(
            settings=settings,
            redis=sync_primary(settings),
            aredis=aredis,
            batched=TurnPipeline(aredis),
            storage=storage,
            announce=delivery.queue if settings.webhook_secret is not None else None,
        )

    async def aclose(self) -> None:
        await self.aredis.aclose()
        self.redis.close()


_current: Runtime | None = None


def install(runtime: Runtime) -> None:
    """Make `runtime` the one RQ job functions of this process use (`delineate worker`)."""
    global _current
    _current = runtime


def current() -> Runtime:
    if _current is None:
        raise RuntimeError("no runtime installed: start jobs through `delineate worker`")
    return _current
