"""Real processes for tests: the API and workers as `python -m service ...` children."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from service import embedded

ROOT = Path(__file__).resolve().parents[1]
TEST_BUCKET = "delineate-test"
# Seeded in the test bucket: the ten demo ids plus one large object for the multipart zip.
LARGE_FILE_ID = 99_991
LARGE_FILE_BYTES = 9 * 1024 * 1024 + 123


def require_binary(name: str) -> str:
    """The binary's path; a missing one skips on a laptop but fails in CI (CI=true)."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if path:
        return path
    message = f"{name} is not installed (.ci/run installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class Proc:
    """One child process with its log file; stopped with SIGTERM, then SIGKILL."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self, timeout_s: float = 15) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def spawn(name: str, args: list[str], env: dict[str, str], logdir: Path) -> Proc:
    logdir.mkdir(parents=True, exist_ok=True)
    log = logdir / f"{name}.log"
    handle = log.open("ab")
    process = subprocess.Popen(args, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
    return Proc(name, process, log)


@dataclass
class Stack:
    """A running API (and workers) against one Redis and one S3 bucket."""

    env: dict[str, str]
    url: str
    logdir: Path
    api: Proc
    workers: list[Proc] = field(default_factory=list)

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)  # type: ignore[arg-type]

    def add_worker(self, **env: str) -> Proc:
        worker = spawn(
            f"worker{len(self.workers)}",
            [sys.executable, "-m", "service", "worker"],
            {**self.env, **env},
            self.logdir,
        )
        self.workers.append(worker)
        return worker

    def stop(self) -> None:
        for proc in [self.api, *self.workers]:
            proc.stop()


def start_api(env: dict[str, str], logdir: Path, name: str = "api") -> tuple[Proc, str]:
    port = embedded.free_port()
    env = {**env, "PORT": str(port), "HOST": "127.0.0.1"}
    api = spawn(name, [sys.executable, "-m", "service", "api"], env, logdir)
    url = f"http://127.0.0.1:{port}"
    try:
        embedded.wait_until(
            lambda: httpx.get(f"{url}/health/live", timeout=1).status_code == 200, 30, name, api.process
        )
    except Exception:
        print(api.output())
        raise
    return api, url


@contextmanager
def running_stack(env: dict[str, str], logdir: Path, workers: int = 1) -> Iterator[Stack]:
    api, url = start_api(env, logdir)
    stack = Stack(env=env, url=url, logdir=logdir, api=api)
    for _ in range(workers):
        stack.add_worker()
    try:
        yield stack
    finally:
        stack.stop()
