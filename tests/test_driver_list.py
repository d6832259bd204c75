"""`edge-agent --help`'s cached driver list: read once, read again when what is installed changes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.test_registry import _fake_dist

ROOT = Path(__file__).resolve().parents[1]


def _family(name: str, drivers: list[str]) -> str:
    entries = ", ".join(f"DriverEntry({d!r}, 'x:Y')" for d in drivers)
    return textwrap.dedent(f"""
        from drivers.family import DriverEntry, DriverFamily
        FAMILY = DriverFamily({name!r}, "test family", ({entries},))
        """)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir()
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]),
            "XDG_CACHE_HOME": str(tmp_path / "cache")}


def helped(env: dict[str, str]) -> tuple[str, set[str]]:
    """(the help's driver sentences, modules imported) of `python -X importtime -m agent --help`."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "agent", "--help"], capture_output=True,
                       text=True, timeout=60, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    mods = {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    text = " ".join(r.stdout.split())
    return text[text.index("Drivers: "):text.index(" Exit codes")], mods


def test_the_second_help_reads_no_entry_point(env: dict[str, str]) -> None:
    first, mods = helped(env)
    assert "drivers.registry" in mods and "importlib.metadata" not in mods  # a child read it (edge_common/installed.py)
    assert first.startswith("Drivers: nmea, pms5003, sds011, modbus,") and "acme_th1 (edge-agent-thermo)" in first
    second, mods = helped(env)
    assert second == first
    assert not {"drivers.registry", "drivers.family", "importlib.metadata"} & mods, sorted(mods)


def test_an_installed_or_changed_plugin_is_listed_at_once(env: dict[str, str]) -> None:
    site = Path(env["PYTHONPATH"].split(os.pathsep)[0])
    before, _ = helped(env)
    assert "acme_one" not in before
    _fake_dist(site, "acme_dist", {"acme": "acme_family:FAMILY"}, {"acme_family": _family("acme", ["acme_one"])})
    installed, mods = helped(env)  # a new .dist-info changed the directory's mtime
    assert "drivers.registry" in mods
    assert installed.endswith("acme_one (acme_dist), acme_th1 (edge-agent-thermo).")
    module = site / "acme_family.py"
    module.write_text(_family("acme", ["acme_one", "acme_two"]))  # an editable plugin's descriptor edited
    st = module.stat()
    os.utime(module, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a coarse clock still sees it
    changed, _ = helped(env)
    assert changed.endswith("acme_one (acme_dist), acme_two (acme_dist), acme_th1 (edge-agent-thermo).")
    assert helped(env)[0] == changed


def test_a_broken_plugin_is_never_cached(env: dict[str, str]) -> None:
    site = Path(env["PYTHONPATH"].split(os.pathsep)[0])
    _fake_dist(site, "acme_broken", {"acme": "acme_broken:FAMILY"}, {"acme_broken": "raise RuntimeError('no libacme')\n"})
    for _ in range(2):
        text, mods = helped(env)
        assert "Plugins not used: driver plugin 'acme' (from acme_broken) is not used: RuntimeError: no libacme" in text
        assert "drivers.registry" in mods
    assert not (Path(env["XDG_CACHE_HOME"]) / "edge-agent" / "drivers-help.json").exists()


def test_an_unwritable_cache_only_costs_the_listing(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    env["XDG_CACHE_HOME"] = str(tmp_path / "file")  # not a directory: the cache cannot be made
    for _ in range(2):
        text, mods = helped(env)
        assert text.startswith("Drivers: nmea,") and "drivers.registry" in mods


def test_only_the_standard_library_goes_unwatched() -> None:
    from agent.cli.driver_list import _stdlib

    lib = os.path.dirname(os.__file__)
    assert _stdlib(f"{lib}/json/__init__.py")
    # an interpreter without a venv keeps site-packages below the stdlib: plugins' files are watched
    assert not _stdlib(f"{lib}/site-packages/acme_family.py")
    assert not _stdlib(f"{lib}/dist-packages/acme_family.py")
    assert not _stdlib(str(ROOT / "drivers" / "nmea" / "__init__.py"))
