"""VESC decoder: published vectors (ikalnytskyi/vesc-rs tests/command_reply.rs), negatives, fuzz, pyvesc, simulator."""

from __future__ import annotations

import itertools
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import DeviceConfig
from drivers.vesc import simulator as vsim
from drivers.vesc.driver import VescDriver
from drivers.vesc.protocol import (
    FAULTS,
    GET_VALUES_REQUEST,
    Geometry,
    VescProtocol,
    crc16,
    decode_values,
    encode_values,
    fault_name,
    frame,
)
from tests.support.pyvesc_oracle import load as load_pyvesc

# vesc-rs tests/command_reply.rs, captured from a controller.
ZERO_RPM = bytes([
    2, 74, 4, 1, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
    119, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 1, 116, 0, 0, 0, 0, 255, 255, 131, 64, 0, 2, 168, 254,
    0, 18, 6, 65, 224, 20, 1, 21, 252, 216, 252, 202, 0, 0, 0, 8, 0, 0, 0, 12, 0, 218, 113, 3,
])
FORWARD_RPM = bytes([
    2, 74, 4, 1, 20, 0, 0, 0, 0, 0, 37, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 32, 0, 110, 0, 0, 3,
    251, 1, 125, 0, 0, 0, 17, 0, 0, 0, 0, 0, 0, 2, 137, 0, 0, 0, 0, 255, 255, 111, 75, 0, 2,
    159, 199, 0, 4, 106, 124, 40, 1, 1, 21, 252, 76, 252, 13, 0, 0, 0, 229, 0, 0, 8, 214, 0,
    58, 151, 3,
])
REVERSE_RPM = bytes([
    2, 74, 4, 1, 13, 0, 0, 0, 0, 0, 92, 0, 0, 0, 12, 0, 0, 0, 0, 255, 255, 255, 169, 255, 19,
    255, 255, 247, 94, 1, 117, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 1, 18, 0, 0, 0, 0, 255, 255, 145,
    186, 0, 2, 11, 64, 0, 13, 228, 230, 240, 20, 1, 13, 252, 115, 252, 76, 0, 0, 0, 230, 255,
    255, 240, 129, 0, 12, 51, 3,
])
SELECTIVE_ZERO = bytes([
    2, 23, 50, 0, 2, 161, 138, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 128, 255, 255, 158, 70, 0, 1,
    63, 148, 3,
])
SELECTIVE_FORWARD = bytes([
    2, 23, 50, 0, 2, 161, 138, 0, 0, 0, 0, 0, 4, 0, 0, 3, 221, 1, 119, 255, 255, 170, 43, 0,
    20, 45, 58, 3,
])
SELECTIVE_REVERSE = bytes([
    2, 23, 50, 0, 2, 161, 138, 0, 0, 0, 0, 0, 10, 255, 255, 246, 213, 1, 118, 255, 255, 181,
    218, 0, 20, 94, 130, 3,
])


def full(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"temperature_fet": 0.0, "temperature_motor": 0.0, "motor_current": 0.0,
                            "input_current": 0.0, "duty": 0.0, "erpm": 0, "input_voltage": 0.0, "amp_hours": 0.0,
                            "amp_hours_charged": 0.0, "watt_hours": 0.0, "watt_hours_charged": 0.0,
                            "tachometer": 0, "tachometer_abs": 0, "fault": "NONE"}
    return base | kw


