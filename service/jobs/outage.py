"""Riding out a dependency outage inside an attempt: an outage is not the job's fault.

A download calls S3 and Redis many times. When one of them is unreachable (connection refused
or reset, a timeout, a 5xx, throttling: `Storage.is_transient` for S3, redis-py's
ConnectionError and TimeoutError for Redis), the call is tried again in the job's own thread,
with capped backoff (backoff.delay_s from OUTAGE_BASE_S, at most OUTAGE_CAP_S, so the job
resumes within seconds of the dependency answering), for as long as the attempt's outage
allowance lasts (JOB_OUTAGE_ALLOWANCE_S, all outages of the attempt together). Only then does
the error end the attempt, counted as before. An error about the request itself (a missing
bucket, access denied) is raised at once.

Each outage the job rides out is logged when it starts (`dependency_unavailable`, with the
error) and when it ends (`dependency_back`, with how long it lasted), so an operator sees why
jobs paused. A cancel or a worker's shutdown interrupts the wait (`Stopped`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import TypeVar

from service import backoff
from service.jobs import cancel
from service.redis_client import UNAVAILABLE
from service.storage.s3 import Storage
from service.telemetry.logging import get_logger

log = get_logger("service.jobs")
T = TypeVar("T")

OUTAGE_BASE_S = 0.25
OUTAGE_CAP_S = 2.0


class Stopped(Exception):
    """The job was cancelled or handed back while it waited for a dependency."""


class Allowance:
    """One attempt's outage allowance: how long its calls may keep failing for the dependency's
    sake before the attempt fails."""

    def __init__(self, allowance_s: float, storage: Storage, stop: cancel.Stop) -> None:
        self.left_s = allowance_s
        self.storage = storage
        self.stop = stop

    def s3(self, call: Callable[..., T], *args: object, **kwargs: object) -> T:
        """`call(...)`, an S3 operation, riding out S3 being unreachable."""
        return self._ride_out("s3", self.storage.is_transient, partial(call, *args, **kwargs))

    def redis(self, call: Callable[..., T], *args: object, **kwargs: object) -> T:
        """`call(...)`, a Redis write of the job's state, riding out Redis being unreachable."""
        return self._ride_out(
            "redis", lambda exc: isinstance(exc, UNAVAILABLE), partial(call, *args, **kwargs)
        )

    def _ride_out(self, dependency: str, transient: Callable[[Exception], bool], call: Callable[[], T]) -> T:
        began: float | None = None
        step = 0
        while True:
            tried_at = time.monotonic()
            try:
                result = call()
            except Exception as exc:
                if not transient(exc):
                    raise
                now = time.monotonic()
                if began is None:
                    began = tried_at  # the failing call's own time counts too (a read timeout)
                    log.warning(
                        "dependency_unavailable",
                        dependency=dependency,
                        error=f"{type(exc).__name__}: {exc}"[:300],
                        allowance_left_s=round(self.left_s, 1),
                    )
                if now - began >= self.left_s:
                    self.left_s = 0.0
                    log.error("outage_allowance_spent", dependency=dependency, outage_s=round(now - began, 1))
                    raise
                wait = min(backoff.delay_s(OUTAGE_BASE_S, step, OUTAGE_CAP_S), self.left_s - (now - began))
                step += 1
                if self.stop.wait(wait):
                    raise Stopped from exc
                continue
            if began is not None:
                lasted = time.monotonic() - began
                self.left_s = max(self.left_s - lasted, 0.0)
                log.info("dependency_back", dependency=dependency, outage_s=round(lasted, 1))
            return result
