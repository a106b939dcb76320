"""The end-of-run line naming suites skipped for a missing binary (tests/skips.py), on a real run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.skips import MISSING_BINARY
from tests.support import ROOT, require_binary

SUITE = """
import pytest

from tests.skips import MISSING_BINARY

def test_needs_it():
    pytest.skip("delineate-no-such-binary" + MISSING_BINARY)  # as require_binary words it

def test_needs_it_too():
    pytest.skip("delineate-no-such-binary" + MISSING_BINARY)

def test_needs_nothing():
    pass
"""


def run_pytest(tmp_path: Path, *args: str) -> str:
    """pytest on a two-file suite in a fresh directory, CI unset (so a missing binary skips)."""
    (tmp_path / "test_needs_binary.py").write_text(SUITE)
    (tmp_path / "test_other.py").write_text("def test_fine():\n    pass\n")
    env = {k: v for k, v in os.environ.items() if k not in {"CI", "PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER"}}
    env["PYTHONPATH"] = str(ROOT)
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # only what the run needs: quicker
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
    "workers",
    [
        pytest.param([], id="serial"),
        pytest.param(["-p", "xdist", "-n", "2"], id="xdist", marks=pytest.mark.slow),
    ],
)
def test_a_run_ends_naming_the_missing_binary_and_the_suites_it_skipped(tmp_path, workers):
    lines = run_pytest(tmp_path, *workers).splitlines()
    assert "suites skipped for a missing binary: delineate-no-such-binary: test_needs_binary.py" in lines
    assert "2 skipped" in lines[-1]


def test_require_binary_words_its_skip_as_the_summary_reads_it(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception) as skipped:
        require_binary("delineate-no-such-binary")
    assert skipped.value.msg == "delineate-no-such-binary" + MISSING_BINARY
