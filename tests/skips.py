"""A pytest plugin: one line at the end of a run naming the suites skipped for a missing binary.

`-ra` lists every skipped test, and a laptop without nginx or prometheus skips dozens: the
line says which binaries to install (`.ci/run` installs them all) and which suites went
unproven without them. tests/conftest.py loads it; tests/test_skips.py runs it.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

# The tail of require_binary's skip message (tests/support.py): how the summary finds those skips.
MISSING_BINARY = " is not installed (.ci/run installs it)"


def missing_binaries(reports: list[pytest.TestReport]) -> dict[str, set[str]]:
    """binary -> the test files (suites) that skipped because it is missing."""
    suites: dict[str, set[str]] = defaultdict(set)
    for report in reports:
        if isinstance(report.longrepr, tuple | list) and MISSING_BINARY in str(report.longrepr[2]):
            binary = str(report.longrepr[2]).removeprefix("Skipped: ").split(MISSING_BINARY)[0]
            suites[binary].add(report.nodeid.split("::")[0])
    return suites


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    suites = missing_binaries(terminalreporter.stats.get("skipped", []))
    if suites:
        named = "; ".join(f"{binary}: {', '.join(sorted(files))}" for binary, files in sorted(suites.items()))
        terminalreporter.write_line(f"suites skipped for a missing binary: {named}", yellow=True, bold=True)
