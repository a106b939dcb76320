"""The shared rate limiter: one Redis counter per client per window.

Each hit is an INCR (and a PEXPIRE so the counter dies with its window) on the API's
TurnPipeline: the hits of one event-loop turn share one round trip with the job reads of that
turn, and each request still gets the exact count its own INCR returned. Counting is shared by
every API process.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from redis.exceptions import RedisError

from service import keys
from service.redis_client import TurnPipeline
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

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """The same fields as ASGI header pairs (lower-case names), for a middleware's `send`."""
        return [
            (b"ratelimit-limit", b"%d" % self.limit),
            (b"ratelimit-remaining", b"%d" % self.remaining),
            (b"ratelimit-reset", b"%d" % self.reset_s),
        ]


class RateLimiter:
    def __init__(self, batched: TurnPipeline, limit: int, window_ms: int) -> None:
        self.batched = batched
        self.limit = limit
        self.window_ms = window_ms

    async def hit(self, client: str) -> Decision | None:
        """Count one request; None when Redis cannot answer."""
        now_ms = time.time() * 1000
        window = int(now_ms // self.window_ms)
        key = keys.rate_limit(client, window)
        counted = self.batched.submit("INCR", key)
        self.batched.send("PEXPIRE", key, self.window_ms * 2)
        try:
            count = await counted
        except RedisError as exc:
            log.warning("rate_limit_unavailable", error=type(exc).__name__)
            return None
        reset_s = max(1, math.ceil(((window + 1) * self.window_ms - now_ms) / 1000))
        return Decision(count <= self.limit, self.limit, max(0, self.limit - count), reset_s)
