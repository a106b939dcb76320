"""The clients a running API process holds, created in the lifespan and found on app.state."""

from __future__ import annotations

from dataclasses import dataclass

import redis
import redis.asyncio as aioredis
from starlette.requests import Request

from service.redis_client import TurnPipeline, async_client, sync_client
from service.settings import Settings
from service.storage.s3 import Storage


@dataclass(frozen=True)
class Resources:
    settings: Settings
    redis: aioredis.Redis  # the event loop's client
    batched: TurnPipeline  # the same client, one pipeline per event-loop turn (hot reads)
    sync_redis: redis.Redis  # RQ's (synchronous): cancellation in the thread pool, enqueue's recording
    storage: Storage

    @classmethod
    def open(cls, settings: Settings) -> Resources:
        assert settings.redis_url, "REDIS_URL must be set for the API"
        client = async_client(settings.redis_url)
        return cls(
            settings=settings,
            redis=client,
            batched=TurnPipeline(client),
            sync_redis=sync_client(settings.redis_url),
            storage=Storage.from_settings(settings, pool_size=50),
        )

    async def close(self) -> None:
        await self.redis.aclose()
        self.sync_redis.close()


def resources(request: Request) -> Resources:
    return request.app.state.resources
