"""Which proxy the load test pretends to sit behind: how long it waits and what it answers.

The limit comes from a profile in proxy/profiles.toml (nginx, cloudflare, alb, test) or from
--proxy-timeout-s. A request with no byte for longer than the limit (for a plain request: its
whole duration; for an SSE stream: the gap between two reads) is what the proxy would cut,
so it counts as a failure named after the status the proxy would send (504, or 524 for
Cloudflare).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROFILES_FILE = ROOT / "proxy" / "profiles.toml"
DEFAULT_PROFILE = "nginx"
MARKER = "proxy-timeout"
REASONS = {504: "Gateway Timeout", 524: "A Timeout Occurred"}
ERROR_STATUS = {"cloudflare": 524}  # nginx, an ALB and the test profile all answer 504
# Keys a profile may use for the limit that cuts a silent upstream, in order of preference.
TIMEOUT_KEYS = (
    "proxy_read_timeout_s",
    "read_timeout_s",
    "idle_timeout_s",
    "proxy_timeout_s",
    "timeout_s",
)
FALLBACK_TIMEOUT_S = 60.0  # nginx's proxy_read_timeout default, when there is no profile file


class ProxyTimeout(Exception):
    """A request the proxy would have cut; its text starts with MARKER so thresholds find it."""


@dataclass(frozen=True)
class ProxyLimit:
    profile: str
    timeout_s: float
    status: int = 504

    @property
    def label(self) -> str:
        return f"{self.status} {REASONS.get(self.status, 'proxy timeout')}"

    def failure(self, what: str) -> ProxyTimeout:
        """The failure to record; constant text per limit so Locust groups them in one row."""
        return ProxyTimeout(f"{MARKER} {self.label}: {self.profile} cuts after {self.timeout_s:g} s ({what})")

    def judge(self, elapsed_s: float, status: int | None) -> ProxyTimeout | None:
        """A request that took longer than the limit, or a proxy-style timeout status, fails."""
        if elapsed_s > self.timeout_s:
            return self.failure("no response byte in time")
        if status in (504, 524):
            return self.failure(f"upstream answered {status}")
        return None


def profile_table(data: dict[str, Any], name: str) -> dict[str, Any] | None:
    """A profile's table, whether the file nests profiles under [profiles.X] or uses [X]."""
    for container in (data.get("profiles"), data):
        if isinstance(container, dict) and isinstance(container.get(name), dict):
            return container[name]
    return None


def find_timeout(table: dict[str, Any]) -> float | None:
    """The read/idle timeout in seconds, searched one level deep (a `proxy` sub-table counts)."""
    tables = [table, *(value for value in table.values() if isinstance(value, dict))]
    for candidate in tables:
        for key in TIMEOUT_KEYS:
            if isinstance(candidate.get(key), int | float):
                return float(candidate[key])
        if isinstance(candidate.get("proxy_read_timeout_ms"), int | float):
            return candidate["proxy_read_timeout_ms"] / 1000
    return None


def load(profile: str | None, timeout_s: float | None = None, path: Path = PROFILES_FILE) -> ProxyLimit:
    """The limit to judge by: --proxy-timeout-s wins, else the named profile from the file."""
    name = profile or DEFAULT_PROFILE
    status = ERROR_STATUS.get(name, 504)
    if timeout_s is not None:
        return ProxyLimit(name if profile else "proxy", timeout_s, status)
    if not path.exists():
        if profile:
            raise SystemExit(f"{path} does not exist: pass --proxy-timeout-s instead of --proxy-profile")
        return ProxyLimit(name, FALLBACK_TIMEOUT_S, status)
    data = tomllib.loads(path.read_text())
    table = profile_table(data, name)
    if table is None:
        raise SystemExit(f"no profile {name!r} in {path}")
    found = find_timeout(table)
    if found is None:
        raise SystemExit(f"profile {name!r} in {path} names no read/idle timeout ({', '.join(TIMEOUT_KEYS)})")
    return ProxyLimit(name, found, int(table.get("error_status", status)))
