"""The shared rate limiter: one Redis counter per client per window.

Hits that arrive in the same event-loop turn share one pipeline (auto-pipelining): each key is
INCRBY'd by its number of hits, and the i-th of n hits gets the count its own INCR would have
returned (total - n + i). Counting stays exact and shared by every API process; under load one
round trip serves dozens of requests instead of one each.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.jobs.state import PREFIX
from service.telemetry.logging import get_logger

log = get_logger(__name__)
Pending = dict[str, list["asyncio.Future[int | None]"]]


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
    def __init__(self, redis: aioredis.Redis, limit: int, window_ms: int) -> None:
        self.redis = redis
        self.limit = limit
        self.window_ms = window_ms
        self._pending: Pending | None = None  # hits waiting for this turn's pipeline
        self._flushes: set[asyncio.Task[None]] = set()  # keep running flushes referenced

    async def hit(self, client: str) -> Decision | None:
        """Count one request; None when Redis cannot answer."""
        now_ms = time.time() * 1000
        window = int(now_ms // self.window_ms)
        key = f"{PREFIX}rl:{client}:{window}"
        loop = asyncio.get_running_loop()
        if self._pending is None:
            self._pending = {}
            loop.call_soon(self._flush)  # after every request already runnable in this turn
        future: asyncio.Future[int | None] = loop.create_future()
        self._pending.setdefault(key, []).append(future)
        count = await future
        if count is None:
            return None
        reset_s = max(1, math.ceil(((window + 1) * self.window_ms - now_ms) / 1000))
        return Decision(count <= self.limit, self.limit, max(0, self.limit - count), reset_s)

    def _flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending:
            task = asyncio.get_running_loop().create_task(self._count(pending))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _count(self, pending: Pending) -> None:
        """One pipeline for every key in `pending`; answer each waiting hit with its own count."""
        totals: list[int] | None = None
        failure: Exception | None = None
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key, futures in pending.items():
                    pipe.incrby(key, len(futures))
                    pipe.pexpire(key, self.window_ms * 2)
                totals = (await pipe.execute())[::2]
        except RedisError as exc:
            log.warning("rate_limit_unavailable", error=type(exc).__name__)
        except Exception as exc:  # a bug, not an outage: each request fails with it, as before
            failure = exc
        finally:  # also when cancelled: no request may wait forever
            for index, futures in enumerate(pending.values()):
                first = None if totals is None else totals[index] - len(futures) + 1
                for offset, future in enumerate(futures):
                    if future.done():
                        continue
                    if failure is not None:
                        future.set_exception(failure)
                    else:
                        future.set_result(None if first is None else first + offset)
