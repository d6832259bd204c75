"""The vehicle profile: GNSS, VESC, JBD BMS and CAN bus of one simulated EV agree with each other."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from drivers.vehicle import FAMILIES, SharedRide, source
from tests.support.agentproc import AgentProcess, write_config
from tests.support.broker import Broker
from tests.support.cli import run_cli
from tests.support.mqtt import Subscriber


def sample_ride(seconds: int) -> list[dict[str, dict[str, Any]]]:
    """Every family's decoded values once a second over `seconds` of one shared ride (a test clock)."""
    now = [0.0]
    ride = SharedRide(clock=lambda: now[0])
    srcs = {f: source(f, "test", ride) for f in FAMILIES}
    out = []
    for i in range(seconds):
        now[0] = float(i)
        row: dict[str, dict[str, Any]] = {}
        for fam, (chunks, proto) in srcs.items():
            merged: dict[str, Any] = {}
            for v in proto.feed(next(chunks)) + proto.flush():
                merged.update(v)
            row[fam] = merged
        out.append(row)
    assert all(dict(p.errors) == {} for _, p in srcs.values())
    return out


def test_the_four_devices_of_one_vehicle_agree_through_their_own_wire_formats() -> None:
    rows = sample_ride(130)  # two 65 s town cycles
    speeds = [r["nmea"]["speed"] for r in rows]
    assert max(speeds) == pytest.approx(7.0, abs=0.01) and min(speeds) == 0.0
    for r in rows:
        gnss, vesc, bms, bus = r["nmea"], r["vesc"], r["jbd_bms"], r["can"]
        # speed: GNSS (knots on the wire), VESC (eRPM through its geometry), CAN (km/h at 0.01)
        assert abs(gnss["speed"] - vesc["speed"]) < 0.005 and abs(gnss["speed"] - bus["speed"]) < 0.005
        # current: the controller's input current is the pack current the BMS measures (negative = discharging)
        assert bms["current"] == pytest.approx(-vesc["input_current"], abs=0.011)
        assert bus["pack_current"] == pytest.approx(vesc["input_current"], abs=0.051)
        # voltage and state of charge agree across the three within their resolutions
        assert abs(bms["voltage"] - bus["pack_voltage"]) < 0.1 and abs(vesc["input_voltage"] - bus["pack_voltage"]) < 0.1
        assert abs(bms["state_of_charge"] - bus["state_of_charge"]) <= 1.0
    # what the pack lost is what the controller counted: the BMS's remaining capacity fell by the
    # VESC's amp hours drawn minus those regenerated
    first, last = rows[0], rows[-1]
    used = (last["vesc"]["amp_hours"] - first["vesc"]["amp_hours"]
            - (last["vesc"]["amp_hours_charged"] - first["vesc"]["amp_hours_charged"]))
    fell = first["jbd_bms"]["remaining_capacity"] - last["jbd_bms"]["remaining_capacity"]
    assert used > 0.1 and fell == pytest.approx(used, abs=0.015)  # 10 mAh resolution of the BMS
    # the vehicle moved on the map by what the controller's tachometer says it drove
    assert rows[-1]["nmea"]["latitude"] != rows[0]["nmea"]["latitude"]
    assert last["vesc"]["distance"] == pytest.approx(sum(speeds), rel=0.03)


def test_vehicle_key_only_for_the_profile_families(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[gateway]\nid = "gw"\n[[devices]]\nid = "x"\ndriver = "sim"\nfamily = "pms5003"\n'
                   'vehicle = "cargo-1"\n')
    r = run_cli("config", "check", cfg)
    assert r.code == 78
    assert "devices[0].vehicle: family 'pms5003' has no vehicle profile (only nmea, vesc, jbd_bms, can)" in r.err


def test_vehicle_profile_end_to_end(tmp_path: Path, broker: Broker) -> None:
    devices = "".join(f"""
        [[devices]]
        id = "cargo-1-{part}"
        driver = "sim"
        family = "{fam}"
        vehicle = "cargo-1"
        interval = "200ms"
        tags = {{ vehicle = "cargo-1" }}
        """ for part, fam in (("gnss", "nmea"), ("motor", "vesc"), ("battery", "jbd_bms"), ("bus", "can")))
    cfg = write_config(tmp_path / "agent.toml", broker_port=broker.port, devices=devices)
    sub = Subscriber(broker.host, broker.port, "edge/gw-test/#")
    agent = AgentProcess(cfg).start()
    try:
        def by(dev: str) -> list[dict[str, Any]]:
            return [r for r in sub.readings() if r["device"] == dev]

        sub.wait_for(lambda: all(len(by(f"cargo-1-{p}")) >= 5 for p in ("gnss", "motor", "battery"))
                     and len(by("cargo-1-bus")) >= 8
                     and sum(r["values"]["speed"] > 1 for r in by("cargo-1-gnss")) >= 3, 30,
                     "readings from the four devices, the vehicle moving")
        gnss, motor, battery = by("cargo-1-gnss"), by("cargo-1-motor"), by("cargo-1-battery")
        assert {"latitude", "speed"} <= set(gnss[0]["values"])
        assert {"erpm", "speed", "input_current", "input_voltage"} <= set(motor[0]["values"])
        assert {"voltage", "current", "state_of_charge", "cell_voltage_1"} <= set(battery[0]["values"])
        assert {"pack_voltage", "state_of_charge"} <= set().union(*(r["values"] for r in by("cargo-1-bus")))
        # devices with the same interval sample on one wake-up of the shared timer grid: the GNSS and
        # the controller see the same instant of the ride, so their speeds agree
        pairs = [(g, m) for g in gnss for m in motor if abs(_t(g) - _t(m)) < 0.05]
        assert sum(g["values"]["speed"] > 0.5 for g, _ in pairs) >= 2
        # (under load the two tasks may run some ms apart: the ride's acceleration is at most 0.9 m/s²)
        assert all(abs(g["values"]["speed"] - m["values"]["speed"]) <= 0.9 * (abs(_t(g) - _t(m)) + 0.011) + 0.005
                   for g, m in pairs), pairs
        assert {r["tags"]["vehicle"] for r in sub.readings()} == {"cargo-1"}
        assert agent.terminate() == 0
    finally:
        agent.close()
        sub.close()


def _t(r: dict[str, Any]) -> float:
    from datetime import datetime

    return datetime.fromisoformat(r["ts"].replace("Z", "+00:00")).timestamp()
