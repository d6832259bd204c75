"""JBD BMS decoder: the issue's vector, request bytes, negatives, BLE-sized pieces, fuzz, simulator, config."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import DeviceConfig
from drivers.jbd_bms import simulator as jsim
from drivers.jbd_bms.driver import JbdBmsDriver
from drivers.jbd_bms.protocol import (
    BASIC_INFO_REQUEST,
    CELL_VOLTAGES_REQUEST,
    JbdProtocol,
    checksum,
    protection_names,
    reply,
)

# issue 13: a 15-cell pack at 58.88 V, idle, 7.20 of 10.00 Ah, both FETs on, two NTCs.
BASIC = bytes.fromhex("DD 03 00 1B 17 00 00 00 02 D0 03 E8 00 00 20 78 00 00 00 00 00 00 10 48 03 0F 02 0B 76 0B 82"
                      " FB FF 77")
BASIC_VALUES = {"voltage": 58.88, "current": 0.0, "power": 0.0, "remaining_capacity": 7.2, "nominal_capacity": 10.0,
                "cycles": 0, "state_of_charge": 72, "cell_count": 15, "charge_fet": True, "discharge_fet": True,
                "protection": "", "balancing": False, "temperature_1": 20.3, "temperature_2": 21.5}
CELLS_MV = [3925, 3926, 3924, 3930, 3921, 3925, 3925, 3926, 3927, 3925, 3924, 3926, 3925, 3926, 3925]
CELLS = reply(0x04, b"".join(v.to_bytes(2, "big") for v in CELLS_MV))
CELL_VALUES = {**{f"cell_voltage_{i + 1}": v / 1000 for i, v in enumerate(CELLS_MV)},
               "cell_voltage_min": 3.921, "cell_voltage_max": 3.93, "cell_voltage_delta": 0.009}


def _basic(current_raw: int = 0, protection: int = 0, balance: int = 0, fets: int = 3) -> bytes:
    data = bytearray(BASIC[4:-3])
    data[2:4] = current_raw.to_bytes(2, "big", signed=True)
    data[12:14] = balance.to_bytes(2, "big")
    data[16:18] = protection.to_bytes(2, "big")
    data[20] = fets
    return reply(0x03, bytes(data))


def test_requests_are_the_published_bytes() -> None:
    assert BASIC_INFO_REQUEST == bytes.fromhex("DD A5 03 00 FF FD 77")
    assert CELL_VOLTAGES_REQUEST == bytes.fromhex("DD A5 04 00 FF FC 77")
    assert checksum(BASIC[2:-3]) == 0xFBFF
    assert reply(0x03, BASIC[4:-3]) == BASIC


VECTORS: list[tuple[str, bytes, dict[str, Any]]] = [
    ("issue13_basic_info", BASIC, BASIC_VALUES),
    ("cell_voltages_15s", CELLS, CELL_VALUES),
    ("discharging_12_5_A", _basic(-1250), BASIC_VALUES | {"current": -12.5, "power": -736.0}),
    ("charging_with_balancing", _basic(500, balance=0x0100), BASIC_VALUES | {"current": 5.0, "power": 294.4,
                                                                              "balancing": True}),
    ("balancing_cell_17_plus", reply(0x03, BASIC[4:18] + b"\x00\x01" + BASIC[20:-3]), BASIC_VALUES | {"balancing": True}),
    ("protections_charge_fet_off", _basic(protection=0b1_0000_0000_0001, fets=2),
     BASIC_VALUES | {"protection": "cell_overvoltage,fet_software_lock", "charge_fet": False}),
    ("short_circuit_all_off", _basic(protection=1 << 10, fets=0),
     BASIC_VALUES | {"protection": "short_circuit", "charge_fet": False, "discharge_fet": False}),
]


@pytest.mark.parametrize(("name", "data", "expected"), VECTORS, ids=[v[0] for v in VECTORS])
def test_vectors(name: str, data: bytes, expected: dict[str, Any]) -> None:
    p = JbdProtocol()
    assert p.feed(data) == [expected]
    assert p.frames == 1 and not p.errors


def test_protection_names() -> None:
    assert protection_names(0) == ""
    assert protection_names(0xFFFF).split(",") == [
        "cell_overvoltage", "cell_undervoltage", "pack_overvoltage", "pack_undervoltage", "charge_overtemperature",
        "charge_undertemperature", "discharge_overtemperature", "discharge_undertemperature", "charge_overcurrent",
        "discharge_overcurrent", "short_circuit", "frontend_ic_error", "fet_software_lock", "charge_timeout",
        "unknown_bit_14", "unknown_bit_15"]


def _patched(data: bytes, i: int, value: int) -> bytes:
    b = bytearray(data)
    b[i] = value
    return bytes(b)


NEGATIVES: list[tuple[str, bytes, str]] = [
    ("checksum", _patched(BASIC, 5, 0x01), "checksum"),
    ("end_byte", _patched(BASIC, len(BASIC) - 1, 0x78), "malformed"),
    ("error_status", reply(0x03, b"", status=0x80), "status"),
    ("truncated", BASIC[:20], "truncated"),
    ("short_basic", reply(0x03, BASIC[4:20]), "short"),
    ("ntc_beyond_data", reply(0x03, BASIC[4:26] + b"\x05" + BASIC[27:-3]), "short"),
    ("odd_cells", reply(0x04, b"\x0f\x55\x0f"), "malformed"),
    ("other_register", reply(0x05, b"\x03ABC"), "unsupported"),
    ("noise", b"\x01\x02\x03", "noise"),
]


@pytest.mark.parametrize(("name", "data", "kind"), NEGATIVES, ids=[n[0] for n in NEGATIVES])
def test_negatives_are_counted_and_skipped(name: str, data: bytes, kind: str) -> None:
    p = JbdProtocol()
    assert p.feed(data) + p.flush() == []
    assert p.frames == 0 and p.errors[kind] >= 1
    assert p.feed(BASIC) == [BASIC_VALUES]  # not stuck


def test_requests_on_the_line_are_counted_not_decoded() -> None:
    p = JbdProtocol()
    assert p.feed(BASIC_INFO_REQUEST + BASIC + CELL_VOLTAGES_REQUEST + CELLS) == [BASIC_VALUES, CELL_VALUES]
    assert p.requests == 2 and p.writes == 0


def test_ble_notifications_reassembled_with_noise_and_resync() -> None:
    stream = b"\x00\x77" + BASIC[:15] + CELLS + b"\xdd" + BASIC + CELLS
    p = JbdProtocol()
    got = [v for i in range(0, len(stream), 20) for v in p.feed(stream[i:i + 20])] + p.flush()
    assert got == [CELL_VALUES, BASIC_VALUES, CELL_VALUES]
    assert p.errors["noise"] >= 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_random_bytes_never_raise(data: bytes) -> None:
    p = JbdProtocol()
    p.feed(data)
    p.flush()


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=255))
def test_fuzz_valid_frames_any_data_never_raise(register: int, status: int, data: bytes) -> None:
    p = JbdProtocol()
    got = p.feed(reply(register, data, status))
    assert p.frames == len(got) and p.frames + sum(p.errors.values()) + p.requests + p.writes == 1


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 30), min_size=1, max_size=20))
def test_fuzz_any_chunking_same_values(cuts: list[int]) -> None:
    stream = BASIC + CELLS + BASIC
    p = JbdProtocol()
    got, i = [], 0
    for c in itertools.cycle(cuts):
        if i >= len(stream):
            break
        got += p.feed(stream[i:i + c])
        i += c
    assert got == [BASIC_VALUES, CELL_VALUES, BASIC_VALUES]


def test_simulated_pack_discharges_charges_and_balances() -> None:
    from drivers.family import SimParams

    chunks, dec = jsim.simulation(SimParams())
    vals = [dec.feed(c)[0] for c in itertools.islice(chunks, 1500)]
    assert not dec.errors
    discharging = [v for v in vals if v["current"] < 0]
    charging = [v for v in vals if v["current"] > 0]
    assert discharging and charging and any(v["balancing"] for v in charging)
    assert not any(v["balancing"] for v in discharging)
    assert min(v["state_of_charge"] for v in vals) == 25 and max(v["state_of_charge"] for v in vals) == 100
    assert vals[-1]["cycles"] == vals[0]["cycles"] + 1
    # current drawn matches state of charge falling; the pack voltage is the sum of its cells
    ride = list(itertools.takewhile(lambda v: v["current"] < 0, vals))
    assert [v["state_of_charge"] for v in ride] == sorted((v["state_of_charge"] for v in ride), reverse=True)
    assert ride[0]["state_of_charge"] == 80 and ride[-1]["state_of_charge"] in (25, 26)
    for v in vals[:50]:
        cells = [v[f"cell_voltage_{i}"] for i in range(1, 14)]
        assert abs(v["voltage"] - sum(cells)) <= 0.00501  # 10 mV resolution of the pack voltage
        assert v["cell_voltage_delta"] == round(max(cells) - min(cells), 3)


def test_responder_answers_both_requests_in_order() -> None:
    r = jsim.JbdResponder()
    out = r.answer(BASIC_INFO_REQUEST + CELL_VOLTAGES_REQUEST[:3])
    out += r.answer(CELL_VOLTAGES_REQUEST[3:] + b"\x00")
    p = JbdProtocol()
    got = p.feed(out)
    assert len(got) == 2 and "voltage" in got[0] and "cell_voltage_1" in got[1] and r.polls == 1


def test_probe_recognises_polls_alone_and_replies() -> None:
    from drivers.probe import analyse, recognised

    polls = recognised(analyse(BASIC_INFO_REQUEST * 3 + CELL_VOLTAGES_REQUEST * 3))
    assert polls is not None and polls.driver == "jbd_bms" and polls.note == "6 requests seen"
    best = recognised(analyse(b"".join(itertools.islice(jsim.exchanges(), 3))))
    assert best is not None and best.protocol == "jbd_bms" and best.frames == 6


def problems(**kw: Any) -> list[tuple[str, str]]:
    return JbdBmsDriver.check_config(DeviceConfig.model_validate({"id": "b", "driver": "jbd_bms"} | kw))


def test_config_checks() -> None:
    assert problems(port="/dev/ttyUSB0") == []
    assert problems(transport="ble", address="A4:C1:37:00:11:22", poll_interval="5s") == []
    assert problems(transport="ble")[0][0] == "address"
    assert problems(transport="ble", address="A4:C1:37:00:11:22", baud=9600)[0][0] == "baud"
    assert problems(port="/dev/ttyUSB0", motor_poles=2)[0] == ("motor_poles", "unknown key")


def test_vehicle_doc_config_example_is_valid(tmp_path: Any) -> None:
    from pathlib import Path

    from agent.config import load_config

    doc = (Path(__file__).parents[1] / "docs" / "VEHICLE.md").read_text()
    block = doc.split("## Config example: a small EV", 1)[1].split("```toml", 1)[1].split("```", 1)[0]
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[gateway]\nid = "gw"\n' + block)
    loaded = load_config(cfg)
    assert [(d.driver, d.options.get("transport", "serial")) for d in loaded.devices] == [
        ("vesc", "serial"), ("jbd_bms", "serial"), ("vesc", "ble"), ("jbd_bms", "ble")]
