"""Every Redis key Delineate writes and every RQ queue it uses, named in one place.

docs/jobs.md's key table mirrors this module (tests/test_docs.py keeps them equal). All keys
live under `delineate:`; RQ keeps its own under `rq:` (only `rq_queue` names one of those, for
whatever reads queue lengths from outside: the metrics collector, KEDA, load scripts).
"""

from __future__ import annotations

from rq.queue import Queue

PREFIX = "delineate:"

# -- queues ------------------------------------------------------------------------------------
# Small and large download jobs wait apart, served round-robin, so a burst of 1,000-file jobs
# cannot starve the one-file ones (docs/jobs.md); webhook deliveries wait on their own queue.
SMALL_QUEUE = "downloads-small"
LARGE_QUEUE = "downloads-large"
DOWNLOAD_QUEUES = (SMALL_QUEUE, LARGE_QUEUE)
WEBHOOK_QUEUE = "webhooks"
QUEUES = (*DOWNLOAD_QUEUES, WEBHOOK_QUEUE)


def rq_queue(name: str) -> str:
    """RQ's list of the jobs waiting in queue `name` (its length is the queue depth)."""
    return Queue.redis_queue_namespace_prefix + name


# -- jobs --------------------------------------------------------------------------------------
JOB_INDEX = PREFIX + "jobs"  # zset: every job id by creation time (410 for an expired job, not 404)
ACTIVE = PREFIX + "active"  # zset: ids of jobs not known to be finished (the reaper walks it)
EVENTS_CHANNEL = PREFIX + "events"  # pub/sub: a job id per state change (one subscription per API)


def job(job_id: str) -> str:
    """Hash: the job's fields, the single source of truth for clients."""
    return f"{PREFIX}job:{job_id}"


def events(job_id: str) -> str:
    """Stream: every state change of the job, for SSE replay (entry ids are SSE ids)."""
    return f"{PREFIX}job:{job_id}:events"


def client_active(client: str) -> str:
    """Zset: a client's unfinished jobs, while PER_CLIENT_MAX_ACTIVE_JOBS reads it."""
    return f"{PREFIX}client:{client}:active"


def idempotency(client: str, key_digest: str) -> str:
    """String: the job an Idempotency-Key created, per client, for IDEMPOTENCY_TTL_S."""
    return f"{PREFIX}idem:{client}:{key_digest}"


def dedupe(client: str, body_digest: str) -> str:
    """String: the job an identical body created, per client, for DEDUPE_WINDOW_S."""
    return f"{PREFIX}dedupe:{client}:{body_digest}"


# -- the reaper, webhooks, the rate limiter ----------------------------------------------------
REAPER_LOCK = PREFIX + "reaper:lock"  # string, SET NX PX: one reaper pass per interval
REAPER_SUSPECTS = PREFIX + "reaper:suspects"  # hash: job id -> unix time first seen unowned
DEAD_LETTERS = PREFIX + "webhooks:dead"  # zset: job id -> when its delivery gave up


def rate_limit(client: str, window: int) -> str:
    """String counter: a client's requests in one RATE_LIMIT_WINDOW_MS window."""
    return f"{PREFIX}rl:{client}:{window}"
