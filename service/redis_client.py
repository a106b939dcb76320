"""Redis clients with redis-py's own retry (exponential backoff with jitter) on connection errors."""

from __future__ import annotations

import asyncio
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError, TimeoutError
from redis.retry import Retry

RETRY_ON = [ConnectionError, TimeoutError]
# redis-py 8 caps a pool at 100 connections unless told (before: 2**31) and raises
# MaxConnectionsError past it, without waiting. A worker's WORKER_CONCURRENCY threads and the
# API's concurrent requests each hold one while they talk to Redis, so 100 is too few (seen:
# jobs failing at their final write, the API answering 503). Redis's own maxclients bounds it.
DEFAULT_MAX_CONNECTIONS = 10_000


def _options() -> dict[str, object]:
    return {
        "socket_timeout": 5,
        "socket_connect_timeout": 2,
        "health_check_interval": 15,
        "retry_on_error": RETRY_ON,
    }


def sync_client(url: str, *, max_connections: int | None = None) -> redis.Redis:
    """For RQ and the worker (RQ is synchronous); threads share its connection pool."""
    retry = Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=3)
    pool_size = max_connections or DEFAULT_MAX_CONNECTIONS
    return redis.Redis.from_url(url, retry=retry, max_connections=pool_size, **_options())


def async_client(url: str, *, max_connections: int | None = None) -> aioredis.Redis:
    """For the API's event loop: status reads, the rate limiter, SSE fan-out.

    Replies come as str, decoded by hiredis in C: the status route reads a whole job hash per
    request, and decoding it field by field in Python was a measurable part of that request
    (docs/benchmarks.md).
    """
    retry = AsyncRetry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=2)
    pool_size = max_connections or DEFAULT_MAX_CONNECTIONS
    return aioredis.Redis.from_url(
        url, retry=retry, max_connections=pool_size, decode_responses=True, **_options()
    )


class TurnPipeline:
    """Commands issued during one event-loop turn, sent to Redis as one pipeline.

    Under load dozens of requests read a job or count a rate-limit hit in the same turn; one
    pipeline answers all of them with one connection, one write and one read, where separate
    commands each cost the client more (acquire, pack, timeout, parse; docs/benchmarks.md). Commands
    run in the order they were queued, and each caller gets its own reply or its own error.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._pending: list[tuple[tuple[object, ...], asyncio.Future[Any] | None]] | None = None
        self._runs: set[asyncio.Task[None]] = set()  # keep running pipelines referenced

    def submit(self, *args: object) -> asyncio.Future[Any]:
        """Queue one command to run with this turn's others; the future gets its reply or its
        error (`await batched.submit(...)` for a read)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue(args, future)
        return future

    def send(self, *args: object) -> None:
        """Queue one command whose reply nobody waits for (an EXPIRE after an INCR)."""
        self._queue(args, None)

    def _queue(self, args: tuple[object, ...], future: asyncio.Future[Any] | None) -> None:
        if self._pending is None:
            self._pending = []
            asyncio.get_running_loop().call_soon(self._flush)  # after all that is runnable now
        self._pending.append((args, future))

    def _flush(self) -> None:
        pending, self._pending = self._pending or [], None
        task = asyncio.get_running_loop().create_task(self._run(pending))
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)

    async def _run(self, pending: list[tuple[tuple[object, ...], asyncio.Future[Any] | None]]) -> None:
        # Until Redis answers, every caller's answer is an error: also when this is cancelled
        # (shutdown), no caller may wait forever.
        replies: list[Any] = [ConnectionError("the Redis pipeline did not answer")] * len(pending)
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for args, _ in pending:
                    pipe.execute_command(*args)
                replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:
            replies = [exc] * len(pending)
        finally:
            for (_, future), reply in zip(pending, replies, strict=True):
                if future is None or future.done():
                    continue
                if isinstance(reply, Exception):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
