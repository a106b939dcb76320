"""Container health check (the image has no curl): exit 0 when the process answers 2xx.

`healthcheck.py` (the image's HEALTHCHECK) asks the API's GET /health/live on $PORT;
`healthcheck.py worker` asks the worker's own /metrics on $WORKER_METRICS_PORT, since a
worker serves no API. Liveness only: Redis or S3 trouble must not get a process restarted.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

TARGETS = {"api": ("PORT", "3000", "/health/live"), "worker": ("WORKER_METRICS_PORT", "0", "/metrics")}


def url_for(role: str, env: dict[str, str]) -> str:
    """The URL to probe for `role`, from the same variables the service reads."""
    variable, default, path = TARGETS[role]
    port = int(env.get(variable) or default)
    if not 0 < port < 65536:
        raise ValueError(f"{variable} must be set to the port to probe (got {port})")
    return f"http://127.0.0.1:{port}{path}"


def main(argv: list[str]) -> int:
    role = argv[1] if len(argv) > 1 else "api"
    try:
        with urllib.request.urlopen(url_for(role, dict(os.environ)), timeout=3) as response:  # noqa: S310
            return 0 if 200 <= response.status < 300 else 1
    except (OSError, ValueError, urllib.error.URLError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
