"""`obd2`: python-OBD's decoder and protocol vectors, ELM327 replies, config, and an agent polling a simulated adapter.

Vectors: python-OBD tests/test_decoders.py (temp, percent), tests/test_uas.py (0x07 rpm,
0x0B volts), tests/test_protocol_can.py and tests/test_protocol_legacy.py (single frames, hex
straining, several ECUs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.obd2.protocol import INIT, PIDS, Elm327Protocol, decode_message, parse_line, request
from drivers.obd2.simulator import Elm327
from tests.support.agentproc import AgentProcess, write_config
from tests.support.broker import Broker
from tests.support.cli import run_cli
from tests.support.mqtt import Subscriber
from tests.support.polled import PolledPty


@pytest.mark.parametrize(("pid", "payload", "value"), [
    (0x05, "00", -40), (0x05, "FF", 215),  # test_temp
    (0x5B, "00", 0.0), (0x5B, "FF", 100.0),  # test_percent
    (0x0C, "0000", 0.0), (0x0C, "0002", 0.5), (0x0C, "FFFD", 16383.25), (0x0C, "FFFF", 16383.75),  # UAS 0x07
    (0x42, "0000", 0.0), (0x42, "0001", 0.001), (0x42, "FFFF", 65.535),  # UAS 0x0B
    (0x0D, "00", 0.0), (0x0D, "64", round(100 / 3.6, 4)), (0x0D, "FF", round(255 / 3.6, 4)),  # km/h -> m/s
])
def test_pid_formulas_match_python_obd(pid: int, payload: str, value: float) -> None:
    assert decode_message(bytes([0x41, pid]) + bytes.fromhex(payload)) == {PIDS[pid].quantity: value}


@pytest.mark.parametrize(("line", "data"), [
    # test_protocol_can.test_single_frame (11-bit)
    ("7E8 06 41 00 00 01 02 03", "410000010203"), ("7E8 01 41", "41"), ("7E8 07 41 00 00 01 02 03 04", "41000001020304"),
    ("7E8 01", None), ("7E8 08 41 00 00 01 02 03 04 05", None), ("7E8 00", None),
    ("7E8 08 41 00 00 01 02 03 04 0", None),
    # test_protocol_legacy.test_single_frame
    ("48 6B 10 41 00 FF", "4100"), ("48 6B 10 41 00 00 01 02 03 04 FF", "41000001020304"),
    ("48 6B 10 41 FF", None), ("48 6B 10 41 00 00 01 02 03 04 05 FF", None), ("48 6B 10 41 00 00 F", None),
    # hex straining: not data
    ("12.8 Volts", None), ("NO DATA", None),
    # spaces off (ATS0), as the driver sets up the adapter; CAN 29-bit
    ("7E803410D32", "410D32"), ("18DAF11003410D32", "410D32"), ("18DAF110 03 41 0D 32", "410D32"),
])
def test_data_lines_parse_as_python_obd_frames_them(line: str, data: str | None) -> None:
    got = parse_line(line)
    assert (got.hex().upper() if got is not None else None) == (data.upper() if data else None)


@pytest.mark.parametrize(("reply", "values", "errors"), [
    (b"SEARCHING...\r7E803410D32\r\r>", [{"speed": round(50 / 3.6, 4)}], {}),
    (b"7E804410C1AF8\r\r>", [{"rpm": 1726.0}], {}),
    (b"NO DATA\r\r>", [], {"no_data": 1}),
    (b"?\r\r>", [], {"refused": 1}),
    (b"CAN ERROR\r\r>", [], {"can_error": 1}),
    (b"SEARCHING...\rUNABLE TO CONNECT\r\r>", [], {"unable_to_connect": 1}),
    (b"STOPPED\r\r>", [], {"stopped": 1}),
    (b"7E803410D32\r7E903410D00\r\r>", [{"speed": round(50 / 3.6, 4)}], {}),  # two ECUs: the engine's (first)
    (b"7E8 03 41 05 7B\r\r>", [{"coolant_temperature": 83}], {}),
    (b"\x00\x007E803410D3\r\r>", [], {"malformed": 1}),  # a line cut short
])
def test_elm327_replies(reply: bytes, values: list[dict[str, Any]], errors: dict[str, int]) -> None:
    p = Elm327Protocol()
    out: list[dict[str, Any]] = []
    for i in range(0, len(reply), 5):  # split reads
        out += p.feed(reply[i:i + 5])
    assert out == values and dict(p.errors) == errors and p.frames == 1


def test_simulated_adapter_speaks_like_an_elm327() -> None:
    elm = Elm327()
    assert elm.answer(b"ATZ\r") == b"ATZ\r\r\rELM327 v1.5\r\r>"
    assert elm.answer(b"ATE0\r") == b"ATE0\rOK\r\r>"  # echoes until echo is off
    assert elm.answer(b"ATS0\rATH1\rATSP0\r") == b"OK\r\r>OK\r\r>OK\r\r>"
    assert elm.answer(b"010D\r") == b"SEARCHING...\r7E803410D00\r\r>"
    assert elm.answer(b"0111\r") == b"NO DATA\r\r>"
    assert elm.answer(b"AT MA\r") == b"?\r\r>"


@pytest.mark.parametrize(("device", "key", "why"), [
    ('pids = ["speed", "boost"]', "devices[0].pids", "unknown PID 'boost'"),
    ("pids = [0x11]", "devices[0].pids", "unknown PID 17"),
    ("pids = []", "devices[0].pids", "at least one PID"),
    ('transport = "ble"', "devices[0].transport", "pattern"),
])
def test_config_errors_exit_78(tmp_path: Path, device: str, key: str, why: str) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[gateway]\nid = "gw"\n[[devices]]\nid = "car"\ndriver = "obd2"\nport = "/dev/rfcomm0"\n{device}\n')
    r = run_cli("config", "check", cfg)
    assert r.code == 78
    assert why in next(ln for ln in r.err.splitlines() if key in ln), r.err


def test_obd2_polls_an_elm327_end_to_end(tmp_path: Path, broker: Broker) -> None:
    elm = Elm327(dt=0.1, supported=(0x05, 0x0C, 0x0D, 0x42))  # a petrol car: no EV pack PID
    adapter = PolledPty(tmp_path / "usb-FTDI_ELM327-if00-port0", elm.answer)
    cfg = write_config(tmp_path / "agent.toml", broker_port=broker.port, devices=f"""
        [[devices]]
        id = "car-obd"
        driver = "obd2"
        port = "{adapter.port}"
        poll_interval = "100ms"
        pids = ["speed", "rpm", 0x05, "0x42", "pack_remaining_life"]
        tags = {{ vehicle = "car-1" }}
        """)
    sub = Subscriber(broker.host, broker.port, "edge/gw-test/#")
    agent = AgentProcess(cfg)
    try:
        agent.start_and_wait_port("car-obd")
        sub.wait_for(lambda: len(sub.readings()) >= 8, 30, "8 OBD readings")
        got = [r["values"] for r in sub.readings()]
        ref = Elm327(dt=0.1, supported=(0x05, 0x0C, 0x0D, 0x42))
        elm_expected = _replay(ref, len(got))
        assert got == elm_expected[:len(got)]
        assert set(got[0]) == {"speed", "rpm", "coolant_temperature", "module_voltage"}
        assert got[0]["module_voltage"] == 13.8
        agent.wait_log("car-obd: ELM327 v1.5")
        agent.wait_log("car-obd: the vehicle does not support PID 0x5B (pack_remaining_life): no longer polled")
        rows = run_cli("devices", "--config", cfg, "--json").json()["devices"]
        assert rows[0]["errors"] == {"no_data": 3}  # asked three times, then no more
        assert agent.terminate() == 0
    finally:
        agent.close()
        adapter.close()
    # the gateway only sent the setup and mode 01 requests
    sent = elm.written
    assert sent[:len(INIT)] == list(INIT)
    assert set(sent[len(INIT):]) <= {"010D", "010C", "0105", "0142", "015B"}
    assert sent.count("015B") == 3


def _replay(elm: Elm327, polls: int) -> list[dict[str, Any]]:
    p = Elm327Protocol()
    for cmd in INIT:
        p.feed(elm.answer(cmd.encode() + b"\r"))
    out = []
    for _ in range(polls):
        merged: dict[str, Any] = {}
        for pid in (0x0D, 0x0C, 0x05, 0x42, 0x5B)[:5 if len(out) < 3 else 4]:  # 0x5B: NO DATA, dropped after 3
            for v in p.feed(elm.answer(request(pid))):
                merged.update(v)
        out.append(merged)
    return out


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 300))
def test_fuzzed_replies_never_raise(data: bytes, split: int) -> None:
    p = Elm327Protocol()
    out = p.feed(data[:split]) + p.feed(data[split:] + b">")
    assert all(isinstance(v, dict) and all(k in {q.quantity for q in PIDS.values()} for k in v) for v in out)
