"""The short markdown report and its PNG plot, written when a run ends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import thresholds
from tracker import JobTracker

REPORT_NAME = "report.md"
PLOT_NAME = "report.png"


def plot(tracker: JobTracker, path: Path) -> None:
    """Jobs in flight, p99 latency (Locust's rolling window) and failures over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s.t_s for s in tracker.samples]
    fig, axes = plt.subplots(3, 1, figsize=(9, 7), sharex=True)
    axes[0].plot(t, [s.in_flight for s in tracker.samples], color="tab:blue")
    axes[0].set_ylabel("jobs in flight")
    axes[1].plot(t, [s.p99_ms for s in tracker.samples], color="tab:orange")
    axes[1].set_ylabel("p99 latency (ms)")
    axes[2].plot(t, [s.failures for s in tracker.samples], color="tab:red")
    axes[2].set_ylabel("failures (total)")
    axes[2].set_xlabel("seconds since start")
    for axis in axes:
        axis.grid(alpha=0.3)
    fig.suptitle("Delineate load test")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def route_rows(stats: Any) -> list[str]:
    rows = [
        "| type | name | requests | failures | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in sorted(stats.entries.values(), key=lambda e: (e.method, e.name)):
        rows.append(
            f"| {entry.method} | {entry.name} | {entry.num_requests} | {entry.num_failures} "
            f"| {entry.get_response_time_percentile(0.5) or 0:.0f} "
            f"| {entry.get_response_time_percentile(0.99) or 0:.0f} | {entry.max_response_time or 0:.0f} |"
        )
    return rows


def write(
    directory: Path,
    stats: Any,
    tracker: JobTracker,
    checks: list[thresholds.Check],
    settings: dict[str, str],
) -> Path:
    """report.md (+ report.png) in `directory`; returns the markdown's path."""
    directory.mkdir(parents=True, exist_ok=True)
    plot(tracker, directory / PLOT_NAME)
    verdict = "PASS" if thresholds.exit_code(checks) == 0 else "FAIL"
    lines = [f"# Load test report: {verdict}", "", "## Run", ""]
    lines += [f"- {name}: {value}" for name, value in settings.items()]
    lines += ["", "## Thresholds", "", thresholds.table(checks), "", "## Jobs", ""]
    lines += [
        f"- started: {tracker.started}, finished: {tracker.finished}",
        f"- peak in flight (client view): {tracker.peak_in_flight}",
        "- outcomes: " + (", ".join(f"{k} {v}" for k, v in sorted(tracker.outcomes.items())) or "none"),
        f"- longest gap between SSE reads: {tracker.max_sse_gap_s:.2f} s",
    ]
    timeouts = thresholds.proxy_timeouts(stats)
    lines += ["", "## Proxy-timeout failures", ""]
    lines += [f"- {name}: {count}" for name, count in sorted(timeouts.items())] or ["- none"]
    lines += ["", "## Requests", "", *route_rows(stats), "", f"![jobs, p99, failures]({PLOT_NAME})", ""]
    path = directory / REPORT_NAME
    path.write_text("\n".join(lines))
    return path
