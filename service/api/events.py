"""Job events for SSE: one Redis subscription per API process, fanned out to its streams.

Workers append every change to the job's Redis Stream and publish the job id on one channel.
The hub listens on that channel once per process; when a job with local subscribers changes it
reads the stream once from its cursor and hands the entries to every subscriber. A subscriber
registers before it reads its snapshot/backlog, and drops entries it has already sent (by
stream id), so an event landing between the two is neither lost nor sent twice.

When many streams end together, WindDown lets the events still waiting to go out pass before
the finished streams' own ending (see there).

Pub/sub delivers at most once: a message published while the subscription is being re-made,
or on a primary the hub is not subscribed to (after a Redis failover the sentinels can demote a
freshly promoted primary and promote another, while the hub's connection stays on the first),
is never seen. So every `sweep_s` the hub also reads the stream of each job with local
subscribers from its cursor, as it does after reconnecting: a missed change reaches its
streams within one sweep, at the cost of one XRANGE per watched job per sweep.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from sse_starlette import EventSourceResponse

from service import keys
from service.jobs import state
from service.telemetry.logging import get_logger

log = get_logger(__name__)
# (stream id, {"event": ..., "data": ...}): an XRANGE entry as the API's client returns it (str)
Entry = tuple[str, dict[str, str]]


# An event's id as the streams send it and a client may send back (Last-Event-ID): a Redis
# stream id, milliseconds and an optional sequence.
EVENT_ID_PATTERN = r"[0-9]{1,20}(-[0-9]{1,20})?"


def stream_id(value: str) -> tuple[int, int]:
    """Redis Stream ids compare as (milliseconds, sequence)."""
    millis, _, seq = value.partition("-")
    return int(millis), int(seq or 0)


class WindDown:
    """Finished streams wait here for their ending while other streams have events to send.

    When many jobs end together, each stream's last write is followed by its ending: its
    response completes through the middleware (access log line, metrics), uvicorn handles the
    close, and its objects are freed. An ending costs the API more CPU than an event's write
    (`loadtest/bench_sse.py --phases`, docs/benchmarks.md), and in first-come order the endings
    queued in front of the events other subscribers still waited for. Here finished streams are
    let go PER_TURN at a time per event-loop turn (so new events are read between them), and
    only while no subscription holds an event its stream has not taken yet; one that waited
    MAX_WAIT_S goes anyway, so a client too slow to take its events cannot hold the others'
    endings for long.
    """

    PER_TURN = 4
    MAX_WAIT_S = 1.0

    def __init__(self) -> None:
        self.undelivered = 0  # subscriptions holding entries their stream has not taken
        self._waiting: collections.deque[tuple[float, asyncio.Future[None]]] = collections.deque()
        self._handle: asyncio.Handle | None = None  # the next _release, soon or at MAX_WAIT_S

    def pending(self) -> None:
        self.undelivered += 1

    def delivered(self) -> None:
        self.undelivered -= 1
        if not self.undelivered and self._waiting:  # all taken: release now, not at the timer
            if self._handle is not None:
                self._handle.cancel()
                self._handle = None
            self._schedule()

    async def wait(self) -> None:
        """Return when this finished stream may end (at once when nothing is waiting)."""
        if not self.undelivered and not self._waiting:
            return
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting.append((loop.time(), future))
        self._schedule()
        await future

    def _schedule(self) -> None:
        if self._handle is None and self._waiting:
            self._handle = asyncio.get_running_loop().call_soon(self._release)

    def _release(self) -> None:
        self._handle = None
        if not self._waiting:
            return
        loop = asyncio.get_running_loop()
        if self.undelivered:
            left = self._waiting[0][0] + self.MAX_WAIT_S - loop.time()
            if left > 0:
                self._handle = loop.call_later(left, self._release)
                return
        for _ in range(min(self.PER_TURN, len(self._waiting))):
            _, future = self._waiting.popleft()
            if not future.done():  # cancelled meanwhile (the server shutting down)
                future.set_result(None)
        self._schedule()


class Subscription:
    """One stream's pending entries and at most one waiter.

    Lighter than an asyncio.Queue (which keeps three deques): thousands of streams hold one each.
    A cancelled `get` loses nothing.
    """

    __slots__ = ("_entries", "_waiter", "_wind_down", "ended", "job_id")

    def __init__(self, job_id: str, wind_down: WindDown) -> None:
        self.job_id = job_id
        self._entries: list[Entry] = []
        self._waiter: asyncio.Future[None] | None = None
        self.ended = False
        self._wind_down = wind_down

    def put(self, entries: list[Entry]) -> None:
        if not self._entries:
            self._wind_down.pending()
        self._entries.extend(entries)
        self._wake_waiter()

    def drop(self) -> None:
        """Forget entries never taken (the stream is gone)."""
        if self._entries:
            self._entries = []
            self._wind_down.delivered()

    def wake(self) -> None:
        """End the stream (shutdown, or its client left): `get` answers [] from now on."""
        self.ended = True
        self._wake_waiter()

    def _wake_waiter(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self, timeout_s: float) -> list[Entry] | None:
        """Every entry put since the last call, or None after `timeout_s` without any, or []
        once ended (entries put before the end are still handed out first).

        All at once rather than batch by batch: a stream that fell behind (many jobs changing
        together) catches up in one write. A timer on the waiter rather than a cancel scope:
        one handle, not a scope per wait.
        """
        if not self._entries and not self.ended:
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(timeout_s, _expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
            if not self._entries and not self.ended:
                return None
        entries, self._entries = self._entries, []
        if entries:
            self._wind_down.delivered()
        return entries


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class EventHub:
    ENDED_MAX = 4096  # jobs whose end is remembered: more than end together on one process
    ENDED_FRESH_S = 30.0  # and for how long: half the least JOB_TTL_S

    def __init__(self, redis: aioredis.Redis, sweep_s: float = 15.0) -> None:
        self.redis = redis
        self.sweep_s = sweep_s
        self._subscribers: dict[str, set[Subscription]] = {}
        self._ended: dict[str, tuple[str, float]] = {}  # job id -> (terminal event id, when seen)
        self._cursors: dict[str, str] = {}
        self._dirty: set[str] = set()
        self._pulling: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self.wind_down = WindDown()
        self.closing = asyncio.Event()  # set when the server shuts down: streams end, clients resume

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen(), name="event-hub"),
            asyncio.create_task(self._wake_on_close(), name="event-hub-close"),
            asyncio.create_task(self._sweep(), name="event-hub-sweep"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _wake_on_close(self) -> None:
        """On server shutdown, wake every stream so each ends cleanly and its client resumes.

        uvicorn tells a streaming response nothing when it starts shutting down (it waits for
        responses to finish, then for the lifespan). sse-starlette watches uvicorn's exit flag
        (by patching Server.handle_exit, and through the SIGTERM handler's server when the patch
        came too late); its watcher runs once per event loop and this waits on it.
        """
        await EventSourceResponse._listen_for_exit_signal()
        self.closing.set()
        for subs in list(self._subscribers.values()):
            for subscription in subs:
                subscription.wake()

    def ended_with(self, job_id: str, event_id: str) -> bool:
        """Whether this process handed `event_id` to the job's streams as its terminal event in
        the last ENDED_FRESH_S.

        Nothing follows a terminal event: a client resuming from it has everything, and when
        many jobs end together every client's EventSource reconnects at once. Such a reconnect
        is answered 204 without reading Redis: the job's record outlives its terminal event by
        JOB_TTL_S (at least 60 s), so within ENDED_FRESH_S it still exists.
        """
        ended = self._ended.get(job_id)
        return ended is not None and ended[0] == event_id and time.monotonic() - ended[1] < self.ENDED_FRESH_S

    def subscribe(self, job_id: str) -> Subscription:
        subscription = Subscription(job_id, self.wind_down)
        self._subscribers.setdefault(job_id, set()).add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        subscription.drop()
        subs = self._subscribers.get(subscription.job_id)
        if subs is None:
            return
        subs.discard(subscription)
        if not subs:
            del self._subscribers[subscription.job_id]
            self._cursors.pop(subscription.job_id, None)

    async def _listen(self) -> None:
        """Follow the channel for the life of the process; resubscribe after Redis outages."""
        delay = 0.1
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(keys.EVENTS_CHANNEL)
                delay = 0.1
                for job_id in list(self._subscribers):  # catch up on what an outage hid
                    self._notify(job_id)
                async for message in pubsub.listen():
                    job_id = message["data"]
                    if job_id in self._subscribers:
                        self._notify(job_id)
            except (RedisError, OSError) as exc:
                log.warning("event_hub_reconnecting", error=type(exc).__name__, retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _sweep(self) -> None:
        """Catch up on changes whose pub/sub message never arrived (see the module's docstring)."""
        while True:
            await asyncio.sleep(self.sweep_s)
            for job_id in list(self._subscribers):
                self._notify(job_id)

    def _notify(self, job_id: str) -> None:
        self._dirty.add(job_id)
        if job_id not in self._pulling:
            self._pulling.add(job_id)
            asyncio.get_running_loop().create_task(self._pull(job_id))

    async def _pull(self, job_id: str) -> None:
        """Read new entries once per change, however many local subscribers the job has."""
        try:
            while job_id in self._dirty and job_id in self._subscribers:
                self._dirty.discard(job_id)
                cursor = self._cursors.get(job_id)
                entries = await self.redis.xrange(keys.events(job_id), min=f"({cursor}" if cursor else "-")
                if not entries or job_id not in self._subscribers:
                    continue
                last_id, last = entries[-1]
                self._cursors[job_id] = last_id
                if last["event"] in state.TERMINAL:
                    if len(self._ended) >= self.ENDED_MAX:
                        del self._ended[next(iter(self._ended))]  # the oldest: dicts keep order
                    self._ended[job_id] = (last_id, time.monotonic())
                for subscription in self._subscribers[job_id]:
                    subscription.put(entries)
        except RedisError as exc:
            log.warning("event_hub_read_failed", job_id=job_id, error=type(exc).__name__)
        finally:
            self._pulling.discard(job_id)
