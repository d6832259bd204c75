"""`can` driver: slcan vectors (python-can's tests), cantools' DBC vectors, units, names, rate limits, config, fuzz.

The published vectors: python-can test/test_slcan.py (frames on the wire, split reads) and
cantools tests/test_database.py (motohawk ExampleMessage) and tests/test_command_line.py
(msxii_system_can BATTERY_VT, a multiplexed BMS message). The DBC lines below restate the
signal layout those vectors are defined against.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
import tty
from pathlib import Path
from typing import Any

import can
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.can.protocol import (
    CanDecoder,
    CanOptions,
    DbcError,
    SlcanFrame,
    SlcanSniffer,
    build_plans,
    canonical_unit,
    load_dbc,
    parse_slcan,
    slcan_line,
    snake_case,
)
from drivers.can.simulator import VEHICLE_DBC, Ride, SlcanAdapter, bus_frames, ocv
from tests.support.cli import run_cli

FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "200")), deadline=None,
                suppress_health_check=list(HealthCheck))

PUBLISHED_DBC = """VERSION ""

NS_ :

BS_:

BU_: PCM1 FOO BMS

BO_ 496 ExampleMessage: 8 PCM1
 SG_ Temperature : 0|12@0- (0.01,250) [229.52|270.47] "degK"  PCM1,FOO
 SG_ AverageRadius : 6|6@0+ (0.1,0) [0|5] "m" Vector__XXX
 SG_ Enable : 7|1@0+ (1,0) [0|0] "-" Vector__XXX

BO_ 1025 BATTERY_VT: 6 BMS
 SG_ MODULE_TEMP_06 m6 : 32|16@1+ (1,0) [0|0] "" Vector__XXX
 SG_ MODULE_TEMP_02 m2 : 32|16@1+ (1,0) [0|0] "" Vector__XXX
 SG_ MODULE_TEMP_00 m0 : 32|16@1+ (1,0) [0|0] "" Vector__XXX
 SG_ MODULE_VOLTAGE_06 m6 : 16|16@1+ (1,0) [0|0] "" Vector__XXX
 SG_ MODULE_VOLTAGE_02 m2 : 16|16@1+ (1,0) [0|0] "" Vector__XXX
 SG_ MODULE_VOLTAGE_00 m0 : 16|16@1+ (1,0) [0|0] "" Vector__XXX
 SG_ BATTERY_VT_INDEX M : 0|16@1+ (1,0) [0|0] "" Vector__XXX

