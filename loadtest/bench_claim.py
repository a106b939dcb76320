"""API CPU for a burst of concurrent initiates from one client against the same from many.

Every initiate takes a slot under the client's PER_CLIENT_MAX_ACTIVE_JOBS (service/jobs/enqueue.py:
ADMIT). When that was a WATCH on the client's key with a retry on every conflict, one client's
burst cost about ten times the CPU of the same burst from as many clients (issue #17); with one
script per initiate the two should cost the same. Prints the API's CPU seconds per burst (the
process's own, from /proc) and the ratio, and the Redis commands the bursts sent.

    .venv/bin/python loadtest/bench_claim.py --burst 100 --burst 200 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics

import httpx
import redis

from backends import LOAD_SETTINGS
from procstat import children_of, usage
from service.harness import private_backends, running_stack


async def burst(url: str, size: int, one_client: bool, offset: int) -> None:
    async with httpx.AsyncClient(
        base_url=url, timeout=120, limits=httpx.Limits(max_connections=size)
    ) as client:

        def headers(i: int) -> dict[str, str]:
            return {"X-Forwarded-For": "198.51.100.7" if one_client else f"10.{i // 250}.{i % 250}.1"}

        replies = await asyncio.gather(
            *(
                client.post(
                    "/v1/download/initiate", json={"file_ids": [10_000 + offset + i]}, headers=headers(i)
                )
                for i in range(size)
            )
        )
    codes = {reply.status_code for reply in replies}
    assert codes == {202}, codes


def api_cpu_s(pid: int) -> float:
    return usage(pid, children_of()).cpu_s


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--burst", type=int, action="append", help="concurrent initiates (repeatable)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sizes = args.burst or [100, 200]
    settings = {
        **LOAD_SETTINGS,
        "PER_CLIENT_MAX_ACTIVE_JOBS": "100000",  # on, and never reached: the claim path is what costs
        "TRUSTED_PROXIES": "127.0.0.1/32",  # X-Forwarded-For names the client
        "DEDUPE_WINDOW_S": "0",
        "LOG_LEVEL": "warning",
    }
    with private_backends("bench-claim-", "delineate-bench", settings=settings) as backends:
        env = backends.env()
        with running_stack(env, backends.home / "logs", workers=0) as stack:
            conn = redis.Redis.from_url(env["REDIS_URL"])
            pid = stack.api.process.pid
            offset = 0
            asyncio.run(burst(stack.url, 20, True, offset))  # warm-up: connections, script cache
            print(f"{'burst':>6} {'clients':>8} {'API CPU s (median)':>19} {'Redis cmds/initiate':>20}")
            for size in sizes:
                results = {}
                for one_client in (True, False):
                    cpu, commands = [], []
                    for _ in range(args.rounds):
                        offset += size
                        conn.config_resetstat()
                        before = api_cpu_s(pid)
                        asyncio.run(burst(stack.url, size, one_client, offset))
                        cpu.append(api_cpu_s(pid) - before)
                        stats = conn.info("commandstats")
                        commands.append(
                            sum(v["calls"] for k, v in stats.items() if k != "cmdstat_config|resetstat")
                        )
                    results[one_client] = statistics.median(cpu)
                    label = "1" if one_client else str(size)
                    per = statistics.median(commands) / size
                    print(f"{size:>6} {label:>8} {results[one_client]:>19.2f} {per:>20.1f}")
                print(f"{'':>6} ratio one/many: {results[True] / max(results[False], 0.01):.1f}")


if __name__ == "__main__":
    main()
