"""The machine's floor: what a bare Starlette JSON endpoint on one uvicorn process answers.

A capacity or throughput figure alone cannot be compared across machines (one 2-core VM of our
kind served the bare endpoint at 23,000 req/s, another of the same kind at 6,400): printed
beside it, measured in the same run, this floor says how fast the machine was at that moment.
bench_api.py measures the same endpoint side by side with `GET /` (its root ratio).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx

from service import harness

BARE_JSON = textwrap.dedent(
    """
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def root(request):
        return JSONResponse({"message": "the machine's floor", "docs": "/docs"})

    app = Starlette(routes=[Route("/", root)])
    """
)


def wrk(url: str, seconds: int, script: Path | None = None) -> tuple[float, float]:
    """requests/s and p99 latency (ms) of wrk -t2 -c64 on `url`."""
    args = ["wrk", "-t2", "-c64", f"-d{seconds}s", "--latency", url]
    if script:
        args[1:1] = ["-s", str(script)]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()
    p99 = float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        print(f"    warning: {non2xx.group(1)} non-2xx answers from {url}")
    return rps, p99


def serve(name: str, app: str, env: dict[str, str], port: int, logs: Path, cwd: Path) -> harness.Proc:
    """uvicorn serving `app` (importable from `cwd`) with the options `delineate api` gives it
    (uvloop, httptools, no proxy headers, no Server header, no uvicorn access log), ready once it
    answers."""
    args = [sys.executable, "-m", "uvicorn", app, "--port", str(port), "--loop", "uvloop"]
    args += ["--http", "httptools", "--no-proxy-headers", "--no-server-header"]
    args += ["--no-access-log", "--log-level", "warning"]
    proc = harness.spawn(name, args, env, logs, cwd=cwd)
    harness.wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/nope").status_code, 30, app, proc.process)
    return proc


def serve_api(name: str, env: dict[str, str], logs: Path, checkout: Path) -> tuple[harness.Proc, str]:
    """The API as production runs it, `delineate api` (its own HTTP protocol class, connection
    limit and uvicorn options), from `checkout`'s code, on a free port; (proc, URL) once it
    answers."""
    port = harness.free_port()
    env = {**env, "PORT": str(port), "HOST": "127.0.0.1"}
    proc = harness.spawn(name, [sys.executable, "-m", "service", "api"], env, logs, cwd=checkout)
    url = f"http://127.0.0.1:{port}"
    harness.wait_until(lambda: httpx.get(f"{url}/health/live").status_code == 200, 30, name, proc.process)
    return proc, url


def bare_json_rps(home: Path, seconds: int = 3) -> float | None:
    """The floor in req/s (wrk -t2 -c64 for `seconds`), or None without wrk."""
    if not shutil.which("wrk"):
        return None
    home.mkdir(parents=True, exist_ok=True)
    (home / "floor_app.py").write_text(BARE_JSON)
    port = harness.free_port()
    proc = serve("floor", "floor_app:app", dict(os.environ), port, home, home)
    try:
        return wrk(f"http://127.0.0.1:{port}/", seconds)[0]
    finally:
        proc.stop()
