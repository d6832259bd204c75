"""End to end: the `can` driver in a real agent process, python-can's slcan on a pty, a simulated adapter, Mosquitto."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from drivers.can.protocol import SlcanFrame, load_dbc
from drivers.can.simulator import VEHICLE_DBC, SlcanAdapter
from tests.support.agentproc import AgentProcess, write_config
from tests.support.broker import Broker
from tests.support.cli import run_cli
from tests.support.mqtt import Subscriber
from tests.support.pty import PtyDevice
from tests.support.wait import wait_until


def pack(v: float, soc: float) -> SlcanFrame:
    m = load_dbc(VEHICLE_DBC).get_message_by_name("BMS_Pack")
    data = m.encode({"PackVoltage": v, "PackCurrent": -12.5, "StateOfCharge": soc, "BMS_State": "DISCHARGING"})
    return SlcanFrame(0x100, bytes(data), dlc=6)


# A motor frame: in the DBC but not among the device's `messages`, so skipped without a reading or an error.
FILLER = SlcanFrame(0xA0, bytes(8), dlc=8)


def scripted(frames: list[SlcanFrame]) -> Iterator[tuple[float, list[SlcanFrame]]]:
    """Each frame 10 ms after the previous one, then the other ECUs' traffic (the bus never falls silent)."""
    for i in itertools.count():
        yield i * 0.01, ([frames[i]] if i < len(frames) else [FILLER])


def device(port: str, extra: str = "") -> str:
    return f"""
        [[devices]]
        id = "ev-bus"
        driver = "can"
        port = "{port}"
        dbc = "{VEHICLE_DBC}"
        bitrate = 500000
        open_delay = 0
        min_interval = 0
        {extra}
        tags = {{ vehicle = "cargo-1" }}
        """


def values(sub: Subscriber) -> list[dict[str, Any]]:
    return [r["values"] for r in sub.readings() if r["device"] == "ev-bus"]


def errors(cfg: Path) -> dict[str, int]:
    rows = run_cli("devices", "--config", cfg, "--json").json()["devices"]
    return next(r for r in rows if r["id"] == "ev-bus")["errors"]  # type: ignore[no-any-return]


def test_can_bus_end_to_end_counts_bad_frames_survives_unplug_and_never_transmits(
        tmp_path: Path, broker: Broker, pty_factory: type[PtyDevice]) -> None:
    dev = pty_factory(link=tmp_path / "usb-CANable_slcan-if00")
    first = [pack(52.0 + i / 10, 80 - i / 2) for i in range(5)]
    adapter = SlcanAdapter(dev.master, frames=scripted(first)).start()
    cfg = write_config(tmp_path / "agent.toml", broker_port=broker.port,
                       devices=device(dev.port, 'messages = ["BMS_Pack"]'))
    sub = Subscriber(broker.host, broker.port, "edge/gw-test/#")
    agent = AgentProcess(cfg)
    try:
        agent.start_and_wait_port("ev-bus")
        expected = [{"pack_voltage": round(52.0 + i / 10, 2), "pack_current": -12.5,
                     "state_of_charge": 80 - i / 2, "bms_state": "DISCHARGING"} for i in range(5)]
        sub.wait_for(lambda: len(values(sub)) >= 5, 20, "5 readings from the bus")
        assert values(sub) == expected
        r0 = next(r for r in sub.readings() if r["device"] == "ev-bus")
        assert r0["driver"] == "can" and r0["tags"] == {"vehicle": "cargo-1"}
        # what a real bus and a flaky cable add: a garbled line, an id the DBC lacks, a short frame, noise
        dev.write(b"t10\rt5F04DEADBEEF\rt1003AABBCC\r")
        wait_until(lambda: errors(cfg) == {"malformed": 1, "unknown_id": 1, "dlc": 1}, 20, "errors counted")
        dev.write(b"\xff\xfe\x80\r")
        wait_until(lambda: errors(cfg).get("noise") == 1, 20, "noise counted")
        assert len(values(sub)) == 5
        # unplug: the link goes down; replug at the same by-id path: decoding resumes, nothing repeated
        adapter.stop()
        assert adapter.transmitted == 0 and set(adapter.commands) <= {"C", "S6", "", "L"}
        assert "L" in adapter.commands and "O" not in adapter.commands  # listen-only
        opened = agent.output().count("ev-bus: opened")
        dev.unplug()
        agent.wait_log("device ev-bus: link disconnected")
        dev.plug()
        second = [pack(51.0, 70.0), pack(50.9, 69.5)]
        adapter = SlcanAdapter(dev.master, frames=scripted(second)).start()
        agent.wait_log("ev-bus: opened", count=opened + 1, timeout=30)
        sub.wait_for(lambda: len(values(sub)) >= 7, 20, "2 readings after replug")
        assert values(sub)[5:] == [{"pack_voltage": 51.0, "pack_current": -12.5, "state_of_charge": 70.0,
                                    "bms_state": "DISCHARGING"},
                                   {"pack_voltage": 50.9, "pack_current": -12.5, "state_of_charge": 69.5,
                                    "bms_state": "DISCHARGING"}]
        seqs = [r["seq"] for r in sub.readings()]
        assert seqs == sorted(set(seqs))
        assert agent.terminate() == 0
        assert adapter.transmitted == 0
    finally:
        adapter.stop()
        agent.close()
        sub.close()


