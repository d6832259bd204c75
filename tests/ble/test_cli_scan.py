"""`edge-agent scan ble` as a subprocess against the scripted BlueZ."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from tests.ble.conftest import agent_env
from tests.support import ble_vectors as v
from tests.support.bluez import JBD_SERVICE, NUS_SERVICE, DBusDaemon, ScriptedBlueZ

RUUVI = "C7:F5:2A:A1:B2:C3"
IBEACON = "00:11:22:33:44:55"
BMS = "F0:0D:12:34:56:78"
VESC = "E4:5F:01:AA:BB:01"
JBD = "A4:C1:37:00:11:22"


class Room:
    """Devices advertising over and over while the scan runs."""

    def __init__(self, bz: ScriptedBlueZ) -> None:
        self.bz = bz
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.bz.advertise(RUUVI, name="Ruuvi B2C3", rssi=-48, manufacturer_data={0x0499: v.RUUVI_DF5_VALID})
            self.bz.advertise(v.BTHOME_ENC_MAC, rssi=-70, service_data={v.BTHOME_UUID: v.BTHOME_ENCRYPTED})
            self.bz.advertise(IBEACON, rssi=-80, manufacturer_data={0x004C: b"\x02\x15" + bytes(21)})
            self.bz.advertise(BMS, name="BMS-12", rssi=-60, service_uuids=(NUS_SERVICE,))
            self.bz.advertise(VESC, name="VESC BLE UART", rssi=-62, service_uuids=(NUS_SERVICE,))
            self.bz.advertise(JBD, name="xiaoxiang BMS", rssi=-64, service_uuids=(JBD_SERVICE,))
            self._stop.wait(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._t.join(5)


def scan(dbus: DBusDaemon, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**__import__("os").environ, **agent_env(dbus), "EDGE_AGENT_CONFIG": "/nonexistent/agent.toml"}
    return subprocess.run([sys.executable, "-m", "agent", "scan", "ble", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_scan_lists_devices_drivers_and_samples(
    dbus: DBusDaemon, bluez_factory: Callable[..., ScriptedBlueZ], tmp_path: Path
) -> None:
    bz = bluez_factory()
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[gateway]\nid = "gw"\n[[devices]]\nid = "a101-enc"\ndriver = "bthome"\n'
                   f'address = "{v.BTHOME_ENC_MAC}"\nkey = "{v.BTHOME_KEY}"\n')
    room = Room(bz)
    try:
        plain = scan(dbus, "--seconds", "2", "--json")
        keyed = scan(dbus, "--seconds", "2", "--json", "--config", str(cfg))
        human = scan(dbus, "--seconds", "2")
    finally:
        room.stop()
    assert plain.returncode == 0, plain.stderr
    devs = {d["address"]: d for d in json.loads(plain.stdout)["devices"]}
    assert set(devs) == {RUUVI, v.BTHOME_ENC_MAC, IBEACON, BMS, VESC, JBD}
    assert devs[RUUVI]["driver"] == "ruuvi" and devs[RUUVI]["rssi"] == -48 and devs[RUUVI]["name"] == "Ruuvi B2C3"
    assert devs[RUUVI]["sample"]["temperature"] == 24.3
    assert devs[v.BTHOME_ENC_MAC]["driver"] == "bthome" and devs[v.BTHOME_ENC_MAC]["sample"] is None
    assert devs[v.BTHOME_ENC_MAC]["note"].startswith("cannot decode")
    assert devs[IBEACON]["driver"] is None and devs[IBEACON]["manufacturer_ids"] == ["0x004c"]
    assert devs[BMS]["driver"] == "ble_nus"
    assert devs[VESC]["driver"] == "vesc" and devs[VESC]["note"].startswith("VESC over BLE")
    assert devs[JBD]["driver"] == "jbd_bms" and "FF00" in devs[JBD]["note"]
    assert next(iter(devs)) == RUUVI  # strongest known device first
    assert keyed.returncode == 0, keyed.stderr
    enc = {d["address"]: d for d in json.loads(keyed.stdout)["devices"]}[v.BTHOME_ENC_MAC]
    assert enc["configured_as"] == "a101-enc"
    assert enc["sample"]["temperature"] == 25.06 and enc["sample"]["humidity"] == 50.55
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    assert lines[0].split() == ["ADDRESS", "RSSI", "NAME", "DRIVER", "CONFIGURED"]
    assert lines[1].startswith(RUUVI)
    assert lines[2].startswith("    temperature=24.3 °C, humidity=")  # the sample under its row, with units
    assert max(len(line) for line in lines) <= 80
    assert bz.session_count() == 0  # each scan stopped its discovery


def test_scan_without_bluetoothd_fails_clearly(dbus: DBusDaemon) -> None:
    res = scan(dbus, "--seconds", "1")
    assert res.returncode == 1
    assert "BLE scanning failed" in res.stderr and "bluetoothd" in res.stderr
