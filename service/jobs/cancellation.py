"""In-process cancel signals: the worker sets one when RQ's stop-job command arrives, and the
running download sees it at once because it waits on the event instead of sleeping."""

from __future__ import annotations

import threading

_events: dict[str, threading.Event] = {}
_lock = threading.Lock()


def track(job_id: str) -> threading.Event:
    with _lock:
        return _events.setdefault(job_id, threading.Event())


def forget(job_id: str) -> None:
    with _lock:
        _events.pop(job_id, None)


def cancel(job_id: str) -> bool:
    """Signal the download running `job_id` in this process; False when none runs here."""
    with _lock:
        event = _events.get(job_id)
    if event is None:
        return False
    event.set()
    return True


def event_for(job_id: str) -> threading.Event:
    """The job's event, or a fresh one (never set) when the job runs outside a worker."""
    with _lock:
        return _events.get(job_id) or threading.Event()