VAL_ 496 Enable 0 "Disabled" 1 "Enabled" ;
"""


@pytest.fixture
def published(tmp_path: Path) -> Path:
    p = tmp_path / "published.dbc"
    p.write_text(PUBLISHED_DBC)
    return p


def frame(fid: int, data: bytes | str, *, ext: bool = False, dlc: int | None = None, **kw: Any) -> can.Message:
    raw = bytes.fromhex(data) if isinstance(data, str) else data
    return can.Message(arbitration_id=fid, data=raw, is_extended_id=ext, dlc=len(raw) if dlc is None else dlc, **kw)


def decoder(dbc: Path, **opts: Any) -> CanDecoder:
    o = CanOptions.model_validate({"dbc": dbc, "min_interval": 0, **opts})
    return CanDecoder(load_dbc(o.dbc), o)


# -- slcan wire vectors (python-can test/test_slcan.py) ------------------------------------------
FD16 = bytes(range(0x30, 0x40))
SLCAN_VECTORS = [
    # line, id, extended, remote, fd, brs, dlc, data
    ("T12ABCDEF2AA55", 0x12ABCDEF, True, False, False, False, 2, b"\xaa\x55"),
    ("x12ABCDEF2AA55", 0x12ABCDEF, True, False, False, False, 2, b"\xaa\x55"),  # CANDapter's extended letter
    ("t4563112233", 0x456, False, False, False, False, 3, b"\x11\x22\x33"),
    ("r1238", 0x123, False, True, False, False, 8, b""),
    ("R12ABCDEF6", 0x12ABCDEF, True, True, False, False, 6, b""),
    ("d123A303132333435363738393a3b3c3d3e3f", 0x123, False, False, True, False, 16, FD16),
    ("D12ABCDEFA303132333435363738393A3B3C3D3E3F", 0x12ABCDEF, True, False, True, False, 16, FD16),
    ("b123A303132333435363738393a3b3c3d3e3f", 0x123, False, False, True, True, 16, FD16),
    ("B12ABCDEFA303132333435363738393A3B3C3D3E3F", 0x12ABCDEF, True, False, True, True, 16, FD16),
]


@pytest.mark.parametrize(("line", "fid", "ext", "remote", "fd", "brs", "dlc", "data"), SLCAN_VECTORS)
def test_slcan_vectors_parse_exactly(line: str, fid: int, ext: bool, remote: bool, fd: bool, brs: bool,
                                     dlc: int, data: bytes) -> None:
    f = parse_slcan(line)
    assert f == SlcanFrame(fid, data, ext, remote, fd, brs, dlc)
    if line[0] != "x":  # our encoder writes what an adapter sends (upper-case hex, "T" for extended)
        assert slcan_line(f) == (line[0] + line[1:].upper()).encode() + b"\r"


@pytest.mark.parametrize("line", ["", "t45", "t4563", "t45631122", "t456311223344", "t4569" + "00" * 9,
                                  "tXYZ0", "T1234567", "T3FFFFFFF0", "t8000", "r123", "d123G", "q1230", "t456311223G"])
def test_slcan_malformed_lines_are_refused(line: str) -> None:
    assert parse_slcan(line) is None


class _PtyBus:
    """python-can's real slcan interface on a pty (the transport the driver uses), fed by the test."""

    def __init__(self) -> None:
        self.master, slave = os.openpty()
        tty.setraw(slave)
        tty.setraw(self.master)
        self.slave = slave
        self.bus = can.Bus(interface="slcan", channel=os.ttyname(slave), bitrate=500000, listen_only=True,
                           sleep_after_open=0, timeout=0.01)
        self.opened = b""  # what python-can wrote while opening (a pty hands it over in pieces)
        deadline = time.monotonic() + 5
        while self.opened.count(b"L\r") < 2 and time.monotonic() < deadline:
            self.opened += os.read(self.master, 1024)

    def close(self) -> None:
        self.bus.shutdown()
        os.close(self.master)
        os.close(self.slave)


def test_python_can_slcan_over_a_pty_reads_the_vectors_and_split_reads() -> None:
    pb = _PtyBus()
    try:
        assert pb.opened == b"C\rS6\r\rL\rL\r"  # close, 500 kbit/s, (no FD data rate), open listen-only
        for line, fid, ext, remote, fd, _brs, dlc, data in SLCAN_VECTORS:
            os.write(pb.master, line.encode() + b"\r")
            msg = pb.bus.recv(2)
            assert msg is not None
            assert (msg.arbitration_id, msg.is_extended_id, msg.is_remote_frame, msg.is_fd, msg.dlc) == \
                (fid, ext, remote, fd, dlc)
            assert bytes(msg.data) == data
            # differential: the driver's parser reads every vector as python-can does
            assert parse_slcan(line) == SlcanFrame(msg.arbitration_id, bytes(msg.data), msg.is_extended_id,
                                                   msg.is_remote_frame, msg.is_fd, msg.bitrate_switch, msg.dlc)
        # test_partial_recv: a frame split over three reads
        os.write(pb.master, b"T12ABCDEF")
        assert pb.bus.recv(0.05) is None
        os.write(pb.master, b"2AA55\rT12")
        msg = pb.bus.recv(1)
        assert msg is not None and (msg.arbitration_id, bytes(msg.data)) == (0x12ABCDEF, b"\xaa\x55")
        assert pb.bus.recv(0.05) is None
        os.write(pb.master, b"ABCDEF2AA55\r")
        msg = pb.bus.recv(1)
        assert msg is not None and msg.arbitration_id == 0x12ABCDEF
    finally:
        pb.close()


def test_sniffer_reassembles_split_reads_and_counts_noise() -> None:
    s = SlcanSniffer()
    out = s.feed(b"\r\aT12ABCDEF") + s.feed(b"2AA55\rT12") + s.feed(b"ABCDEF2AA55\r\xff\xfe\rt45\rV1013\r")
    assert out == [{"id": "0x12ABCDEF", "dlc": 2, "data": "aa55", "extended": True}] * 2
    assert s.frames == 2 and s.errors == {"noise": 1, "malformed": 1}
    s.feed(b"t" * 200)
    assert s.errors["overflow"] == 1


