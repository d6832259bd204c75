"""Installable on a Pi: every runtime dependency resolves to binary wheels for 64-bit Raspberry Pi OS.

Asks the package index (pip's default one, or $PIP_INDEX_URL) what `pip install` would pick for
aarch64 Linux with the glibc of Bookworm (CPython 3.11, glibc 2.36) and Trixie (CPython 3.13,
glibc 2.41), with `--only-binary :all:`, so a dependency that would have to compile on the Pi
fails here. The machine's own pip configuration (local wheel folders, extra indexes, constraints)
is left out: only what the index serves counts. Skipped, with pip's words, when the index cannot
be reached. pip evaluates environment markers against this interpreter, not the target one.
32-bit armv7 (Pi Zero 2 W on a 32-bit OS): docs/DEPLOY.md.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.tags import Tag
from packaging.utils import canonicalize_name, parse_wheel_filename

REPO = Path(__file__).resolve().parents[1]
# (Python, newest glibc of that Raspberry Pi OS): manylinux_2_17 (= manylinux2014) up to it.
TARGETS = {"3.11": ("Bookworm", 36), "3.13": ("Trixie", 41)}
# pip's own words when it could not talk to the index (it then also says "from versions: none").
UNREACHABLE = re.compile(
    r"NewConnectionError|Max retries exceeded|Failed to establish a new connection|Name or service not known"
    r"|Temporary failure in name resolution|Network is unreachable|ConnectTimeout|ReadTimeout"
    r"|connection broken by|SSLError|ProxyError",
)


def runtime_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]]


def pip(*args: str) -> subprocess.CompletedProcess[str]:
    """pip of this interpreter with no configuration files and none of the machine's PIP_* extras."""
    keep = {"PIP_INDEX_URL", "PIP_CERT", "PIP_CLIENT_CERT", "PIP_TRUSTED_HOST", "PIP_PROXY"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k in keep}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pip", *args, "--retries", "1", "--timeout", "30"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def skip_if_unreachable(p: subprocess.CompletedProcess[str]) -> None:
    out = p.stdout + p.stderr
    if p.returncode != 0 and UNREACHABLE.search(out):
        lines = [ln for ln in out.splitlines() if UNREACHABLE.search(ln)]
        pytest.skip(f"package index unreachable, wheels not checked: {lines[0].strip()[:300]}")


@pytest.fixture(scope="module")
def index_reachable() -> None:
    p = pip("index", "versions", "pip")
    skip_if_unreachable(p)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("python", sorted(TARGETS))
def test_runtime_dependencies_have_aarch64_wheels(
    python: str, tmp_path: Path, index_reachable: None
) -> None:
    os_name, glibc = TARGETS[python]
    platforms = [f"manylinux_2_{m}_aarch64" for m in range(glibc, 16, -1)] + ["manylinux2014_aarch64"]
    requirements = runtime_requirements()
    report = tmp_path / "report.json"
    p = pip(
        "install", "--dry-run", "--ignore-installed", "--only-binary", ":all:",
        *(a for plat in platforms for a in ("--platform", plat)),
        "--python-version", python, "--implementation", "cp", "--target", str(tmp_path / "target"),
        "--report", str(report), "--quiet",
        *(str(r) for r in requirements),
    )  # fmt: skip
    skip_if_unreachable(p)
    assert p.returncode == 0, (
        f"Raspberry Pi OS {os_name} (CPython {python}, aarch64): not every dependency has a binary wheel, "
        f"so it would compile on the Pi:\n{p.stdout}{p.stderr}"
    )
    cp = "cp" + python.replace(".", "")
    supported = {
        Tag(interp, abi, plat)
        for plat in [*platforms, "any"]
        for interp in (cp, f"py{python[0]}", *(f"cp3{m}" for m in range(2, int(python[2:]) + 1)))
        for abi in (cp, "abi3", "none")
    }
    resolved: dict[str, str] = {}
    for item in json.loads(report.read_text())["install"]:
        filename = item["download_info"]["url"].rsplit("/", 1)[-1]
        assert filename.endswith(".whl"), filename
        name, _version, _build, tags = parse_wheel_filename(filename)
        assert tags & supported, f"{filename} does not fit CPython {python} on aarch64 glibc 2.{glibc}"
        resolved[name] = filename
    missing = {canonicalize_name(r.name) for r in requirements} - set(resolved)
    assert not missing, f"not in the resolution: {sorted(missing)}"
    compiled = sorted(f for f in resolved.values() if not f.endswith("-none-any.whl"))
    # the wheels with machine code, for the record (pytest -rA or a failure shows them)
    print(f"CPython {python} aarch64 ({os_name}): {len(resolved)} wheels, compiled: {compiled}")
