"""The driver registry: entry points `edge_agent.drivers`, broken and conflicting plugins, lazy loading."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import drivers
from drivers.family import DriverEntry, DriverFamily
from drivers.registry import DISTRIBUTION, GROUP, Registry, registry

ROOT = Path(__file__).resolve().parents[1]
BUILTIN = ["nmea", "pms5003", "sds011", "modbus", "senseair_s8", "lines", "ruuvi", "bthome", "xiaomi", "aranet4",
           "ble_nus", "vesc", "jbd_bms", "can", "obd2", "sim"]


def test_builtin_families_come_from_the_entry_points_in_order() -> None:
    reg = registry()
    assert [n for n, r in reg.drivers.items() if r.dist == DISTRIBUTION] == BUILTIN
    assert drivers.KNOWN_DRIVERS == frozenset(BUILTIN)
    from drivers.sim import FAMILIES

    # every built-in but sim itself simulates, first; plugins' simulated drivers follow
    assert FAMILIES[:len(BUILTIN) - 1] == tuple(n for n in BUILTIN if n != "sim")
    assert set(FAMILIES[len(BUILTIN) - 1:]) == {n for n, r in reg.drivers.items() if not r.builtin and r.entry.simulator}


def _fake_dist(site: Path, name: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """A distribution as pip installs it: a .dist-info with entry_points.txt, and its modules."""
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[{GROUP}]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    for mod, src in modules.items():
        (site / f"{mod}.py").write_text(textwrap.dedent(src))


@pytest.fixture
def plugin_site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    _fake_dist(site, "acme_broken", {"acme": "acme_broken:FAMILY"},
               {"acme_broken": "raise RuntimeError('acme needs libacme.so')\n"})
    _fake_dist(site, "nmea_clone", {"nmea2": "nmea_clone:FAMILY"}, {"nmea_clone": """
        from drivers.family import DriverEntry, DriverFamily
        FAMILY = DriverFamily("nmea2", "a second nmea", (DriverEntry("nmea", "nmea_clone:Nope"),))
        """})
    _fake_dist(site, "not_a_family", {"oops": "not_a_family:FAMILY"}, {"not_a_family": "FAMILY = 42\n"})
    return site


def _cli(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=60,
                          env=env, cwd=ROOT)


def test_broken_and_conflicting_plugins_never_stop_the_builtins(plugin_site: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[gateway]\nid = "gw"\n[[devices]]\nid = "gnss"\ndriver = "nmea"\nport = "/dev/ttyUSB0"\n')
    r = _cli(plugin_site, "config", "check", str(cfg))
    assert r.returncode == 0, r.stderr
    # each left-out plugin is named once, with its distribution and the reason
    assert "driver plugin 'acme' (from acme_broken) is not used: RuntimeError: acme needs libacme.so" in r.stderr
    assert ("driver plugin 'nmea2' (from nmea_clone) is not used: driver 'nmea' is already provided by "
            "built-in family 'nmea'") in r.stderr
    assert "driver plugin 'oops' (from not_a_family) is not used: it names a int, not a" in r.stderr
    help_text = " ".join(_cli(plugin_site, "--help").stdout.split())  # --help names them too
    assert "Plugins not used: driver plugin 'acme' (from acme_broken) is not used: RuntimeError" in help_text


def test_a_device_of_a_broken_plugin_is_a_config_error_naming_it(plugin_site: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[gateway]\nid = "gw"\n[[devices]]\nid = "a"\ndriver = "acme"\n'
                   '[[devices]]\nid = "gnss"\ndriver = "nmea"\nport = "/dev/ttyUSB0"\n')
    r = _cli(plugin_site, "config", "check", str(cfg))
    assert r.returncode == 78
    assert ("devices[0].driver: driver 'acme' is not available: driver plugin 'acme' (from acme_broken) is not "
            "used: RuntimeError: acme needs libacme.so (line 5)") in r.stderr + r.stdout
    assert "devices[1]" not in r.stderr + r.stdout


def test_registry_refuses_a_taken_name_and_registers_nothing_of_it() -> None:
    reg = Registry()
    reg.add(DriverFamily("a", "A", (DriverEntry("x", "m:X"),)))
    with pytest.raises(ValueError, match="driver 'x' is already provided by built-in family 'a'"):
        reg.add(DriverFamily("b", "B", (DriverEntry("y", "m:Y"), DriverEntry("x", "m:X"))))
    assert set(reg.drivers) == {"x"} and set(reg.families) == {"a"}
    reg.load("c", "third", lambda: DriverFamily("c", "C", (DriverEntry("x", "m:X"),)))
    assert reg.why_missing("x") is None  # x is still a's
    assert reg.problems["c"].startswith("driver plugin 'c' (from third) is not used: driver 'x' is already")


def test_no_ble_library_is_imported_without_a_ble_device(tmp_path: Path) -> None:
    """Lazy loading: the registry, config check and the serial drivers import neither bleak nor dbus_fast."""
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[gateway]\nid = "gw"\n[[devices]]\nid = "gnss"\ndriver = "nmea"\nport = "/dev/ttyUSB0"\n'
                   '[[devices]]\nid = "co2"\ndriver = "senseair_s8"\nport = "/dev/ttyUSB1"\n'
                   '[[devices]]\nid = "s"\ndriver = "sim"\nfamily = "ruuvi"\n')
    code = textwrap.dedent(f"""
        import sys
        from agent.config import load_config
        from drivers import driver_class
        cfg = load_config({str(cfg)!r}, check_files=False)
        for d in cfg.devices:
            driver_class(d.driver)
        print(sorted(m for m in sys.modules if m.split('.')[0] in ('bleak', 'dbus_fast', 'bleak_retry_connector')))
        print('drivers.ble.scanner' in sys.modules)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["[]", "False"]