def test_live_bus_rate_limited_and_recovers_from_bus_off(tmp_path: Path, broker: Broker,
                                                         pty_factory: type[PtyDevice]) -> None:
    dev = pty_factory()
    adapter = SlcanAdapter(dev.master).start()  # the simulated EV at ~520 frames/s
    cfg = write_config(tmp_path / "agent.toml", broker_port=broker.port, devices=device(
        dev.port, 'messages = ["BMS_Pack", 0xA0]\nsignals = { VehicleSpeed = { min_interval = "500ms" } }\n'
                  'rename = { VehicleSpeed = "speed", StateOfCharge = "state_of_charge" }').replace(
        "min_interval = 0", 'min_interval = "1s"'))
    sub = Subscriber(broker.host, broker.port, "edge/gw-test/#")
    agent = AgentProcess(cfg)
    try:
        agent.start_and_wait_port("ev-bus")
        t0 = time.monotonic()
        sub.wait_for(lambda: sum("pack_voltage" in v for v in values(sub)) >= 3, 20, "3 pack readings")
        elapsed = time.monotonic() - t0
        vs = values(sub)
        packs = [v for v in vs if "pack_voltage" in v]
        speeds = [v["speed"] for v in vs if "speed" in v]
        # 100 Hz on the bus, at most one per second forwarded (speed: two per second)
        assert len(packs) <= elapsed + 2 and len(speeds) <= 2 * elapsed + 3
        assert {"pack_voltage", "pack_current", "state_of_charge", "bms_state"} == set(packs[0])
        assert set().union(*map(set, vs)) <= {"pack_voltage", "pack_current", "state_of_charge", "bms_state",
                                              "speed", "motor_speed", "motor_torque", "motor_current"}
        assert all(0 <= s <= 7.01 for s in speeds)
        # bus-off: the controller falls silent until the channel is re-initialised; the driver reopens it
        adapter.bus_off()
        agent.wait_log("ev-bus: bus silent: no frame for 5 s", timeout=30)
        agent.wait_log("ev-bus: opened", count=2, timeout=30)
        n = len(values(sub))
        sub.wait_for(lambda: len(values(sub)) >= n + 2, 20, "readings after bus-off recovery")
        assert not adapter.off and adapter.transmitted == 0
        assert agent.terminate() == 0
    finally:
        adapter.stop()
        agent.close()
        sub.close()