# -- cantools DBC vectors ---------------------------------------------------------------------------
def test_motohawk_example_message_decodes_exactly(published: Path) -> None:
    d = decoder(published, messages=["ExampleMessage"])
    # cantools test_motohawk_encode_decode: Temperature 250.55 degK, AverageRadius 3.2 m, Enable 1/"Enabled"
    assert d.decode(frame(496, "c006e00000000000"), 0.0) == {
        "temperature": round(250.55 - 273.15, 2), "average_radius": 3.2, "enable": "Enabled"}
    assert d.decode(frame(496, "0100200000000000"), 1.0) == {
        "temperature": round(229.53 - 273.15, 2), "average_radius": 0.0, "enable": "Disabled"}
    # test_motohawk_decode_truncated: two bytes of an 8-byte message are a DLC mismatch, not a reading
    assert d.decode(frame(496, "00ff"), 2.0) == {}
    assert d.errors == {"dlc": 1} and d.frames == 2


BATTERY_VT = [  # cantools test_decode_muxed_data (msxii_system_can.dbc, BATTERY_VT 0x401)
    ("000098980b00", {"battery_vt_index": 0, "module_voltage_00": 39064, "module_temp_00": 11}),
    ("0200b5980a00", {"battery_vt_index": 2, "module_voltage_02": 39093, "module_temp_02": 10}),
    ("0600359aea59", {"battery_vt_index": 6, "module_voltage_06": 39477, "module_temp_06": 23018}),
]


@pytest.mark.parametrize(("data", "values"), BATTERY_VT)
def test_multiplexed_bms_message_decodes_exactly(published: Path, data: str, values: dict[str, int]) -> None:
    d = decoder(published, messages=[0x401])
    assert d.decode(frame(0x401, data), 0.0) == values


def test_unknown_ids_error_frames_and_remote_frames_are_counted_not_fatal(published: Path) -> None:
    d = decoder(published, messages=["BATTERY_VT"])
    assert d.decode(frame(496, "c006e00000000000"), 0) == {}  # in the DBC but not forwarded: not an error
    assert d.decode(frame(0x7FF, "00"), 0) == {}
    assert d.decode(frame(0x401, "", dlc=6, is_remote_frame=True), 0) == {}
    assert d.decode(can.Message(arbitration_id=0x40, is_error_frame=True, dlc=8, data=bytes(8)), 0) == {}
    assert d.decode(can.Message(arbitration_id=0x04, is_error_frame=True, dlc=8, data=bytes(8)), 0) == {}
    assert d.decode(frame(0x401, "0000989800"), 0) == {}  # 5 of 6 bytes
    assert d.decode(frame(0x401, "0000", dlc=6), 0) == {}  # slcan line shorter than its DLC
    assert d.errors == {"unknown_id": 1, "bus_off": 1, "bus_error": 1, "dlc": 2}
    assert d.decode(frame(0x401, "000098980b00ffff"), 0)["module_voltage_00"] == 39064  # padded to 8: decoded


# -- names and units --------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "quantity"), [
    ("PackVoltage", "pack_voltage"), ("BMS_PackSOC", "bms_pack_soc"), ("MODULE_VOLTAGE_00", "module_voltage_00"),
    ("StateOfCharge", "state_of_charge"), ("HVBatteryCurrent", "hv_battery_current"), ("Temp2", "temp2"),
    ("2ndGear", "s_2nd_gear"), ("wheel-speed FL", "wheel_speed_fl"), ("__", "signal"),
])
def test_signal_names_become_snake_case_quantities(name: str, quantity: str) -> None:
    assert snake_case(name) == quantity