VECTORS: list[tuple[str, bytes, dict[str, Any]]] = [
    ("get_values_zero_rpm", ZERO_RPM, full(temperature_fet=27.6, input_voltage=37.5, amp_hours=0.0009,
                                           watt_hours=0.0372, tachometer=-31936, tachometer_abs=174334)),
    ("get_values_forward_rpm", FORWARD_RPM, full(temperature_fet=27.6, motor_current=0.37, input_current=0.03,
                                                 duty=0.11, erpm=1019, input_voltage=38.1, amp_hours=0.0017,
                                                 watt_hours=0.0649, tachometer=-37045, tachometer_abs=171975)),
    ("get_values_reverse_rpm", REVERSE_RPM, full(temperature_fet=26.9, motor_current=0.92, input_current=0.12,
                                                 duty=-0.237, erpm=-2210, input_voltage=37.3, amp_hours=0.0007,
                                                 watt_hours=0.0274, tachometer=-28230, tachometer_abs=133952)),
    ("get_values_selective_zero_rpm", SELECTIVE_ZERO,
     {"temperature_motor": 0.0, "input_current": 0.0, "erpm": 0, "input_voltage": 38.4, "tachometer": -25018,
      "fault": "NONE"}),
    ("get_values_selective_forward_rpm", SELECTIVE_FORWARD,
     {"temperature_motor": 0.0, "input_current": 0.04, "erpm": 989, "input_voltage": 37.5, "tachometer": -21973,
      "fault": "NONE"}),
    ("get_values_selective_reverse_rpm", SELECTIVE_REVERSE,
     {"temperature_motor": 0.0, "input_current": 0.1, "erpm": -2347, "input_voltage": 37.4, "tachometer": -18982,
      "fault": "NONE"}),
]


def _patched(data: bytes, i: int, value: int) -> bytes:
    b = bytearray(data)
    b[i] = value
    return bytes(b)


# vesc-rs negatives: (name, bytes, error counted once the line goes quiet)
NEGATIVES: list[tuple[str, bytes, str]] = [
    ("checksum_mismatch", _patched(SELECTIVE_REVERSE, 24, 21), "checksum"),
    ("unknown_packet", bytes([2, 3, 222, 4, 0, 178, 81, 3]), "unsupported"),
    ("invalid_frame_start", _patched(SELECTIVE_ZERO, 0, 7), "noise"),
    ("invalid_frame_end", _patched(SELECTIVE_ZERO, 27, 2), "malformed"),
    ("payload_len_gt_payload", _patched(SELECTIVE_ZERO, 1, 24), "truncated"),
    ("payload_len_lt_payload", _patched(SELECTIVE_ZERO, 1, 22), "malformed"),
    ("invalid_end_with_checksum_mismatch", _patched(_patched(SELECTIVE_REVERSE, 24, 21), 27, 2), "malformed"),
]


def test_request_is_the_published_bytes() -> None:
    assert GET_VALUES_REQUEST == bytes.fromhex("02 01 04 40 84 03")
    assert crc16(b"\x04") == 0x4084


@pytest.mark.parametrize(("name", "data", "expected"), VECTORS, ids=[v[0] for v in VECTORS])
def test_published_vectors(name: str, data: bytes, expected: dict[str, Any]) -> None:
    p = VescProtocol()
    assert p.feed(data) == [expected]
    assert p.frames == 1 and not p.errors


@pytest.mark.parametrize(("name", "data", "kind"), NEGATIVES, ids=[n[0] for n in NEGATIVES])
def test_published_negatives_are_counted_and_skipped(name: str, data: bytes, kind: str) -> None:
    p = VescProtocol()
    assert p.feed(data) + p.flush() == []
    assert p.frames == 0 and p.errors[kind] >= 1
    # the decoder is not stuck: the next good reply decodes
    assert p.feed(ZERO_RPM) + p.flush() == [VECTORS[0][2]]


def test_every_prefix_is_incomplete_then_truncated() -> None:
    for i in range(1, len(SELECTIVE_ZERO)):
        p = VescProtocol()
        assert p.feed(SELECTIVE_ZERO[:i]) == [] and not p.errors
        assert p.flush() == [] and p.errors["truncated"] >= 1


def test_noise_truncation_and_resync() -> None:
    p = VescProtocol()
    stream = (b"\x00\xff\x02" + FORWARD_RPM[:30] + ZERO_RPM + b"\x03\x00" + REVERSE_RPM[:-1] + b"\x07"
              + GET_VALUES_REQUEST + FORWARD_RPM)
    got = p.feed(stream) + p.flush()
    assert got == [VECTORS[0][2], VECTORS[1][2]]
    assert p.requests == 1
    assert p.errors["noise"] >= 1 and p.errors["malformed"] + p.errors["truncated"] + p.errors["checksum"] >= 2


