"""The end-of-run line naming suites skipped for a missing binary (tests/skips.py), on a real run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

SUITE = """
from tests.support import require_binary

def test_needs_it():
    require_binary("delineate-no-such-binary")

def test_needs_it_too():
    require_binary("delineate-no-such-binary")

def test_needs_nothing():
    pass
"""


def run_pytest(tmp_path: Path, *args: str) -> str:
    """pytest on a two-file suite in a fresh directory, CI unset (so a missing binary skips)."""
    (tmp_path / "test_needs_binary.py").write_text(SUITE)
    (tmp_path / "test_other.py").write_text("def test_fine():\n    pass\n")
    env = {k: v for k, v in os.environ.items() if k not in {"CI", "PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER"}}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.skips",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            *args,
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.parametrize(
    "workers", [pytest.param([], id="serial"), pytest.param(["-n", "2"], id="xdist", marks=pytest.mark.slow)]
)
def test_a_run_ends_naming_the_missing_binary_and_the_suites_it_skipped(tmp_path, workers):
    lines = run_pytest(tmp_path, *workers).splitlines()
    assert "suites skipped for a missing binary: delineate-no-such-binary: test_needs_binary.py" in lines
    assert "2 skipped" in lines[-1]
