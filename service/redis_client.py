"""Redis clients with redis-py's own retry (exponential backoff with jitter) on connection errors."""

from __future__ import annotations

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError, TimeoutError
from redis.retry import Retry

RETRY_ON = [ConnectionError, TimeoutError]


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
    return redis.Redis.from_url(url, retry=retry, max_connections=max_connections, **_options())


def async_client(url: str, *, max_connections: int | None = None) -> aioredis.Redis:
    """For the API's event loop: status reads, the rate limiter, SSE fan-out."""
    retry = AsyncRetry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=2)
    return aioredis.Redis.from_url(url, retry=retry, max_connections=max_connections, **_options())
