"""A webhook receiver inside the Locust process: users wait on it for their job's callback.

It answers 204 to every POST and hands the JSON body to whoever waits for that jobId. The
signature is not verified here (the load test measures delivery, not crypto); docs/ shows a
verifying receiver.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from gevent.event import AsyncResult
from gevent.pywsgi import WSGIServer


class WebhookReceiver:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, advertised_host: str | None = None) -> None:
        self._waiting: dict[str, AsyncResult] = {}
        self.received = 0
        self._server = WSGIServer((host, port), self._app, log=None, error_log=None)
        self._advertised = advertised_host or host

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop(timeout=1)

    @property
    def url(self) -> str:
        return f"http://{self._advertised}:{self._server.server_port}/hook"

    def expect(self, job_id: str) -> AsyncResult:
        """Register interest before initiating could race; callers register right after 202."""
        return self._waiting.setdefault(job_id, AsyncResult())

    def forget(self, job_id: str) -> None:
        self._waiting.pop(job_id, None)

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ["REQUEST_METHOD"] != "POST":
            start_response("405 Method Not Allowed", [("Content-Length", "0")])
            return [b""]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        try:
            body = json.loads(environ["wsgi.input"].read(length) or b"{}")
        except ValueError:
            start_response("400 Bad Request", [("Content-Length", "0")])
            return [b""]
        self.received += 1
        data = body.get("data", body) if isinstance(body, dict) else {}
        job_id = str(data.get("jobId") or body.get("jobId") or "")
        if job_id:
            self.expect(job_id).set(data)
        start_response("204 No Content", [("Content-Length", "0")])
        return [b""]
