"""Scanner modes and the self-healing ladder against the scripted bluetoothd (agent as a subprocess)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support import ble_vectors as v
from tests.support.agentproc import AgentProcess
from tests.support.bluez import ScriptedBlueZ
from tests.support.broker import Broker
from tests.support.mqtt import Subscriber
from tests.support.wait import wait_until

RUUVI = "C7:F5:2A:A1:B2:C3"
BTHOME = "A4:C1:38:00:00:01"


def ruuvi_device(expected: str = "60s") -> str:
    return f"""
[[devices]]
id = "a101-ruuvi"
driver = "ruuvi"
address = "{RUUVI}"
expected_interval = "{expected}"
"""


class Beacon:
    """A RuuviTag advertising a new measurement every `period` seconds in a thread."""

    def __init__(self, bz: ScriptedBlueZ, period: float = 0.1) -> None:
        self.bz, self.period = bz, period
        self.seq = 0
        self.heard: list[int] = []  # seqs BlueZ passed on to clients
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.seq += 1
            frame = v.ruuvi_df5(20.0, 40.0, 1000.0, self.seq, RUUVI)
            try:
                if self.bz.advertise(RUUVI, name="Ruuvi B2C3", manufacturer_data={0x0499: frame}):
                    self.heard.append(self.seq)
            except Exception:  # bluetoothd restarting under us
                pass
            self._stop.wait(self.period)

    def stop(self) -> None:
        self._stop.set()
        self._t.join(5)


@pytest.fixture
def sub(broker: Broker) -> Iterator[Subscriber]:
    s = Subscriber(broker.host, broker.port, "edge/gw-test/#")
    yield s
    s.close()


def health(sub: Subscriber) -> dict[str, Any]:
    msgs = sub.on("/health")
    return msgs[-1].json() if msgs else {}


def seqs(sub: Subscriber) -> list[int]:
    return [r["values"]["measurement_sequence"] for r in sub.readings()]


def assert_in_order_without_duplicates(sub: Subscriber) -> None:
    got = seqs(sub)
    assert got == sorted(set(got)), "readings duplicated or out of order"
    assert [r["seq"] for r in sub.readings()] == list(range(1, len(got) + 1))


def test_passive_scanning_when_bluez_allows_it(
    bluez_factory: Callable[..., ScriptedBlueZ], ble_agent: Callable[..., AgentProcess], sub: Subscriber
) -> None:
    bz = bluez_factory(experimental=True)
    agent = ble_agent(ruuvi_device() + f"""
