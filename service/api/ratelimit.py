"""The shared rate limiter: one Redis counter per client per window (one round trip)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.jobs.state import PREFIX
from service.telemetry.logging import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_s: int

    def headers(self) -> dict[str, str]:
        """IETF draft RateLimit-* fields, as the original service sent them."""
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s),
        }


class RateLimiter:
    def __init__(self, redis: aioredis.Redis, limit: int, window_ms: int) -> None:
        self.redis = redis
        self.limit = limit
        self.window_ms = window_ms

    async def hit(self, client: str) -> Decision | None:
        """Count one request; None when Redis cannot answer."""
        now_ms = time.time() * 1000
        window = int(now_ms // self.window_ms)
        key = f"{PREFIX}rl:{client}:{window}"
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.incr(key)
                pipe.pexpire(key, self.window_ms * 2)
                count, _ = await pipe.execute()
        except RedisError as exc:
            log.warning("rate_limit_unavailable", error=type(exc).__name__)
            return None
        reset_s = max(1, math.ceil(((window + 1) * self.window_ms - now_ms) / 1000))
        return Decision(count <= self.limit, self.limit, max(0, self.limit - count), reset_s)