@pytest.mark.parametrize(("unit", "raw", "canonical", "value"), [
    ("V", 52.3, "V", 52.3), ("mV", 3712, "V", 3.712), ("A", -12.5, "A", -12.5), ("mA", 250, "A", 0.25),
    ("degC", 21.5, "°C", 21.5), ("°C", 21.5, "°C", 21.5), ("C", 21.5, "°C", 21.5), ("K", 293.15, "°C", 20.0),
    ("km/h", 36.0, "m/s", 10.0), ("kph", 18.0, "m/s", 5.0), ("%", 80.5, "%", 80.5), ("kW", 1.5, "W", 1500.0),
    ("km", 1234.5, "m", 1234500.0), ("rpm", 3000, "rpm", 3000), ("Nm", 12.5, "Nm", 12.5),
])
def test_dbc_units_map_to_canonical_units(unit: str, raw: float, canonical: str, value: float) -> None:
    got, scale, offset = canonical_unit(unit)
    assert got == canonical and math.isclose(raw * scale + offset, value)


def test_vehicle_dbc_values_round_to_the_dbc_resolution_in_canonical_units() -> None:
    db = load_dbc(VEHICLE_DBC)
    d = decoder(VEHICLE_DBC)
    pack = db.get_message_by_name("BMS_Pack").encode(
        {"PackVoltage": 52.3, "PackCurrent": -12.5, "StateOfCharge": 80, "BMS_State": "DISCHARGING"})
    assert d.decode(frame(0x100, pack), 0) == {"pack_voltage": 52.3, "pack_current": -12.5,
                                               "state_of_charge": 80.0, "bms_state": "DISCHARGING"}
    motor = db.get_message_by_name("MCU_Motor").encode(
        {"MotorSpeed": 2675, "MotorTorque": 4.2, "MotorCurrent": 8.4, "VehicleSpeed": 25.2})
    assert d.decode(frame(0xA0, motor), 0) == {"motor_speed": 2675, "motor_torque": 4.2, "motor_current": 8.4,
                                               "vehicle_speed": 7.0}
    cells = db.get_message_by_name("BMS_Cells").encode(
        {"CellVoltageMin": 3712, "CellVoltageMax": 3731, "CellTempMin": -5, "CellTempMax": 24})
    assert d.decode(frame(0x101, cells), 0) == {"cell_voltage_min": 3.712, "cell_voltage_max": 3.731,
                                                "cell_temp_min": -5, "cell_temp_max": 24}


def test_rename_and_colliding_names(tmp_path: Path) -> None:
    p = tmp_path / "c.dbc"
    p.write_text("""VERSION ""\n\nNS_ :\n\nBS_:\n\nBU_: A\n
BO_ 1 Motor: 2 A
 SG_ Counter : 0|8@1+ (1,0) [0|255] "" Vector__XXX
 SG_ Speed : 8|8@1+ (1,0) [0|255] "km/h" Vector__XXX
BO_ 2 Pack: 2 A
 SG_ Counter : 0|8@1+ (1,0) [0|255] "" Vector__XXX
 SG_ SoC : 8|8@1+ (1,0) [0|100] "%" Vector__XXX
""")
    d = decoder(p, rename={"SoC": "state_of_charge", "Speed": "speed"})
    assert d.decode(frame(1, "0724"), 0) == {"motor_counter": 7, "speed": 10.0}
    assert d.decode(frame(2, "0850"), 0) == {"pack_counter": 8, "state_of_charge": 80}
    d = decoder(p, rename={"SoC": "speed"})  # a renamed signal keeps the name; the other one is prefixed
    assert d.decode(frame(1, "0724"), 0) == {"motor_counter": 7, "motor_speed": 10.0}
    with pytest.raises(DbcError) as e:
        decoder(p, rename={"SoC": "x", "Speed": "x"})
    assert e.value.key == "rename.SoC" and "also Motor.Speed" in str(e.value)


# -- rate limits ----------------------------------------------------------------------------------
def _pack(v: float) -> can.Message:
    db = load_dbc(VEHICLE_DBC)
    return frame(0x100, db.get_message_by_name("BMS_Pack").encode(
        {"PackVoltage": v, "PackCurrent": 0, "StateOfCharge": 50, "BMS_State": "IDLE"}))


