"""What the tests share besides processes (those are service.harness): the checkout, the test
bucket and its objects, the test stack's settings, and binaries a test needs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from service import harness
from tests.skips import MISSING_BINARY

ROOT = Path(__file__).resolve().parents[1]  # the checkout: configs, docs and scripts the tests read
TEST_BUCKET = "delineate-test"
# Seeded in the test bucket: the ten demo ids plus one large object for the multipart zip.
LARGE_FILE_ID = 99_991
LARGE_FILE_BYTES = 9 * 1024 * 1024 + 123


def require_binary(name: str) -> str:
    """The binary's path; a missing one skips on a laptop but fails in CI (CI=true)."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if path:
        return path
    message = name + MISSING_BINARY
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


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
        "WORKER_DRAIN_S": "5",  # a stack stopped mid-job hands it back well within Proc.stop's grace
        "LOG_FORMAT": "json",
        "DEDUPE_WINDOW_S": "0",  # tests repeat identical requests on purpose; test_idempotency turns it on
    }
    return harness.stack_env(redis_url, s3_url, TEST_BUCKET, **{**fast, **overrides})
