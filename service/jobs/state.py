"""A job as stored in Redis, and the writes that stage its changes (docs/jobs.md: the schema).

The job's hash (`keys.job`) holds its fields (`JobRecord`, below) and `file:{n}`, the JSON
result of the n-th file (0-based) once processed, so one HGETALL reads a whole job (the status
route's one round trip). Every change is also appended to the job's stream (`keys.events`, SSE
replay) and announced on `keys.EVENTS_CHANNEL` (the job id), so each API process needs one
subscription for all its streams. Everything expires JOB_TTL_S after the last write.

The `queue_*` functions stage commands on a pipeline, sync or async alike, and never execute
it: the caller chooses what else goes in the same MULTI (RQ's own enqueue commands at
creation; jobs/lifecycle.py's guard for every later change).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from service import keys

# How long after a job's own keys expire (JOB_TTL_S) its id stays in keys.JOB_INDEX; the reaper
# trims older ids, or the index would grow by one entry per job forever in a `noeviction` Redis.
INDEX_KEPT_S = 7 * 24 * 3600
EVENTS_MAXLEN = 2_000
FILE_FIELD = "file:"  # job hash fields file:0, file:1, ...: per-file results

QUEUED, PROCESSING, RETRYING, COMPLETED, FAILED, CANCELLED = (
    "queued",
    "processing",
    "retrying",
    "completed",
    "failed",
    "cancelled",
)
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED})


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class JobRecord:
    """One job as stored; `files` holds the per-file results written so far."""

    id: str
    status: str
    file_ids: list[int]
    created_at: str
    client: str = ""
    queue: str = ""
    done: int = 0
    attempt: int = 0
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = None
    result_key: str | None = None
    result_size: int | None = None
    traceparent: str | None = None
    callback_url: str | None = None
    webhook: dict[str, Any] | None = None  # the delivery outcome, once a delivery was tried
    files: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.file_ids)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    def to_hash(self) -> dict[str, str]:
        values = {
            "id": self.id,
            "status": self.status,
            "file_ids": json.dumps(self.file_ids),
            "created_at": self.created_at,
            "client": self.client,
            "queue": self.queue,
            "done": str(self.done),
            "attempt": str(self.attempt),
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "error": self.error,
            "result_key": self.result_key,
            "result_size": None if self.result_size is None else str(self.result_size),
            "traceparent": self.traceparent,
            "callback_url": self.callback_url,
            "webhook": None if self.webhook is None else json.dumps(self.webhook),
        }
        return {name: value for name, value in values.items() if value is not None}

    @classmethod
    def from_redis(cls, fields: dict[Any, Any]) -> JobRecord | None:
        """The job from its HGETALL reply, bytes (sync clients) or str (the API's async client);
        None when the hash is gone (never existed or expired)."""
        if not fields:
            return None
        got = (
            fields
            if isinstance(next(iter(fields)), str)
            else {k.decode(): v.decode() for k, v in fields.items()}
        )
        files = sorted((int(k[len(FILE_FIELD) :]), v) for k, v in got.items() if k.startswith(FILE_FIELD))
        size = got.get("result_size")
        return cls(
            id=got["id"],
            status=got["status"],
            file_ids=json.loads(got["file_ids"]),
            created_at=got["created_at"],
            client=got.get("client", ""),
            queue=got.get("queue", ""),
            done=int(got.get("done", 0)),
            attempt=int(got.get("attempt", 0)),
            started_at=got.get("started_at"),
            finished_at=got.get("finished_at"),
            error=got.get("error"),
            result_key=got.get("result_key"),
            result_size=int(size) if size else None,
            traceparent=got.get("traceparent"),
            callback_url=got.get("callback_url"),
            webhook=json.loads(got["webhook"]) if got.get("webhook") else None,
            files=[json.loads(value) for _, value in files],
        )


def text(value: Any) -> str:
    """A Redis reply (bytes) or a Python value as str."""
    return value.decode() if isinstance(value, bytes) else str(value)


def queue_create(pipe: Any, job: JobRecord, ttl_s: int, *, track_client: bool) -> None:
    """Write a new job and its `queued` event; with `track_client`, add it to its client's set
    of active jobs (only PER_CLIENT_MAX_ACTIVE_JOBS reads it, and prunes it)."""
    pipe.hset(keys.job(job.id), mapping=job.to_hash())
    pipe.expire(keys.job(job.id), ttl_s)
    created = datetime.now(UTC).timestamp()
    pipe.zadd(keys.JOB_INDEX, {job.id: created})
    pipe.zadd(keys.ACTIVE, {job.id: created})
    if job.client and track_client:
        pipe.zadd(keys.client_active(job.client), {job.id: created})
        pipe.expire(keys.client_active(job.client), ttl_s)
    queue_event(pipe, job.id, QUEUED, {"status": QUEUED}, ttl_s)


def queue_update(pipe: Any, job_id: str, ttl_s: int, **fields: Any) -> None:
    """Set fields (None deletes one) and announce the change as the event named by the new
    `status`."""
    updates = {name: str(value) for name, value in fields.items() if value is not None}
    removed = [name for name, value in fields.items() if value is None]
    if updates:
        pipe.hset(keys.job(job_id), mapping=updates)
    if removed:
        pipe.hdel(keys.job(job_id), *removed)
    pipe.expire(keys.job(job_id), ttl_s)
    queue_event(pipe, job_id, fields["status"], dict(fields), ttl_s)


def queue_file_done(
    pipe: Any, job_id: str, ttl_s: int, result: dict[str, Any], done: int, total: int
) -> None:
    """Record the `done`-th file's result and the progress it makes (a retried run that redoes
    a file overwrites its field: the index is the file's place in the job, not a counter)."""
    pipe.hset(keys.job(job_id), mapping={f"{FILE_FIELD}{done - 1}": json.dumps(result), "done": str(done)})
    pipe.expire(keys.job(job_id), ttl_s)
    queue_event(pipe, job_id, "progress", {"done": done, "total": total, "file": result}, ttl_s)


def queue_event(pipe: Any, job_id: str, event: str, data: dict[str, Any], ttl_s: int) -> None:
    pipe.xadd(
        keys.events(job_id),
        {"event": event, "data": json.dumps(data)},
        maxlen=EVENTS_MAXLEN,
        approximate=True,
    )
    pipe.expire(keys.events(job_id), ttl_s)
    pipe.publish(keys.EVENTS_CHANNEL, job_id)


def load(conn: Any, job_id: str) -> JobRecord | None:
    """Read one job with a sync client (one HGETALL); None once it expired."""
    return JobRecord.from_redis(conn.hgetall(keys.job(job_id)))