def test_min_interval_deadband_and_max_interval_per_signal() -> None:
    d = decoder(VEHICLE_DBC, messages=["BMS_Pack"], min_interval=1.0, max_interval=10.0,
                signals={"PackVoltage": {"deadband": 0.05}, "BMS_State": {"min_interval": "5s"}})
    got = [(t, d.decode(_pack(v), t)) for t, v in
           [(0.0, 52.0), (0.5, 52.5), (1.0, 52.03), (1.5, 52.1), (2.6, 52.12), (5.0, 52.12), (12.0, 52.12)]]
    assert got == [
        (0.0, {"pack_voltage": 52.0, "pack_current": 0.0, "state_of_charge": 50.0, "bms_state": "IDLE"}),
        (0.5, {}),  # min_interval 1 s
        (1.0, {"pack_current": 0.0, "state_of_charge": 50.0}),  # 52.03 is within the 0.05 V deadband
        (1.5, {"pack_voltage": 52.1}),  # moved 0.1 V, 1.5 s after the last one sent
        (2.6, {"pack_current": 0.0, "state_of_charge": 50.0}),  # 0.02 V: inside the deadband
        (5.0, {"pack_current": 0.0, "state_of_charge": 50.0, "bms_state": "IDLE"}),
        (12.0, {"pack_voltage": 52.12, "pack_current": 0.0, "state_of_charge": 50.0, "bms_state": "IDLE"}),
    ]  # at 12 s: unchanged for 10.5 s > max_interval, so sent anyway (the platform sees it alive)


# -- config ---------------------------------------------------------------------------------------
def _config(tmp_path: Path, device: str) -> Path:
    p = tmp_path / "agent.toml"
    p.write_text(f'[gateway]\nid = "gw"\n\n[[devices]]\nid = "bus"\ndriver = "can"\n{device}\n')
    return p


@pytest.mark.parametrize(("device", "key", "why"), [
    ('port = "/dev/ttyACM0"\ndbc = "missing.dbc"', "devices[0].dbc", "file not found"),
    ('port = "/dev/ttyACM0"\ndbc = "bad.dbc"', "devices[0].dbc", "not a usable DBC"),
    ('port = "/dev/ttyACM0"', "devices[0].dbc", "Field required"),
    ('port = "/dev/ttyACM0"\ndbc = "good.dbc"\nmessages = ["ExampleMessage", "Nope"]', "devices[0].messages[1]",
     "no message 'Nope'"),
    ('port = "/dev/ttyACM0"\ndbc = "good.dbc"\nmessages = [0x123]', "devices[0].messages[0]", "no message 0x123"),
    ('port = "/dev/ttyACM0"\ndbc = "good.dbc"\nsignals = { Nope = { deadband = 1 } }', "devices[0].signals.Nope",
     "no such signal"),
    ('port = "/dev/ttyACM0"\ndbc = "good.dbc"\nbitrate = 400000', "devices[0].bitrate", "not an slcan bitrate"),
    ('port = "/dev/ttyACM0"\ndbc = "good.dbc"\nrename = { Enable = "Bad Name" }', "devices[0].rename.Enable",
     "pattern"),
    ('interface = "socketcan"\ndbc = "good.dbc"', "devices[0].channel", "required"),
    ('interface = "socketcan"\nchannel = "can0"\nport = "/dev/ttyACM0"\ndbc = "good.dbc"', "devices[0].port",
     "not used"),
    ('dbc = "good.dbc"', "devices[0].port", "required"),
])
def test_config_errors_exit_78_naming_the_key(tmp_path: Path, device: str, key: str, why: str) -> None:
    (tmp_path / "good.dbc").write_text(PUBLISHED_DBC)
    (tmp_path / "bad.dbc").write_text("BO_ this is not a DBC\n")
    r = run_cli("config", "check", _config(tmp_path, device))
    assert r.code == 78, r.out + r.err
    line = next((ln for ln in r.err.splitlines() if key in ln), "")
    assert why in line, r.err


def test_relative_dbc_path_resolves_against_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "dbc").mkdir()
    (tmp_path / "dbc" / "ev.dbc").write_text(PUBLISHED_DBC)
    cfg = _config(tmp_path, 'port = "/dev/ttyACM0"\ndbc = "dbc/ev.dbc"\ninterface = "slcan"')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cwd = os.getcwd()
    os.chdir(elsewhere)
    try:
        r = run_cli("config", "check", cfg)
        shown = run_cli("config", "show", "--json", "--config", cfg).json()
    finally:
        os.chdir(cwd)
    assert r.code == 0, r.err
    assert shown["devices"][0]["dbc"] == str(tmp_path / "dbc" / "ev.dbc")


