"""End to end: every serial driver (and `sim`) in a real agent process -> Mosquitto -> subscriber."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from drivers.lines import simulator as lsim
from drivers.pms5003 import simulator as psim
from drivers.sds011 import simulator as ssim
from drivers.sim import source
from tests.support.agentproc import AgentProcess, write_config
from tests.support.broker import Broker
from tests.support.modbus import ModbusBench
from tests.support.mqtt import Subscriber
from tests.support.pty import PtyDevice


def by_device(sub: Subscriber) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in sub.readings():
        out.setdefault(r["device"], []).append(r)
    return out


def test_every_serial_driver_end_to_end(tmp_path: Path, broker: Broker, pty_factory: type[PtyDevice]) -> None:
    pms, sds, lines = pty_factory(), pty_factory(), pty_factory()
    s8 = ModbusBench(tmp_path / "usb-s8", 0xFE, {3: 400})
    plc = ModbusBench(tmp_path / "usb-plc", 3, {0: 215, 1: 0x4048, 2: 0xF5C3})
    try:
        cfg = write_config(tmp_path / "agent.toml", broker_port=broker.port, devices=f"""
            [[devices]]
            id = "a101-pm"
            driver = "pms5003"
            port = "{pms.port}"
            tags = {{ room = "A101" }}

            [[devices]]
            id = "a102-pm"
            driver = "sds011"
            port = "{sds.port}"

            [[devices]]
            id = "a103-board"
            driver = "lines"
            port = "{lines.port}"
            baud = 115200
            fields = {{ temp_c = {{ quantity = "temperature" }}, rh = {{ quantity = "humidity" }}, co2_ppm = {{ quantity = "co2" }}, light = {{ quantity = "illuminance" }} }}

            [[devices]]
            id = "a101-co2"
            driver = "senseair_s8"
            port = "{s8.link}"
            poll_interval = "200ms"

            [[devices]]
            id = "boiler"
            driver = "modbus"
            port = "{plc.link}"
            slave = 3
            poll_interval = "200ms"
            registers = [
              {{ quantity = "temperature", address = 0, type = "int16", scale = 0.1 }},
              {{ quantity = "pressure", address = 1, function = 4, type = "float32" }},
            ]
            """)
        sub = Subscriber(broker.host, broker.port, "edge/gw-test/#")
        agent = AgentProcess(cfg)
        try:
            agent.start()
            for dev_id in ("a101-pm", "a102-pm", "a103-board"):
                agent.wait_log(f"{dev_id}: opened")
            ps = list(itertools.islice(psim.samples(), 5))
            ss = list(itertools.islice(ssim.samples(), 5))
            ls = list(itertools.islice(lsim.samples(), 5))
            pms.write(b"\x00\x42junk" + b"".join(psim.frame_bytes(s) for s in ps))
            bad = bytearray(ssim.frame_bytes(ss[0]))
            bad[3] ^= 0x10
            sds.write(bytes(bad) + b"".join(ssim.frame_bytes(s) for s in ss))
            lines.write(lsim.CSV_HEADER + b"".join(lsim.line_bytes(s, fmt) for s, fmt in
                                                    zip(ls, ["json", "csv", "kv", "json", "kv"], strict=True)))

            def done() -> bool:
                d = by_device(sub)
                return (len(d.get("a101-pm", [])) >= 5 and len(d.get("a102-pm", [])) >= 5
                        and len(d.get("a103-board", [])) >= 5 and len(d.get("a101-co2", [])) >= 2
                        and len(d.get("boiler", [])) >= 2)

            sub.wait_for(done, 30, "readings from every device")
            d = by_device(sub)
            assert [r["values"] for r in d["a101-pm"]] == [s.values() for s in ps]
            assert d["a101-pm"][0]["driver"] == "pms5003" and d["a101-pm"][0]["tags"] == {"room": "A101"}
            assert [r["values"] for r in d["a102-pm"]] == [s.values() for s in ss]
            assert [r["values"] for r in d["a103-board"]] == [s.values() for s in ls]
            assert {tuple(r["values"].items()) for r in d["a101-co2"]} == {(("co2", 400),)}
            assert d["a101-co2"][0]["driver"] == "senseair_s8"
            assert d["boiler"][0]["values"] == {"temperature": 21.5, "pressure": 3.14}
            seqs = [r["seq"] for r in sub.readings()]
            assert sorted(seqs) == list(range(1, len(seqs) + 1)) and len(set(seqs)) == len(seqs)
            assert agent.terminate() == 0
        finally:
            agent.close()
            sub.close()
    finally:
        s8.close()
        plc.close()


def test_sim_driver_every_family(tmp_path: Path, broker: Broker) -> None:
    devices = "".join(f"""
        [[devices]]
        id = "sim-{fam.replace('_', '-')}"
        driver = "sim"
        family = "{fam}"
        interval = "100ms"
        """ for fam in ("nmea", "pms5003", "sds011", "senseair_s8", "lines", "can"))
    cfg = write_config(tmp_path / "agent.toml", broker_port=broker.port, devices=devices)
    sub = Subscriber(broker.host, broker.port, "edge/gw-test/#")
    agent = AgentProcess(cfg).start()
    try:
        sub.wait_for(lambda: all(len(v) >= 3 for v in by_device(sub).values()) and len(by_device(sub)) == 6,
                     30, "3 readings from each simulated family")
        d = by_device(sub)
        assert set(d["sim-nmea"][0]["values"]) >= {"latitude", "longitude", "speed", "fix"}
        assert d["sim-pms5003"][0]["values"] == next(psim.samples()).values()
        assert d["sim-sds011"][0]["values"] == next(ssim.samples()).values()
        assert set(d["sim-senseair-s8"][0]["values"]) == {"co2"}
        assert d["sim-lines"][0]["values"] == next(lsim.samples()).values()
        chunks, proto = source("can")
        assert [r["values"] for r in d["sim-can"][:3]] == proto.feed(next(chunks))[:3]
        assert {r["driver"] for r in sub.readings()} == {"sim"}
        assert agent.terminate() == 0
    finally:
        agent.close()
        sub.close()


def test_unplugged_adapter_reports_disconnected_and_resumes(tmp_path: Path, broker: Broker,
                                                            pty_factory: type[PtyDevice]) -> None:
    dev = pty_factory(link=tmp_path / "usb-Plantower_PMS5003-if00")
    cfg = write_config(tmp_path / "agent.toml", broker_port=broker.port, devices=f"""
        [[devices]]
        id = "a101-pm"
        driver = "pms5003"
        port = "{dev.port}"
        """)
    sub = Subscriber(broker.host, broker.port, "edge/gw-test/#")
    agent = AgentProcess(cfg)
    ss = list(itertools.islice(psim.samples(), 6))
    try:
        agent.start_and_wait_port("a101-pm")
        dev.write(b"".join(psim.frame_bytes(s) for s in ss[:3]))
        sub.wait_for(lambda: len(sub.readings()) >= 3, 20, "3 readings")
        dev.unplug()
        agent.wait_log("device a101-pm: link disconnected")
        dev.plug()
        agent.wait_log("a101-pm: opened", count=2)  # reopen backoff up to 2 s, plus a slow machine
        dev.write(b"".join(psim.frame_bytes(s) for s in ss[3:]))
        sub.wait_for(lambda: len(sub.readings()) >= 6, 20, "6 readings after replug")
        assert [r["values"] for r in sub.readings()] == [s.values() for s in ss]
        assert agent.terminate() == 0
    finally:
        agent.close()
        sub.close()


@pytest.mark.parametrize("bad", ['registers = []', 'registers = [{ quantity = "x", address = -1 }]'])
def test_bad_modbus_config_exits_78(tmp_path: Path, bad: str) -> None:
    cfg = write_config(tmp_path / "agent.toml", broker_port=1883, devices=f"""
        [[devices]]
        id = "m"
        driver = "modbus"
        port = "/dev/ttyUSB0"
        {bad}
        """)
    agent = AgentProcess(cfg).start()
    try:
        assert agent.wait(20) == 78
        assert "devices[0].registers" in agent.output()
    finally:
        agent.close()
