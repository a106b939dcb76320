"""Benchmark scripts run end to end on a small scale and print what they promise.

These check that the scripts still work and measure what they say, not their figures (those
come from running them on a quiet machine, never from a timed assertion here).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.support import ROOT, require_binary

COST = re.compile(
    r"API CPU per stream for (event|ending|reconnect)\s*: +(\d+) us \(.*\); "
    r"bare uvicorn +(\d+) us \(.*\); ratio ([\d.]+) \(aim <= 1.5: (?:PASS|FAIL)\)"
)
DELAY = re.compile(r"terminal event written -> received, (service|bare uvicorn): p50 \d+ ms, p99 \d+ ms")


def run(*args: str) -> str:
    # The scripts import `service` from the environment: make it this checkout's, whichever
    # checkout a shared venv's editable install points at.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=180, cwd=ROOT, env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.slow
def test_sse_phases_measure_the_service_and_the_bare_floor_on_the_same_streams():
    """A handful of streams, one round: loadtest/sse_floor.py delivers every event too."""
    require_binary("redis-server")
    out = run("loadtest/bench_sse.py", "--phases", "1", "--subscribers", "40", "--jobs", "1")
    costs = {m[1]: (int(m[2]), int(m[3]), float(m[4])) for m in COST.finditer(out)}
    assert set(costs) == {"event", "ending", "reconnect"}, out  # reconnect: Last-Event-ID, 204
    for service, bare, ratio in costs.values():
        assert bare > 0 and service > 0, out  # both servers did the work being timed
        assert ratio == pytest.approx(service / bare, rel=0.1), out  # figures print rounded
    assert {m[1] for m in DELAY.finditer(out)} == {"service", "bare uvicorn"}, out
    assert re.search(r"API RSS per stream: [\d.]+ KiB.*\(aim <= 30 KiB: (PASS|FAIL)\)", out), out


@pytest.mark.slow
def test_redis_memory_counts_every_job_s_keys_and_small_streams_stay_small():
    require_binary("redis-server")
    jobs = 20
    out = run("loadtest/bench_redis_memory.py", "--jobs", str(jobs), "--timeout", "60")
    assert "jobs still active after 60 s: 0" in out, out
    finished = re.search(r"all finished: +(\d+) bytes per job, ([\d.]+) keys per job", out)
    assert finished and int(finished[1]) > 0 and float(finished[2]) >= 4, out
    rows = {m[3]: (int(m[1]), int(m[2])) for m in re.finditer(r"(\d+) B/job +(\d+) keys +(\S+)", out)}
    per_job, keys = rows["delineate:job:{id}:events"]
    assert keys == jobs, out
    # Redis 7 preallocates a stream node of stream-node-max-bytes (default 4096) per small stream
    assert per_job < 4096, f"the embedded Redis runs without stream-node-max-bytes 1024: {out}"


ROUND = re.compile(
    r"round 1: bare +(\d+) req/s p99 +[\d.]+ ms +(\d+) us CPU \| "
    r"root +(\d+) req/s p99 +[\d.]+ ms +(\d+) us CPU \| ratio ([\d.]+)"
)


@pytest.mark.slow
def test_api_bench_sets_the_root_route_beside_the_bare_starlette_floor():
    """One short round of `GET /` against the bare JSON endpoint: both answered, ratio consistent."""
    require_binary("redis-server")
    require_binary("wrk")
    out = run("loadtest/bench_api.py", "--only", "root", "--rounds", "1", "--seconds", "1")
    found = ROUND.search(out)
    assert found, out
    bare, root, ratio = int(found[1]), int(found[3]), float(found[5])
    assert bare > 0 and root > 0 and int(found[2]) > 0 and int(found[4]) > 0, out
    assert ratio == pytest.approx(root / bare, abs=0.01), out
    assert "warning" not in out, out  # every answer a 2xx
    assert re.search(r"root: median ratio [\d.]+, median p99 [\d.]+ ms \(target >= 0.40\); CPU per", out), out
    assert re.search(r"aim root \(target >= 0.40\): (PASS|FAIL)", out), out


PIECE = re.compile(r"without (the [\w' ]+?) +([\d.]+) us: it costs +(-?[\d.]+) us")
WHOLE = re.compile(r"^  (GET /|status) +([\d.]+) us, every layer$", re.M)


@pytest.mark.slow
def test_request_path_takes_each_piece_out_of_both_routes():
    require_binary("redis-server")
    out = run("loadtest/request_path.py", "--requests", "128")
    wholes = {m[1]: float(m[2]) for m in WHOLE.finditer(out)}
    assert set(wholes) == {"GET /", "status"}, out
    pieces = PIECE.findall(out)
    assert len(pieces) == 8, out  # four pieces, each taken out of both routes
    for route, (start, end) in zip(wholes, ((0, 4), (4, 8)), strict=True):
        for _, rest, cost in pieces[start:end]:
            assert float(cost) == pytest.approx(wholes[route] - float(rest), abs=0.15), out