# -- simulator --------------------------------------------------------------------------------------
def test_simulated_bus_rates_and_ride_physics() -> None:
    ticks = [fr for _, (_, fr) in zip(range(100 * 65), bus_frames(), strict=False)]  # one 65 s ride cycle
    frames = [f for t in ticks for f in t]
    assert 515 <= len(frames) / 65 <= 525  # ~520 frames/s, as a small EV's bus
    d = decoder(VEHICLE_DBC)
    for f in frames:
        d.decode(frame(f.arbitration_id, f.data), 0)
    assert d.errors == {"unknown_id": 65}  # the vendor heartbeat the DBC does not describe, 1 Hz
    r = Ride()
    speeds, socs = [], []
    for _ in range(6500):
        r.step(0.01)
        speeds.append(r.speed)
        socs.append(r.soc)
    assert max(speeds) == pytest.approx(7.0, abs=0.05) and speeds[-1] == 0.0
    assert socs[-1] < socs[0]  # the ride drew charge
    assert ocv(100) > ocv(50) > ocv(0)


def test_slcan_adapter_answers_commands_like_a_canable() -> None:
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    ad = SlcanAdapter(master).start()
    try:
        def ask(cmd: bytes) -> bytes:
            os.write(slave, cmd)
            deadline, got = time.monotonic() + 5, b""
            while not got.endswith((b"\r", b"\a")) and time.monotonic() < deadline:
                got += os.read(slave, 64)
            return got

        assert ask(b"O\r") == b"\a"  # no bitrate yet
        assert ask(b"S6\r") == b"\r"
        assert ask(b"V\r") == b"V1013\r"
        assert ask(b"\r") == b"\a"
        assert ask(b"t1230\r") == b"\a"  # closed: cannot transmit
        os.write(slave, b"L\rS5\rt1230\r")  # open listen-only; then a bitrate change and a transmit: refused
        stream, deadline = b"", time.monotonic() + 5
        while (stream.count(b"\a") < 2 or stream.count(b"\r") < 8) and time.monotonic() < deadline:
            stream += os.read(slave, 4096)
        assert stream.startswith(b"\r") and stream.count(b"\a") == 2  # L accepted, S5 and t refused
        lines = [x for x in stream.replace(b"\a", b"").split(b"\r")[1:-1] if x]
        assert len(lines) >= 5 and all(parse_slcan(x.decode()) is not None for x in lines)
        assert ad.transmitted == 0 and ad.open_mode == "L" and ad.bitrate == 500000
    finally:
        ad.stop()
        os.close(master)
        os.close(slave)


# -- fuzz -------------------------------------------------------------------------------------------
@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_sniffer_never_raises(data: bytes) -> None:
    s = SlcanSniffer()
    for i in range(0, len(data), 37):
        s.feed(data[i:i + 37])


@FUZZ
@given(st.text(alphabet="tTrRdDbBx0123456789abcdefABCDEFG\x07 ", max_size=40))
def test_fuzz_slcan_lines_parse_or_refuse(line: str) -> None:
    f = parse_slcan(line)
    if f is not None:
        assert parse_slcan(slcan_line(f).decode()[:-1]) == f


_FUZZ_DECODER: dict[str, CanDecoder] = {}
_lock = threading.Lock()


@FUZZ
@given(st.sampled_from([0xA0, 0xA1, 0xA2, 0x100, 0x101, 0x200, 0x210, 0x300, 0x5F0, 0x7FF]),
       st.binary(max_size=8), st.booleans(), st.integers(0, 8))
def test_fuzz_frames_never_raise_and_values_are_finite(fid: int, data: bytes, ext: bool, dlc: int) -> None:
    with _lock:
        d = _FUZZ_DECODER.setdefault("v", decoder(VEHICLE_DBC))
    out = d.decode(can.Message(arbitration_id=fid, data=data, is_extended_id=ext, dlc=dlc), time.monotonic())
    for k, v in out.items():
        assert isinstance(k, str) and (isinstance(v, str) or math.isfinite(v))


