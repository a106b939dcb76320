"""Redis clients with redis-py's own retry (exponential backoff with jitter) on connection errors.

Every Redis user of a process (RQ and the worker, the reaper, the API's routes, rate limiter,
event hub and metrics collector) gets its client from `Runtime`, which builds them here: on
REDIS_URL's one server, or with REDIS_SENTINELS on the primary the sentinels name. A
Sentinel-managed client asks the sentinels where the primary is whenever it opens a
connection, and drops a connection that finds a demoted primary, so after a failover the next
command reaches the new primary without a restart; while no primary exists a command fails
within its retries (MasterNotFoundError, a ConnectionError: the API's 503).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from typing import Any

import redis
import redis.asyncio as aioredis
import redis.asyncio.sentinel
import redis.sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff
from redis.connection import HiredisRespSerializer
from redis.exceptions import ConnectionError, NoScriptError, TimeoutError
from redis.retry import Retry

from service.settings import Settings

# Redis not answering (down, restarting, a failover): what clients retry, and what the worker
# and the CLI ride out or report as an outage rather than a fault of theirs.
UNAVAILABLE = (ConnectionError, TimeoutError)
RETRY_ON = list(UNAVAILABLE)
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
        "max_connections": DEFAULT_MAX_CONNECTIONS,
    }


def sync_client(url: str) -> redis.Redis:
    """For RQ and the worker (RQ is synchronous); threads share its connection pool."""
    return redis.Redis.from_url(url, retry=_sync_retry(), **_options())


def async_client(url: str) -> aioredis.Redis:
    """For the API's event loop: status reads, the rate limiter, SSE fan-out.

    Replies come as str, decoded by hiredis in C: the status route reads a whole job hash per
    request, and decoding it field by field in Python was a measurable part of that request
    (docs/benchmarks.md).
    """
    client = aioredis.Redis.from_url(url, retry=_async_retry(), decode_responses=True, **_options())
    return _packed_in_c(client)


_PACKER = HiredisRespSerializer()


@functools.cache
def _packing_in_c(base: type[aioredis.connection.AbstractConnection]) -> type:
    """`base` packing commands with hiredis, in C, as redis-py's synchronous connection does.

    redis-py's asyncio connection packs in Python, joining its growing buffer once per argument:
    initiate's one script call (about 125 arguments, the job's every write) took 75 µs to pack
    against 19 µs through redis-py's hiredis serializer, the same bytes (docs/benchmarks.md).
    Every command of the API's client goes through here, the TurnPipeline's too.
    """

    def pack_command(self: object, *args: Any) -> list[bytes]:
        return _PACKER.pack(*args)

    return type(base.__name__, (base,), {"pack_command": pack_command})


def _packed_in_c(client: aioredis.Redis) -> aioredis.Redis:
    """`client`, its connections packing in C (`_packing_in_c`); whichever class its URL or the
    Sentinel chose (TCP, TLS, a Unix socket, a Sentinel-managed one), before any connection."""
    pool = client.connection_pool
    pool.connection_class = _packing_in_c(pool.connection_class)
    return client


class _SentinelConnection(redis.sentinel.SentinelManagedConnection):
    """redis-py's Sentinel-managed connection, closed when a read is interrupted.

    Its `read_response` defaults `disconnect_on_error` to False where a plain Connection's is
    True: an exception raised into a blocking read (the worker's SIGTERM interrupts RQ's
    dequeue) left the connection in the pool with the unread reply, and the next command on
    it read that reply instead of its own (RQ's deregistration failed with "Wrong number of
    response items"). A plain connection drops itself then; so does this one.
    """

    def read_response(self, *args: Any, disconnect_on_error: bool | None = True, **kwargs: Any) -> Any:
        return super().read_response(*args, disconnect_on_error=disconnect_on_error, **kwargs)


def sync_primary(settings: Settings) -> redis.Redis:
    """`sync_client` on REDIS_URL, or on the primary REDIS_SENTINELS name."""
    if not settings.redis_sentinels:
        return sync_client(_url(settings))
    sentinel = redis.sentinel.Sentinel(settings.sentinel_addresses, **_sentinel_options(settings))
    return sentinel.master_for(  # type: ignore[no-any-return]
        settings.redis_sentinel_master,
        connection_class=_SentinelConnection,
        retry=_sync_retry(),
        **_primary_options(settings),
    )


def async_primary(settings: Settings) -> aioredis.Redis:
    """`async_client` on REDIS_URL, or on the primary REDIS_SENTINELS name."""
    if not settings.redis_sentinels:
        return async_client(_url(settings))
    sentinel = redis.asyncio.sentinel.Sentinel(settings.sentinel_addresses, **_sentinel_options(settings))
    client = sentinel.master_for(
        settings.redis_sentinel_master,
        retry=_async_retry(),
        decode_responses=True,
        **_primary_options(settings),
    )
    return _packed_in_c(client)


def _url(settings: Settings) -> str:
    if not settings.redis_url:
        raise RuntimeError(
            "REDIS_URL or REDIS_SENTINELS must be set (`delineate dev` starts an embedded Redis)"
        )
    return settings.redis_url


def _sync_retry() -> Retry:
    return Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=3)


def _async_retry() -> AsyncRetry:
    return AsyncRetry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=2)


def _sentinel_options(settings: Settings) -> dict[str, Any]:
    """How to talk to the sentinels themselves: short timeouts (a dead sentinel is skipped)."""
    password = settings.redis_sentinel_password
    return {
        "sentinel_kwargs": {
            "socket_timeout": 0.5,
            "socket_connect_timeout": 0.5,
            "password": password.get_secret_value() if password else None,
        }
    }


def _primary_options(settings: Settings) -> dict[str, Any]:
    password = settings.redis_password
    return {**_options(), "password": password.get_secret_value() if password else None}


@functools.cache
def _sha1(script: str) -> str:
    """A script's name for EVALSHA."""
    return hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()


class TurnPipeline:
    """Commands issued during one event-loop turn, sent to Redis as one pipeline.

    Under load dozens of requests read a job or count a rate-limit hit in the same turn; one
    pipeline answers all of them with one connection, one write and one read, where separate
    commands each cost the client more (acquire, pack, timeout, parse; docs/benchmarks.md). Commands
    run in the order they were queued, and each caller gets its own reply or its own error.

    Repeats within one turn are paid once: the INCRs of one key (one client's rate-limit hits)
    become one INCRBY, each caller still getting the count its own INCR would have returned, and
    a repeated expiry (`send` of the same PEXPIRE) is sent once. Under load from few clients
    (one proxy, one busy client) that halves the Redis work of a request.
    """

    MERGED_SENDS = frozenset({"PEXPIRE"})  # idempotent: the same one twice in a turn is once

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

    async def run_script(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """A Lua script with this turn's other commands: EVALSHA, and SCRIPT LOAD first where
        Redis does not have it (a restart, a failover), as redis-py's Script does. One command,
        so it joins the pipeline where a MULTI would take a pooled connection of its own."""
        sha = _sha1(script)
        try:
            return await self.submit("EVALSHA", sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.submit("SCRIPT", "LOAD", script)
            return await self.submit("EVALSHA", sha, len(keys), *keys, *args)

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
        commands = self._merged(pending)
        # Until Redis answers, every caller's answer is an error: also when this is cancelled
        # (shutdown), no caller may wait forever.
        replies: list[Any] = [ConnectionError("the Redis pipeline did not answer")] * len(commands)
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for args, futures in commands:
                    if len(futures) > 1 and args[0] == "INCR":
                        pipe.execute_command("INCRBY", args[1], len(futures))
                    else:
                        pipe.execute_command(*args)
                replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:
            replies = [exc] * len(commands)
        finally:
            for (args, futures), reply in zip(commands, replies, strict=True):
                # a merged INCRBY answers the last count: the callers had first + 0, 1, 2 ...
                first = reply - len(futures) + 1 if args[0] == "INCR" and isinstance(reply, int) else None
                for n, future in enumerate(futures):
                    if future is None or future.done():
                        continue
                    if isinstance(reply, Exception):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply if first is None else first + n)

    @classmethod
    def _merged(
        cls, pending: list[tuple[tuple[object, ...], asyncio.Future[Any] | None]]
    ) -> list[tuple[tuple[object, ...], list[asyncio.Future[Any] | None]]]:
        """The turn's commands, each with its callers: INCRs of one key and repeated idempotent
        sends share the first one's place (the commands in between touch other keys)."""
        commands: list[tuple[tuple[object, ...], list[asyncio.Future[Any] | None]]] = []
        at: dict[tuple[object, ...], int] = {}
        for args, future in pending:
            if (args[0] == "INCR" and len(args) == 2) or (future is None and args[0] in cls.MERGED_SENDS):
                if (index := at.get(args)) is not None:
                    commands[index][1].append(future)
                    continue
                at[args] = len(commands)
            commands.append((args, [future]))
        return commands