def test_byte_by_byte_equals_whole() -> None:
    stream = ZERO_RPM + FORWARD_RPM + REVERSE_RPM + SELECTIVE_FORWARD
    p = VescProtocol()
    got = [v for b in stream for v in p.feed(bytes([b]))]
    assert got == [v[2] for v in VECTORS[:3]] + [VECTORS[4][2]]


def test_long_frames_use_the_16_bit_length() -> None:
    payload = bytes([4]) + ZERO_RPM[3:-3] + bytes(300)
    data = frame(payload)
    assert data[0] == 3 and data[1:3] == len(payload).to_bytes(2, "big")
    p = VescProtocol()
    assert p.feed(data) == [VECTORS[0][2]]
    # a 16-bit length below 255 is invalid (the firmware refuses it too)
    short = bytes([3, 0, 74]) + ZERO_RPM[2:]
    p = VescProtocol()
    assert p.feed(short) + p.flush() == [] and p.errors["malformed"] >= 1


def test_parse_by_length_older_firmware() -> None:
    payload = ZERO_RPM[2:-3]
    # FW 3.7 .. 5.x: up to the fault byte only (54 bytes): same values
    assert decode_values(payload[:54]) == VECTORS[0][2]
    for n in range(2, 54):  # shorter than any firmware's reply (1 byte: the request itself)
        p = VescProtocol()
        assert p.feed(frame(payload[:n])) == [] and p.errors["short"] == 1
    # before FW 3.7: six MOSFET temperatures and the PCB's, no motor temperature, no id/iq
    legacy = bytes([4]) + struct.pack(">7hiihihiiiiiiB", 251, 252, 253, 254, 255, 256, 300, 1234, -567, -237, 2210,
                                      373, 7, 8, 9, 10, -28230, 133952, 3)
    assert decode_values(legacy) == {
        "temperature_fet": 25.1, "motor_current": 12.34, "input_current": -5.67, "duty": -0.237, "erpm": 2210,
        "input_voltage": 37.3, "amp_hours": 0.0007, "amp_hours_charged": 0.0008, "watt_hours": 0.0009,
        "watt_hours_charged": 0.001, "tachometer": -28230, "tachometer_abs": 133952, "fault": "DRV"}


def test_fault_names_follow_mc_fault_code() -> None:
    assert FAULTS[:3] == ("NONE", "OVER_VOLTAGE", "UNDER_VOLTAGE")
    assert FAULTS.index("OVER_TEMP_FET") == 5 and FAULTS.index("BRK") == 19
    assert FAULTS[-1] == "ABS_OVERSPEED" and len(FAULTS) == 34
    assert fault_name(40) == "UNKNOWN_40"
    assert decode_values(encode_values({"fault": "OVER_VOLTAGE"})[2:-3])["fault"] == "OVER_VOLTAGE"


def test_speed_and_distance_from_geometry() -> None:
    g = Geometry(motor_poles=14, gear_ratio=1.0, wheel_diameter=0.5)
    # 1019 eRPM / 7 pole pairs = 145.57 rpm of the wheel; * pi * 0.5 m / 60 s
    v = VescProtocol(g).feed(FORWARD_RPM)[0]
    assert v["speed"] == round(1019 / 7 / 60 * 3.141592653589793 * 0.5, 3) == 3.811
    # 171975 steps / (3 * 14 per turn) = 4094.6 turns of a 0.5 m wheel
    assert v["distance"] == round(171975 / 42 * 3.141592653589793 * 0.5, 3)
    geared = VescProtocol(Geometry(14, 4.0, 0.5)).feed(REVERSE_RPM)[0]
    assert geared["speed"] == round(-2210 / 7 / 4 / 60 * 3.141592653589793 * 0.5, 3) < 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_random_bytes_never_raise(data: bytes) -> None:
    p = VescProtocol(Geometry(14, 1, 0.5))
    p.feed(data)
    p.flush()


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=520), st.sampled_from([4, 50]))
def test_fuzz_valid_frames_with_any_payload_never_raise(body: bytes, cmd: int) -> None:
    p = VescProtocol(Geometry(14, 1, 0.5))
    got = p.feed(frame((bytes([cmd]) + body)[:512]))
    assert p.frames == len(got) and p.frames + sum(p.errors.values()) + p.requests == 1


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=30), st.binary(max_size=40))
def test_fuzz_any_chunking_same_values(cuts: list[int], noise: bytes) -> None:
    noise = noise.replace(b"\x02", b"").replace(b"\x03", b"")
    stream = noise + ZERO_RPM + noise + FORWARD_RPM + REVERSE_RPM
    p = VescProtocol()
    got, i = [], 0
    for c in itertools.cycle(cuts):
        if i >= len(stream):
            break
        got += p.feed(stream[i:i + c])
        i += c
    assert got == [v[2] for v in VECTORS[:3]]


