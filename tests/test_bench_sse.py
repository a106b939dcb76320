"""The SSE benchmark's per-stream mode runs end to end, the bare-uvicorn floor beside the service.

A handful of streams, one round: this checks that the script and loadtest/sse_floor.py still
deliver every event and print comparable figures, not the figures themselves (those are for
`loadtest/bench_sse.py` on a quiet machine, never a timed assertion here).
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.procs import ROOT, require_binary

COST = re.compile(
    r"API CPU per stream for (event|ending)\s*: +(\d+) us \(.*\); "
    r"bare uvicorn +(\d+) us \(.*\); ratio ([\d.]+)"
)
DELAY = re.compile(r"terminal event written -> received, (service|bare uvicorn): p50 \d+ ms, p99 \d+ ms")


def test_phases_measure_the_service_and_the_bare_floor_on_the_same_streams():
    require_binary("redis-server")
    result = subprocess.run(
        [sys.executable, "loadtest/bench_sse.py", "--phases", "1", "--subscribers", "40", "--jobs", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    costs = {m[1]: (int(m[2]), int(m[3]), float(m[4])) for m in COST.finditer(result.stdout)}
    assert set(costs) == {"event", "ending"}, result.stdout
    for service, bare, ratio in costs.values():
        assert bare > 0 and service > 0, result.stdout  # both servers did the work being timed
        assert ratio == pytest.approx(service / bare, rel=0.1), result.stdout  # figures print rounded
    assert {m[1] for m in DELAY.finditer(result.stdout)} == {"service", "bare uvicorn"}, result.stdout
