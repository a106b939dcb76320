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

from service import harness
from service.harness import Stack, running_stack
from tests.skips import pytest_terminal_summary as summarise_skips
from tests.support import LARGE_FILE_BYTES, LARGE_FILE_ID, TEST_BUCKET, base_env
from tests.tracing import OtlpReceiver, running_receiver


def _redis_binary() -> str:
    return shutil.which("redis-server") or harness.redis_binary()


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("delineate")


@pytest.fixture(scope="session")
def s3_server(session_dir: Path) -> Iterator[harness.Server]:
    server = harness.start_seaweed(session_dir / "s3")
    client = harness.s3_client(server.url, harness.DEV_ACCESS_KEY, harness.DEV_SECRET_KEY)
    harness.seed(client, TEST_BUCKET)
    client.put_object(
        Bucket=TEST_BUCKET, Key=f"downloads/{LARGE_FILE_ID}.zip", Body=os.urandom(LARGE_FILE_BYTES)
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server: harness.Server):
    return harness.s3_client(s3_server.url, harness.DEV_ACCESS_KEY, harness.DEV_SECRET_KEY)


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[..., harness.Server]]:
    """Start private Redis servers for one test; all stopped after it, asserting clean exits."""
    servers: list[harness.Server] = []
    with ExitStack() as stops:

        def start(**kwargs: object) -> harness.Server:
            server = harness.start_redis(tmp_path / f"redis{len(servers)}", binary=_redis_binary(), **kwargs)  # type: ignore[arg-type]
            servers.append(server)
            stops.callback(server.stop)
            return server

        yield start


@pytest.fixture(scope="session")
def stack(session_dir: Path, s3_server: harness.Server) -> Iterator[Stack]:
    """The shared stack: one API and one worker with fast downloads."""
    redis_server = harness.start_redis(session_dir / "redis", binary=_redis_binary())
    try:
        with running_stack(base_env(redis_server.url, s3_server.url), session_dir / "logs") as running:
            yield running
    finally:
        redis_server.stop()


@pytest.fixture
def make_stack(
    tmp_path: Path, s3_server: harness.Server, redis_factory: Callable[..., harness.Server]
) -> Iterator[Callable[..., Stack]]:
    """A private stack with its own Redis and settings, for tests that change behaviour."""
    with ExitStack() as exits:

        def make(workers: int = 1, **overrides: str) -> Stack:
            redis_server = redis_factory()
            env = base_env(redis_server.url, s3_server.url, **overrides)
            return exits.enter_context(running_stack(env, tmp_path / "logs", workers=workers))

        yield make


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    """An OTLP/HTTP trace receiver for one test (`tests.tracing.traced_env` points a stack at it)."""
    with running_receiver() as receiver:
        yield receiver


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the figures drills measured (`record_property("figures", ...)`) after the run:
    with `-q` and xdist a passing test's own output is never shown. Then the suites skipped for a
    missing binary (tests/skips.py), as the last line."""
    figures = [
        f"{report.nodeid}: {value}"
        for report in terminalreporter.getreports("passed")
        for name, value in report.user_properties
        if name == "figures"
    ]
    if figures:
        terminalreporter.write_sep("-", "figures")
        for line in figures:
            terminalreporter.write_line(line)
    summarise_skips(terminalreporter)