# -- differential against pyvesc (PyPI 1.0.5: framing, CRC, the pre-3.7 GET_VALUES layout) ---------
pyvesc_ok = True
try:
    pyvesc = load_pyvesc()
except ImportError:  # pragma: no cover
    pyvesc_ok = False


@pytest.mark.skipif(not pyvesc_ok, reason="pyvesc not installed")
def test_pyvesc_request_bytes() -> None:
    assert pyvesc.encode_request(pyvesc.GetValues) == GET_VALUES_REQUEST


@pytest.mark.skipif(not pyvesc_ok, reason="pyvesc not installed")
@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=512))
def test_pyvesc_framing(payload: bytes) -> None:
    assert pyvesc.packet.codec.frame(payload) == frame(payload)


i16, i32 = st.integers(-32768, 32767), st.integers(-(2**31), 2**31 - 1)


@pytest.mark.skipif(not pyvesc_ok, reason="pyvesc not installed")
@settings(max_examples=200, deadline=None)
@given(st.lists(i16, min_size=7, max_size=7), i32, i32, i16, i32, i16, st.lists(i32, min_size=6, max_size=6),
       st.integers(0, len(FAULTS) - 1))
def test_pyvesc_legacy_get_values(temps: list[int], im: int, ii: int, duty: int, rpm: int, vin: int,
                                  counters: list[int], fault: int) -> None:
    payload = bytes([4]) + struct.pack(">7hiihihiiiiiiB", *temps, im, ii, duty, rpm, vin, *counters, fault)
    msg, consumed = pyvesc.decode(frame(payload))
    assert consumed == len(payload) + 5
    ours = VescProtocol().feed(frame(payload))[0]
    theirs = {"temperature_fet": msg.temp_mos1, "motor_current": msg.current_motor, "input_current": msg.current_in,
              "duty": msg.duty_now, "erpm": msg.rpm, "input_voltage": msg.v_in, "amp_hours": msg.amp_hours,
              "amp_hours_charged": msg.amp_hours_charged, "watt_hours": msg.watt_hours,
              "watt_hours_charged": msg.watt_hours_charged, "tachometer": msg.tachometer,
              "tachometer_abs": msg.tachometer_abs, "fault": FAULTS[msg.mc_fault_code[0]]}
    assert ours == theirs


# -- simulator ------------------------------------------------------------------------------------
def test_simulated_ride_round_trips_and_covers_every_phase() -> None:
    ride = vsim.Ride()
    phases: dict[str, list[dict[str, Any]]] = {}
    for _ in range(vsim.RIDE):
        phase = ride.phase()
        v = ride.step()
        assert decode_values(encode_values(v)[2:-3]) == v  # exact on the wire
        phases.setdefault(phase, []).append(v)
    assert set(phases) == {"accelerate", "cruise", "brake", "stand", "fault"}
    assert phases["accelerate"][-1]["erpm"] > phases["accelerate"][1]["erpm"] > 0
    assert all(v["motor_current"] < 0 and v["input_current"] < 0 for v in phases["brake"][1:])  # regen
    assert phases["stand"][-1]["amp_hours_charged"] > 0 and phases["stand"][-1]["watt_hours_charged"] > 0
    assert {v["fault"] for v in phases["fault"]} == {"OVER_TEMP_FET"}
    assert {v["fault"] for p in ("accelerate", "cruise", "brake", "stand") for v in phases[p]} == {"NONE"}
    cruise_speed = vsim.GEOMETRY.speed(int(phases["cruise"][5]["erpm"]))
    assert 6.0 < cruise_speed < 7.6  # about 25 km/h


