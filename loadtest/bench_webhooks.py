"""What hostile webhook callbacks cost a download and the API (issue #17, item 1), measured.

A private Redis + SeaweedFS, one API process and one worker with WORKER_CONCURRENCY=4 and 1 s
downloads, as in the issue's reproduction. First quiet: a probe download's queue wait
(`started_at - created_at` from its status) and `/health` latency. Then hostile: 4 jobs whose
callback accepts and never answers, 4 whose callback answers 503, 4 whose callback sends a
header line every 8 s, and 45 initiates naming a host whose DNS lookup never ends (injected
by tests/faults/sitecustomize.py: the system resolver cannot be pointed elsewhere); once
their deliveries are under way, the same probe and `/health` again.

    .venv/bin/python loadtest/bench_webhooks.py [--probes 3]

It talks to the service over HTTP only, so the same script measures any checkout (run it from
that checkout's root: the API and worker are started from there).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "loadtest")]

from backends import LOAD_SETTINGS  # noqa: E402
from service.harness import private_backends, spawn, start_api  # noqa: E402
from tests.hooks import SECRET, Hostile, Receiver  # noqa: E402

HEALTH_TIMEOUT_S = 20.0
TERMINAL = ("completed", "failed", "cancelled")
SETTINGS = {
    **LOAD_SETTINGS,
    "DEDUPE_WINDOW_S": "0",  # every probe is a new job
    "WORKER_CONCURRENCY": "4",
    "DOWNLOAD_DELAY_MIN_MS": "1000",
    "DOWNLOAD_DELAY_MAX_MS": "1000",
    "WEBHOOK_SECRET": SECRET,
    "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
    "PYTHONPATH": str(ROOT / "tests" / "faults"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probes", type=int, default=3, help="probe downloads per phase")
    args = parser.parse_args()
    with private_backends("delineate-bench-webhooks-", "delineate", settings=SETTINGS) as backends:
        faults = backends.home / "dns"
        faults.mkdir()
        env = backends.env(DNS_FAULTS_DIR=str(faults))
        logs = backends.home / "logs"
        api, url = start_api(env, logs)
        worker = spawn("worker", [sys.executable, "-m", "service", "worker"], env, logs)
        hostile = [Hostile("blackhole"), Hostile("trickle", every_s=8.0)]
        failing = Receiver()
        failing.default = 503
        try:
            with httpx.Client(base_url=url, timeout=120) as http:
                measure(http, 1)  # warm-up: the worker is up and has run a job
                quiet = measure(http, args.probes)
                urls = [hostile[0].url] * 4 + [failing.url] * 4 + [hostile[1].url] * 4
                for callback in urls:
                    initiate(http, {"file_ids": [70000], "callbackUrl": callback})
                time.sleep(3)  # their downloads done, their deliveries under way
                hanging = threading.Thread(target=slow_dns_initiates, args=(url,), daemon=True)
                hanging.start()
                time.sleep(1)
                loud = measure(http, args.probes)
            report(quiet, loud)  # before stopping: the old worker could not stop in time
        finally:
            (faults / "release").touch()
            for server in hostile:
                server.stop()
            failing.server.shutdown()
            api.stop()
            worker.stop()


def report(quiet: tuple[list[float], list[float]], loud: tuple[list[float], list[float]]) -> None:
    print("Hostile webhooks vs a download and /health: WORKER_CONCURRENCY=4, 1 s downloads")
    for name, (waits, health) in (("without webhooks", quiet), ("hostile callbacks", loud)):
        wait = f"median {statistics.median(waits):6.2f} s, max {max(waits):6.2f} s"
        print(f"  {name:18} probe queue wait {wait}; /health {seconds(health)}")


def seconds(values: list[float]) -> str:
    """Median and max in ms; a request cut at HEALTH_TIMEOUT_S shows as "> N s"."""

    def one(value: float) -> str:
        return f"> {HEALTH_TIMEOUT_S:.0f} s" if value >= HEALTH_TIMEOUT_S else f"{value * 1000:.0f} ms"

    return f"median {one(statistics.median(values))}, max {one(max(values))}"


def measure(http: httpx.Client, probes: int) -> tuple[list[float], list[float]]:
    """Queue waits of `probes` downloads started one after another, and /health latencies."""
    waits, health = [], []
    for _ in range(probes):
        started = time.monotonic()
        try:
            http.get("/health", timeout=HEALTH_TIMEOUT_S).raise_for_status()
            health.append(time.monotonic() - started)
        except httpx.TimeoutException:
            health.append(HEALTH_TIMEOUT_S)
        job_id = initiate(http, {"file_ids": [70007]})
        body = http.get(f"/v1/download/status/{job_id}").json()
        while body["status"] not in TERMINAL:
            time.sleep(0.1)
            body = http.get(f"/v1/download/status/{job_id}").json()
        waits.append((iso(body["startedAt"]) - iso(body["createdAt"])).total_seconds())
    return waits, health


def slow_dns_initiates(url: str) -> None:
    """45 initiates at once whose callback host never resolves (they end with the release)."""
    with httpx.Client(base_url=url, timeout=300) as http, ThreadPoolExecutor(45) as pool:
        for n in range(45):
            body = {"file_ids": [70000], "callbackUrl": f"http://n{n}.held.test/hook"}
            pool.submit(http.post, "/v1/download/initiate", json=body)


def initiate(http: httpx.Client, body: dict[str, object]) -> str:
    response = http.post("/v1/download/initiate", json=body)
    response.raise_for_status()
    return response.json()["jobId"]


def iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


if __name__ == "__main__":
    main()