[[devices]]
id = "a101-bthome"
driver = "bthome"
address = "{BTHOME}"
""", uplink='health_interval = "1s"')
    agent.wait_log("BLE scanner running: passive", timeout=20)
    wait_until(lambda: bool(bz.active_monitors()), 10, "monitor activated")
    assert sorted(bz.active_monitors()[0]) == [(0, 0x16, b"\xd2\xfc"), (0, 0xFF, b"\x99\x04")]
    assert not bz.discovering and bz.count_calls("StartDiscovery") == 0
    assert bz.advertise(RUUVI, manufacturer_data={0x0499: v.RUUVI_DF5_VALID})
    assert bz.advertise(BTHOME, service_data={v.BTHOME_UUID: v.BTHOME_PLAIN})
    # Something no configured family matches never leaves BlueZ in passive mode.
    assert not bz.advertise("00:11:22:33:44:55", manufacturer_data={0x004C: b"\x02\x15" + bytes(21)})
    sub.wait_for(lambda: len(sub.readings()) == 2, 20, "2 readings")
    sub.wait_for(lambda: health(sub).get("ble", {}).get("mode") == "passive", 10, "status: passive")
    assert health(sub)["ble"]["passive_refused"] is None
    assert agent.terminate() == 0


def test_passive_refused_falls_back_to_active_and_says_so(
    bluez_factory: Callable[..., ScriptedBlueZ], ble_agent: Callable[..., AgentProcess], sub: Subscriber
) -> None:
    bz = bluez_factory(experimental=False)
    agent = ble_agent(ruuvi_device(), ble='scanning_mode = "passive"', uplink='health_interval = "1s"')
    agent.wait_log("BLE scanner running: active", timeout=20)
    assert "BlueZ refused passive scanning" in agent.output()
    assert "--experimental" in agent.output()
    wait_until(lambda: bz.discovering, 10, "active discovery")
    assert bz.count_calls("RegisterMonitor") == 0  # the manager interface is absent: UnknownMethod
    assert bz.advertise(RUUVI, manufacturer_data={0x0499: v.RUUVI_DF5_VALID})
    sub.wait_for(lambda: len(sub.readings()) == 1, 20, "reading")
    sub.wait_for(lambda: health(sub).get("ble", {}).get("mode") == "active", 10, "status: active")
    st = health(sub)["ble"]
    assert st["requested_mode"] == "passive" and "--experimental" in st["passive_refused"]
    assert agent.terminate() == 0


def test_recovers_after_bluetoothd_restarts(
    bluez_factory: Callable[..., ScriptedBlueZ], ble_agent: Callable[..., AgentProcess], sub: Subscriber
) -> None:
    bz = bluez_factory()
    agent = ble_agent(ruuvi_device(), uplink='health_interval = "1s"')
    agent.wait_log("BLE scanner running", timeout=20)
    beacon = Beacon(bz)
    try:
        sub.wait_for(lambda: len(sub.readings()) >= 5, 20, "readings before the restart")
        for n in (1, 2):
            bz.restart(down_for=0.5)
            agent.wait_log("bluetoothd left the bus", count=n)
            agent.wait_log("bluetoothd is back on the bus", count=n)
            before = beacon.seq
            sub.wait_for(lambda b=before: bool(seqs(sub)) and max(seqs(sub)) > b, 20, f"readings after restart {n}")
            assert bz.session_count() == 1  # exactly one discovery session again, on the new daemon
        # Health counts both faults and both recoveries (the first advert after each proves it).
        sub.wait_for(lambda: health(sub).get("ble", {}).get("recoveries") == 2, 20, "two recoveries in health")
        print("DBG", health(sub).get("ble"))
        assert health(sub)["ble"]["faults"] == 2
    finally:
        beacon.stop()
    assert_in_order_without_duplicates(sub)
    assert agent.terminate() == 0
    assert "never retrieved" not in agent.output()  # dbus-fast's failed writes on the dropped bus: DEBUG


def test_in_progress_at_start_restarts_the_scanner(
    bluez_factory: Callable[..., ScriptedBlueZ], ble_agent: Callable[..., AgentProcess], sub: Subscriber
) -> None:
    bz = bluez_factory()
    bz.fail_next_start(2, "org.bluez.Error.InProgress")
    agent = ble_agent(ruuvi_device(), ble='scanning_mode = "active"')
    agent.wait_log("BLE scanner running", timeout=20)
    out = agent.output()
    assert "org.bluez.Error.InProgress" in out and "restarting the scanner" in out
    assert "power-cycling the adapter" in out  # the second failure climbed the ladder
    assert bz.count_calls("StartDiscovery") == 3
    assert bz.advertise(RUUVI, manufacturer_data={0x0499: v.RUUVI_DF5_VALID})
    sub.wait_for(lambda: len(sub.readings()) == 1, 20, "reading")
    assert agent.terminate() == 0


def test_stuck_discovery_silence_restart_then_power_cycle(
    bluez_factory: Callable[..., ScriptedBlueZ], ble_agent: Callable[..., AgentProcess], sub: Subscriber
) -> None:
    bz = bluez_factory()
    agent = ble_agent(ruuvi_device(expected="2s"), ble='scanning_mode = "active"', uplink='health_interval = "1s"')
    agent.wait_log("BLE scanner running", timeout=20)
    beacon = Beacon(bz)
    try:
        sub.wait_for(lambda: len(sub.readings()) >= 3, 20, "readings before the fault")
        bz.stick()  # bluez#807: discovery keeps "running" but finds nothing
        agent.wait_log("restarting the scanner", timeout=20)
        agent.wait_log("power-cycling the adapter", timeout=20)
        agent.wait_log("power-cycled", timeout=20)
        agent.wait_log("BLE scanner recovered", timeout=20)
        before = beacon.seq
        sub.wait_for(lambda: max(seqs(sub)) > before, 20, "readings after the power-cycle")
        out = agent.output()
        assert out.index("restarting the scanner") < out.index("power-cycling the adapter") < out.index("recovered")
        assert "unhealthy" not in out
        sub.wait_for(lambda: health(sub).get("ble", {}).get("recoveries") == 1, 10, "status after recovery")
        st = health(sub)["ble"]
        assert st["healthy"] is True and st["state"] == "scanning" and st["power_cycles"] == 1
    finally:
        beacon.stop()
    assert_in_order_without_duplicates(sub)
    assert agent.terminate() == 0


def test_adapter_that_cannot_be_powered_reports_unhealthy_then_heals(
    bluez_factory: Callable[..., ScriptedBlueZ], ble_agent: Callable[..., AgentProcess], sub: Subscriber
) -> None:
    bz = bluez_factory()
    agent = ble_agent(ruuvi_device(expected="2s"), ble='scanning_mode = "active"', uplink='health_interval = "1s"')
    agent.wait_log("BLE scanner running", timeout=20)
    bz.block_power = True
    bz.power(False)  # rfkill: off, and Powered cannot be set back
    agent.wait_log("adapter powered off; restarting the scanner", timeout=20)
    agent.wait_log("No powered Bluetooth adapters", timeout=20)
    agent.wait_log("Blocked through rfkill", timeout=20)
    agent.wait_log("BLE unhealthy", timeout=20)
    sub.wait_for(lambda: health(sub).get("ble", {}).get("healthy") is False, 10, "unhealthy in status")
    assert "power-cycle" in health(sub)["ble"]["unhealthy_reason"]
    bz.block_power = False  # rfkill unblocked: the next power-cycle succeeds
    beacon = Beacon(bz)
    try:
        agent.wait_log("BLE scanner healthy again", timeout=60)
    finally:
        beacon.stop()
    sub.wait_for(lambda: health(sub).get("ble", {}).get("healthy") is True, 10, "healthy in status")
    assert bz.powered
    assert agent.terminate() == 0
