"""Redis clients with redis-py's own retry (exponential backoff with jitter) on connection errors."""

from __future__ import annotations

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
    request, and decoding it field by field in Python cost ~10 us of it.
    """
    retry = AsyncRetry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=2)
    pool_size = max_connections or DEFAULT_MAX_CONNECTIONS
    return aioredis.Redis.from_url(
        url, retry=retry, max_connections=pool_size, decode_responses=True, **_options()
    )
