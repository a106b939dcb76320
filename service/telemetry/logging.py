"""structlog set-up: JSON lines in production, readable console lines for `make run`.

Context (request_id, job_id) is bound with structlog's contextvars, so every log line written
while handling a request or a job carries it without being passed around.

A job id is the only key to a job (a bearer secret, as in the original design), so no log line
carries one: `job_id` fields become `job`, a short digest of the id (`job_ref`), and any job id
inside a message (RQ's own lines, an exception's text) is replaced by the same digest. An operator
holding an id finds its lines by its digest: `service.telemetry.logging.job_ref(ID)`.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import hashlib
import logging
import re
import sys
from typing import Any, BinaryIO

import orjson
import structlog

from service.telemetry.tracing import add_trace_ids
from service.telemetry.tracing import enabled as tracing_enabled

REDACTED = "[redacted]"
SENSITIVE = ("secret", "password", "token", "signature", "authorization", "x-amz-")
_SENSITIVE_KEY = re.compile("|".join(re.escape(word) for word in SENSITIVE))


@functools.lru_cache(maxsize=1024)
def _sensitive(key: str) -> bool:
    """Cached: a process logs the same few dozen field names over and over (every request)."""
    return _SENSITIVE_KEY.search(key.lower()) is not None


_JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def job_ref(job_id: str) -> str:
    """What the logs carry instead of a job id: stable, so an operator holding the id can find the
    job's lines, and useless to anyone reading the logs without it."""
    return "job:" + hashlib.sha256(job_id.encode()).hexdigest()[:12]


def _hide_job_ids(text: str) -> str:
    return _JOB_ID.sub(lambda found: job_ref(found[0]), text)


def _redact(_logger: object, _name: str, event: dict[str, object]) -> dict[str, object]:
    """Drop secret-looking fields and presigned query strings, and replace job ids by their
    `job_ref`, whatever logged them."""
    job_id = event.pop("job_id", None)
    if isinstance(job_id, str):
        event["job"] = job_ref(job_id)
    for key, value in event.items():
        if _sensitive(key):
            event[key] = REDACTED
        elif isinstance(value, str):
            if "X-Amz-Signature=" in value:
                value = value.split("?", 1)[0] + "?" + REDACTED
            event[key] = _hide_job_ids(value)
    return event


class TurnFlushed:
    """A binary stream whose flushes on an event loop wait for the end of the turn.

    structlog's BytesLogger writes and flushes each line: a write(2) per access line, on every
    request's path. Lines written during one event-loop turn (under load, dozens of requests end
    in one) now leave in one write once the turn's ready callbacks have run, in the order they
    were written: the stream's own buffer keeps them, and it also carries the stdlib handler's
    lines, which flush it at once. Off the loop (a worker, a thread) a flush is immediate.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.write = stream.write
        self._scheduled = False

    def flush(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.stream.flush()
            return
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._scheduled = False
        self.stream.flush()


def configure(level: str = "info", fmt: str = "json") -> None:
    """JSON lines are serialized by orjson and written as bytes: the API writes one access line
    per request, so the cost of a line is on every request's path."""
    console = fmt == "console"
    renderer = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if console
        else structlog.processors.JSONRenderer()
    )
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_trace_ids,  # trace_id, span_id of the active span (none when tracing is off)
    ]
    final = (
        renderer
        if console
        else structlog.processors.JSONRenderer(orjson.dumps, option=orjson.OPT_NON_STR_KEYS)
    )
    filtering = structlog.make_filtering_bound_logger(logging.getLevelName(level.upper()))
    lines = None if console else TurnFlushed(sys.stderr.buffer)
    output = structlog.PrintLogger(sys.stderr) if lines is None else structlog.BytesLogger(lines)
    structlog.configure(
        # Redaction after the traceback is rendered, so an exception's text is redacted too.
        processors=[*shared, structlog.processors.format_exc_info, _redact, final],
        wrapper_class=filtering,
        logger_factory=lambda *_: output,
        cache_logger_on_first_use=True,
    )
    global _access
    # What access_logger() builds on, once tracing is known (the API is built after this).
    _access = (output, lines, final, filtering, logging.getLevelName(level.upper()) <= logging.INFO)
    # Libraries (uvicorn, rq, botocore) log through stdlib logging: same renderer, same fields.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,  # a library's traceback as text, not a tuple
                _redact,
                renderer,
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "rq.worker"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


_access: tuple[Any, TurnFlushed | None, Any, Any, bool] | None = None


class AccessLog:
    """The API's one JSON line per request, rendered without structlog's processor chain.

    The same line structlog's JSON chain renders (the fields as given, then `event`, `level`,
    `timestamp` in ISO-8601 UTC with a `Z`, then `trace_id` and `span_id` while tracing is on),
    written to the same TurnFlushed stream, for a third of the CPU: the chain copies the
    context, calls a bound method per processor and formats the timestamp in Python, and its
    BytesLogger copies the line to append the newline, on every request's path
    (docs/benchmarks.md). The line is one write: the stream's own lock keeps it whole among the
    lines of other threads. Its fields are fixed and never secret, and the request
    id is passed explicitly, so the general chain's context merge and redaction have nothing
    to do here. Below the `info` level it writes nothing, as the filtering logger would.
    """

    def __init__(self, lines: TurnFlushed, traced: bool, enabled: bool) -> None:
        self.lines = lines
        self.traced = traced
        self.enabled = enabled

    def info(self, event: str, **fields: Any) -> None:
        if not self.enabled:
            return
        fields["event"] = event
        fields["level"] = "info"
        fields["timestamp"] = datetime.datetime.now(datetime.UTC)  # orjson: as TimeStamper writes it
        if self.traced:
            add_trace_ids(None, "info", fields)
        self.lines.write(orjson.dumps(fields, option=_ACCESS_JSON))
        self.lines.flush()


_ACCESS_JSON = orjson.OPT_NON_STR_KEYS | orjson.OPT_UTC_Z | orjson.OPT_APPEND_NEWLINE


def access_logger() -> Any:
    """The logger for the API's one line per request, with trace ids only while tracing is on:
    an AccessLog for JSON lines, the short structlog chain (no context merge, no redaction) for
    the console. The general logger until `configure` ran."""
    if _access is None:
        return get_logger("service.api")
    output, lines, final, filtering, enabled = _access
    traced = tracing_enabled()
    if lines is not None:
        return AccessLog(lines, traced, enabled)
    processors = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        *([add_trace_ids] if traced else []),
        final,
    ]
    # bound now: wrap_logger's lazy proxy would look the logger up again on every line
    return structlog.wrap_logger(output, processors=processors, wrapper_class=filtering).bind()


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