def test_responder_answers_each_poll_once() -> None:
    r = vsim.VescResponder()
    assert r.answer(b"\x00") == b""
    two = r.answer(GET_VALUES_REQUEST + GET_VALUES_REQUEST[:3])
    two += r.answer(GET_VALUES_REQUEST[3:])
    p = VescProtocol()
    assert len(p.feed(two)) == 2 and r.polls == 2 and not p.errors


# -- config ---------------------------------------------------------------------------------------
def problems(**kw: Any) -> list[tuple[str, str]]:
    return VescDriver.check_config(DeviceConfig.model_validate({"id": "v", "driver": "vesc"} | kw))


def test_config_checks() -> None:
    assert problems(port="/dev/ttyACM0", motor_poles=30, wheel_diameter=0.254) == []
    assert problems(transport="ble", address="C7:F5:2A:A1:B2:C3") == []
    assert problems(transport="ble", port="/dev/ttyACM0", address="C7:F5:2A:A1:B2:C3")[0][0] == "port"
    assert problems(transport="ble")[0][0] == "address"
    assert problems(port="/dev/ttyACM0", address="C7:F5:2A:A1:B2:C3")[0][0] == "address"
    (key, msg), = problems(port="/dev/ttyACM0", motor_poles=30)
    assert "wheel_diameter missing" in msg
    assert problems(port="/dev/ttyACM0", motor_poles=7, wheel_diameter=0.2)[0][0] == "motor_poles"
    assert problems(port="/dev/ttyACM0", poll_interval="250ms") == []
    assert problems(port="/dev/ttyACM0", speed=1)[0] == ("speed", "unknown key")


def test_probe_recognises_polls_alone_and_replies() -> None:
    from drivers.probe import analyse, recognised

    polls = recognised(analyse(GET_VALUES_REQUEST * 5))
    assert polls is not None and polls.driver == "vesc" and polls.note == "5 requests seen" and polls.frames == 0
    ride = b"".join(itertools.islice(vsim.exchange_bytes(), 4))
    best = recognised(analyse(ride))
    assert best is not None and best.protocol == "vesc" and best.frames == 4 and best.samples[0]["fault"] == "NONE"


def test_transport_per_device_decides_bluetooth(tmp_path: Any) -> None:
    from agent.cli import doctor
    from agent.config import load_config

    cfg = tmp_path / "agent.toml"
    cfg.write_text('[gateway]\nid = "gw"\n'
                   '[[devices]]\nid = "m1"\ndriver = "vesc"\nport = "/dev/ttyACM0"\n'
                   '[[devices]]\nid = "m2"\ndriver = "vesc"\ntransport = "ble"\naddress = "E4:5F:01:AA:BB:01"\n')
    assert doctor._ble_devices(load_config(cfg)) == ["m2"]


def test_scan_names_connected_vehicle_devices() -> None:
    from agent.cli.scan import _connectable
    from drivers.ble.decoders import Advert

    def adv(*uuids: str) -> Advert:
        return Advert("E4:5F:01:AA:BB:01", None, -60, {}, {}, tuple(uuids))

    nus, ff00 = "6e400001-b5a3-f393-e0a9-e50e24dcca9e", "0000ff00-0000-1000-8000-00805f9b34fb"

    def driver(a: Advert, name: str | None) -> str | None:
        hit = _connectable(a, name)
        return hit[0] if hit else None

    assert driver(adv(nus), "VESC BLE UART") == "vesc"
    assert driver(adv(nus), "Flipsky vesc express") == "vesc"
    assert driver(adv(nus), "BMS-12") == "ble_nus"
    assert driver(adv(nus.upper()), None) == "ble_nus"
    assert driver(adv("0000180f-0000-1000-8000-00805f9b34fb", ff00), "SP04S034") == "jbd_bms"
    assert driver(adv("0000180f-0000-1000-8000-00805f9b34fb"), "VESC") is None
