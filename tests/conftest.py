"""Fixtures: a private Redis and SeaweedFS per session, the real API and worker as processes.

Slow scenarios are time-compressed through settings (delays of a few hundred ms), never by
weakening what is checked.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from service import embedded
from tests.procs import LARGE_FILE_BYTES, LARGE_FILE_ID, TEST_BUCKET, Stack, running_stack


def _redis_binary() -> str:
    return shutil.which("redis-server") or embedded.redis_binary()


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("delineate")


@pytest.fixture(scope="session")
def s3_server(session_dir: Path) -> Iterator[embedded.Server]:
    server = embedded.start_seaweed(session_dir / "s3")
    client = embedded.s3_client(server.url, embedded.DEV_ACCESS_KEY, embedded.DEV_SECRET_KEY)
    embedded.seed(client, TEST_BUCKET)
    client.put_object(
        Bucket=TEST_BUCKET, Key=f"downloads/{LARGE_FILE_ID}.zip", Body=os.urandom(LARGE_FILE_BYTES)
    )
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server: embedded.Server):
    return embedded.s3_client(s3_server.url, embedded.DEV_ACCESS_KEY, embedded.DEV_SECRET_KEY)


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[..., embedded.Server]]:
    """Start private Redis servers for one test; all stopped after it."""
    servers: list[embedded.Server] = []

    def start(**kwargs: object) -> embedded.Server:
        server = embedded.start_redis(tmp_path / f"redis{len(servers)}", binary=_redis_binary(), **kwargs)  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def base_env(redis_url: str, s3_url: str, **overrides: str) -> dict[str, str]:
    """Environment for API/worker processes: fast, time-compressed defaults for tests."""
    fast = {
        "S3_MAX_ATTEMPTS": "2",
        "DOWNLOAD_DELAY_MIN_MS": "100",
        "DOWNLOAD_DELAY_MAX_MS": "300",
        "RATE_LIMIT_MAX_REQUESTS": "100000",
        "JOB_RETRY_BASE_S": "1",
        "WORKER_HEARTBEAT_S": "1",
        "WORKER_MAINTENANCE_S": "2",
        "LOG_FORMAT": "json",
        "DEDUPE_WINDOW_S": "0",  # tests repeat identical requests on purpose; test_idempotency turns it on
    }
    return embedded.stack_env(redis_url, s3_url, TEST_BUCKET, **{**fast, **overrides})


@pytest.fixture(scope="session")
def stack(session_dir: Path, s3_server: embedded.Server) -> Iterator[Stack]:
    """The shared stack: one API and one worker with fast downloads."""
    redis_server = embedded.start_redis(session_dir / "redis", binary=_redis_binary())
    env = base_env(redis_server.url, s3_server.url)
    with running_stack(env, session_dir / "logs") as running:
        yield running
    redis_server.stop()


@pytest.fixture
def make_stack(
    tmp_path: Path, s3_server: embedded.Server, redis_factory: Callable[..., embedded.Server]
) -> Iterator[Callable[..., Stack]]:
    """A private stack with its own Redis and settings, for tests that change behaviour."""
    with ExitStack() as exits:

        def make(workers: int = 1, **overrides: str) -> Stack:
            redis_server = redis_factory()
            env = base_env(redis_server.url, s3_server.url, **overrides)
            return exits.enter_context(running_stack(env, tmp_path / "logs", workers=workers))

        yield make
