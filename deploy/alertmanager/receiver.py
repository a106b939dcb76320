"""The compose stack's alert receiver: where Alertmanager sends every notification.

It stands in for Slack or PagerDuty: each notification is printed as one line per alert
(`docker compose logs -f alert-receiver`) and answered 200, so Alertmanager's UI shows it
delivered. GET /health answers the healthcheck. Standard library only: it runs on the
Python base image the Dockerfile already pins. tests/test_compose.py runs it.
"""

from __future__ import annotations

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def describe(notification: dict) -> list[str]:
    """One line per alert: status, name, severity, summary and runbook."""
    lines = []
    for alert in notification.get("alerts", []):
        labels, annotations = alert.get("labels", {}), alert.get("annotations", {})
        lines.append(
            f"{alert.get('status', '?').upper()} {labels.get('alertname', '?')} "
            f"severity={labels.get('severity', '?')} {annotations.get('summary', '')} "
            f"runbook={annotations.get('runbook_url', '-')}"
        )
    return lines


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        try:
            lines = describe(json.loads(body))
        except (ValueError, AttributeError):
            self.send_response(400)
            self.end_headers()
            return
        for line in lines:
            print(line, flush=True)
        self.send_response(200)
        self.end_headers()

    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8080"))
    print(f"alert receiver listening on :{port}", file=sys.stderr, flush=True)
    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()  # all interfaces: a container's port
