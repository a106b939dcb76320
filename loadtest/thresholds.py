"""The pass/fail rules of a run, evaluated from Locust's stats when it ends.

Each rule names itself and the figure it saw, so a red run says which promise broke:
0 proxy-timeout failures on the async paths, an error ratio bound, a p99 bound per API route,
and every job a client started was seen finished.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxylimit import MARKER
from tracker import JobTracker

HTTP_METHODS = {"GET", "POST", "DELETE"}
API_PREFIX = "/v1/"
LEGACY_ROUTE = "/v1/download/start"


@dataclass(frozen=True)
class Check:
    name: str
    figure: str
    bound: str
    ok: bool


def proxy_timeouts(stats: Any) -> dict[str, int]:
    """Proxy-timeout failures by request name (every path, legacy included)."""
    counts: dict[str, int] = {}
    for error in stats.errors.values():
        if MARKER in str(error.error):
            counts[error.name] = counts.get(error.name, 0) + error.occurrences
    return counts


def api_routes(stats: Any) -> list[Any]:
    return sorted(
        (e for e in stats.entries.values() if e.method in HTTP_METHODS and e.name.startswith(API_PREFIX)),
        key=lambda e: (e.name, e.method),
    )


def evaluate(
    stats: Any,
    tracker: JobTracker,
    *,
    p99_ms: float,
    route_p99_ms: dict[str, float],
    max_error_ratio: float,
) -> list[Check]:
    checks: list[Check] = []
    total = stats.total
    checks.append(Check("requests made", str(total.num_requests), "> 0", total.num_requests > 0))

    timeouts = proxy_timeouts(stats)
    legacy = sum(n for name, n in timeouts.items() if name.startswith(LEGACY_ROUTE))
    async_timeouts = sum(timeouts.values()) - legacy
    checks.append(
        Check("proxy-timeout failures on async paths", str(async_timeouts), "= 0", async_timeouts == 0)
    )
    checks.append(Check("proxy-timeout failures on legacy /start", str(legacy), "= 0", legacy == 0))

    ratio = total.num_failures / total.num_requests if total.num_requests else 0.0
    checks.append(
        Check(
            "error ratio",
            f"{ratio:.2%} ({total.num_failures}/{total.num_requests})",
            f"<= {max_error_ratio:.2%}",
            ratio <= max_error_ratio,
        )
    )

    for entry in api_routes(stats):
        bound = route_p99_ms.get(entry.name, p99_ms)
        p99 = entry.get_response_time_percentile(0.99) or 0
        checks.append(
            Check(f"p99 {entry.method} {entry.name}", f"{p99:.0f} ms", f"<= {bound:.0f} ms", p99 <= bound)
        )

    unfinished = tracker.started - tracker.finished
    checks.append(
        Check(
            "every started job finished",
            f"{tracker.finished}/{tracker.started} ({unfinished} unfinished)",
            "all",
            unfinished == 0,
        )
    )
    return checks


def exit_code(checks: list[Check]) -> int:
    return 0 if all(check.ok for check in checks) else 1


def table(checks: list[Check]) -> str:
    """A markdown table, also readable as plain text in the console summary."""
    lines = ["| threshold | figure | bound | result |", "|---|---|---|---|"]
    lines += [f"| {c.name} | {c.figure} | {c.bound} | {'PASS' if c.ok else 'FAIL'} |" for c in checks]
    return "\n".join(lines)
