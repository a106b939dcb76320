"""Process and machine figures from /proc, for the load scripts (capacity.py, bench_sse.py)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def children_of() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def tree_pids(pid: int, tree: dict[int, list[int]]) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        todo.extend(tree.get(current, []))
    return pids


@dataclass
class Usage:
    rss: int = 0  # bytes
    threads: int = 0
    cpu_s: float = 0.0  # user + system, the whole tree's lifetime
    wait_s: float = 0.0  # main threads' time runnable but not running (run-queue delay)

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.rss + other.rss,
            self.threads + other.threads,
            self.cpu_s + other.cpu_s,
            self.wait_s + other.wait_s,
        )


def usage(pid: int, tree: dict[int, list[int]]) -> Usage:
    """VmRSS, threads and CPU seconds of a process and all its descendants."""
    total = Usage()
    for one in tree_pids(pid, tree):
        try:
            status = Path(f"/proc/{one}/status").read_text()
            stat = Path(f"/proc/{one}/stat").read_text()
            schedstat = Path(f"/proc/{one}/schedstat").read_text().split()
        except OSError:
            continue
        rss = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        threads = re.search(r"^Threads:\s+(\d+)", status, re.M)
        fields = stat[stat.rindex(")") + 2 :].split()
        total += Usage(
            int(rss.group(1)) * 1024 if rss else 0,
            int(threads.group(1)) if threads else 0,
            (int(fields[11]) + int(fields[12])) / CLK_TCK,
            int(schedstat[1]) / 1e9,
        )
    return total


def threads_cpu_s(pid: int) -> float:
    """CPU seconds of a process's live threads at nanosecond resolution (schedstat), for spans
    where /proc/PID/stat's clock ticks (10 ms) are too coarse. Exited threads are not counted."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def busy_cores() -> float:
    """CPU seconds the whole machine spent busy (all tenants), since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


def load_1m() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])
