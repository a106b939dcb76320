"""A small SSE reader over httpx for tests: events, comments (heartbeats) and timings."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Event:
    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None
    at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class Comment:
    text: str
    at: float = field(default_factory=time.monotonic)


def read(response: httpx.Response) -> Iterator[Event | Comment]:
    """Parse a text/event-stream response line by line, yielding events and comments."""
    current = Event()
    has_fields = False
    for line in response.iter_lines():
        if line == "":
            if has_fields:
                current.at = time.monotonic()
                yield current
            current, has_fields = Event(), False
        elif line.startswith(":"):
            yield Comment(line[1:].strip())
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            has_fields = True
            if name == "data":
                current.data = f"{current.data}\n{value}" if current.data else value
            elif name == "event":
                current.event = value
            elif name == "id":
                current.id = value
            elif name == "retry":
                current.retry = int(value)


def collect(
    client: httpx.Client, job_id: str, last_event_id: str | None = None, timeout_s: float = 30
) -> tuple[httpx.Response, list[Event | Comment]]:
    """Read a whole stream (until the server ends it) and return its response and items."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    items: list[Event | Comment] = []
    with client.stream(
        "GET", f"/v1/download/stream/{job_id}", headers=headers, timeout=timeout_s
    ) as response:
        if response.status_code == 200:
            items = list(read(response))
    return response, items


def events(items: list[Event | Comment]) -> list[Event]:
    return [item for item in items if isinstance(item, Event)]