def test_every_forwarded_quantity_is_a_valid_key() -> None:
    plans = build_plans(load_dbc(VEHICLE_DBC), CanOptions(dbc=VEHICLE_DBC))
    names = [s.quantity for p in plans.values() for s in p.signals]
    assert len(names) == len(set(names)) == 27
    assert all(snake_case(n) == n for n in names)


# -- the socketcan path (python-can's bus in a reader thread), on python-can's virtual interface ----
async def test_socketcan_path_decodes_through_the_reader_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from agent.config import DeviceConfig
    from drivers.base import DeviceContext
    from drivers.can import driver as drv
    from tests.support.wait import until

    channel = f"edge-test-{os.getpid()}"

    async def open_virtual(self: drv.CanDriver) -> drv._Socketcan:
        return await drv._Socketcan.open(channel, interface="virtual")

    monkeypatch.setattr(drv.CanDriver, "_open", open_virtual)
    dev = DeviceConfig.model_validate({"id": "bus", "driver": "can", "interface": "socketcan", "channel": "can0",
                                       "dbc": str(VEHICLE_DBC), "messages": ["BMS_Pack"], "min_interval": 0})
    got: list[Any] = []
    ctx = DeviceContext(dev, got.append)
    task = asyncio.create_task(drv.CanDriver(dev, ctx).run())
    sender = can.Bus(interface="virtual", channel=channel)
    try:
        await until(lambda: ctx.link == "connected", 10, "bus open")
        for v in (52.0, 52.1):
            sender.send(_pack(v))
        sender.send(can.Message(arbitration_id=0x40, is_error_frame=True, dlc=8, data=bytes(8)))
        sender.send(frame(0x7FF, "00"))
        await until(lambda: len(got) == 2 and sum(ctx.errors.values()) == 2, 10, "2 readings, 2 errors")
        assert [r.values["pack_voltage"] for r in got] == [52.0, 52.1]
        assert ctx.errors == {"bus_off": 1, "unknown_id": 1}
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sender.shutdown()


async def test_an_adapter_refusing_listen_only_is_reported_with_the_fix() -> None:
    import asyncio

    from drivers.base import DeviceContext
    from drivers.can.driver import CanDriver
    from edge_common.device import DeviceConfig
    from tests.support.pty import PtyDevice
    from tests.support.wait import until

    pty = PtyDevice()
    adapter = SlcanAdapter(pty.master, listen_only_command=False).start()  # e.g. stock CANable 2.0 firmware
    dev = DeviceConfig.model_validate({"id": "bus", "driver": "can", "port": pty.port, "dbc": str(VEHICLE_DBC),
                                       "open_delay": 0})
    ctx = DeviceContext(dev, lambda r: None)
    task = asyncio.create_task(CanDriver(dev, ctx).run())
    try:
        await until(lambda: ctx.link_detail.endswith("the adapter refused to open the channel (L); set "
                                                     "listen_only = false if it lacks the slcan L command"),
                    10, "the refusal reported")
        assert ctx.link == "disconnected" and adapter.open_mode is None and adapter.transmitted == 0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        adapter.stop()
        pty.close()


def test_the_schema_and_config_check_agree_on_socketcan(tmp_path: Path) -> None:
    """socketcan reads `channel`, slcan `port`: the JSON Schema says so too (editors), not only `config check`."""
    import jsonschema

    from agent.config import json_schema, parse_config
    from agent.errors import ConfigError

    (tmp_path / "good.dbc").write_text(PUBLISHED_DBC)
    validator = jsonschema.Draft202012Validator(json_schema())
    dbc = str(tmp_path / "good.dbc")
    for dev, ok in [({"interface": "socketcan", "channel": "can0"}, True), ({"port": "/dev/ttyACM0"}, True),
                    ({"interface": "socketcan"}, False), ({}, False)]:
        doc = {"gateway": {"id": "gw"}, "devices": [{"id": "bus", "driver": "can", "dbc": dbc, **dev}]}
        assert (list(validator.iter_errors(doc)) == []) is ok, dev
        if ok:
            parse_config(doc, check_files=False)
        else:
            with pytest.raises(ConfigError, match=r"devices\[0\]\.(channel|port): required"):
                parse_config(doc, check_files=False)
