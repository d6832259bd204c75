"""Pure decoders of the serial families against published vectors, noise, corruption and splits."""

from __future__ import annotations

import itertools
import random

import pytest

from drivers.lines import simulator as lsim
from drivers.lines.protocol import LinesOptions, LinesProtocol
from drivers.modbus import protocol as mb
from drivers.modbus.simulator import RegisterSlave, S8Slave, s8_bus_bytes, s8_request
from drivers.pms5003 import simulator as psim
from drivers.pms5003.protocol import Pms5003Protocol
from drivers.sds011 import protocol as sds
from drivers.sds011 import simulator as ssim

# -- PMS5003: frames published with their decoded values -------------------------------------
PMS_VECTORS = [
    # Realtek Ameba PMS3003 API doc (raw data walk-through): atm 0x1a, 0x21, 0x29
    ("42 4d 00 1c 00 1b 00 21 00 29 00 1a 00 21 00 29 2b fb 04 be 00 6b 00 10 00 04 00 04 67 00 04 46",
     {"pm1_0": 26, "pm2_5": 33, "pm10": 41}),
    # RT-Thread pmsxx package README, raw response
    ("42 4d 00 1c 00 03 00 04 00 07 00 04 00 05 00 08 03 1b 00 f9 00 1b 00 06 00 03 00 03 9a 00 02 a2",
     {"pm1_0": 4, "pm2_5": 5, "pm10": 8}),
    # aqi_data_parser unit test "g7frame"
    ("42 4D 00 1C 00 45 00 62 00 6B 00 2D 00 41 00 52 2D A2 0A F8 01 B2 00 2E 00 04 00 03 67 00 05 9D",
     {"pm1_0": 45, "pm2_5": 65, "pm10": 82}),
    # PMS5003 sample output in a sensor wiki (all zero, reserved word 0x9700)
    ("42 4d 00 1c 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 97 00 01 42",
     {"pm1_0": 0, "pm2_5": 0, "pm10": 0}),
]
# Printed in a project README, but its checksum (0x01AB) does not match the bytes (0x02F8).
PMS_BAD_PUBLISHED = "42 4D 00 1C 00 0E 00 13 00 14 00 0E 00 13 00 14 01 5A 00 EB 00 5B 00 2E 00 0E 00 04 00 02 01 AB"


@pytest.mark.parametrize(("hexframe", "values"), PMS_VECTORS)
def test_pms5003_published_vectors(hexframe: str, values: dict[str, int]) -> None:
    p = Pms5003Protocol()
    assert p.feed(bytes.fromhex(hexframe)) == [values]
    assert not p.errors and p.frames == 1


def test_pms5003_rejects_bad_published_checksum() -> None:
    p = Pms5003Protocol()
    assert p.feed(bytes.fromhex(PMS_BAD_PUBLISHED)) == []
    assert p.errors["checksum"] == 1


def test_pms5003_command_ack_is_not_a_reading() -> None:
    p = Pms5003Protocol()
    ack = bytes.fromhex("42 4d 00 04 e1 00 01 74")  # passive-mode ack
    assert p.feed(ack + bytes.fromhex(PMS_VECTORS[0][0])) == [PMS_VECTORS[0][1]]
    assert p.acks == 1 and not p.errors


# -- SDS011: the Laser Dust Sensor Control Protocol V1.3 examples ---------------------------
def test_sds011_datasheet_reply() -> None:
    p = sds.Sds011Protocol()
    assert p.feed(bytes.fromhex("AA C0 D4 04 3A 0A A1 60 1D AB")) == [{"pm2_5": 123.6, "pm10": 261.8}]
    assert sds.data_frame(1236, 2618, 0xA160) == bytes.fromhex("AA C0 D4 04 3A 0A A1 60 1D AB")


@pytest.mark.parametrize(("built", "hexcmd"), [
    (sds.command(b"\x02\x01\x01", 0xA160), "AA B4 02 01 01 00 00 00 00 00 00 00 00 00 00 A1 60 05 AB"),
    (sds.command(b"\x04", 0xFFFF), "AA B4 04 00 00 00 00 00 00 00 00 00 00 00 00 FF FF 02 AB"),
    (sds.command(b"\x06\x01\x01", 0xA160), "AA B4 06 01 01 00 00 00 00 00 00 00 00 00 00 A1 60 09 AB"),
    (sds.set_working_period(1, 0xA160), "AA B4 08 01 01 00 00 00 00 00 00 00 00 00 00 A1 60 0B AB"),
    (sds.set_working_period(0, 0xA160), "AA B4 08 01 00 00 00 00 00 00 00 00 00 00 00 A1 60 0A AB"),
    (sds.set_work(0xA160), "AA B4 06 01 01 00 00 00 00 00 00 00 00 00 00 A1 60 09 AB"),
])
def test_sds011_datasheet_commands(built: bytes, hexcmd: str) -> None:
    assert built == bytes.fromhex(hexcmd)


def test_sds011_command_replies_are_not_readings() -> None:
    p = sds.Sds011Protocol()
    replies = bytes.fromhex("AA C5 02 00 00 00 A1 60 03 AB AA C5 08 01 01 00 A1 60 0B AB")
    assert p.feed(replies) == [] and p.replies == 2 and not p.errors


# -- Senseair S8 ("Modbus on Senseair S8": read CO2 request and a 400 ppm reply) -------------
def test_s8_published_request_and_reply() -> None:
    assert s8_request() == bytes.fromhex("FE 04 00 03 00 01 D5 C5")
    assert mb.read_request(0xFE, 4, 3, 1) == bytes.fromhex("FE 04 00 03 00 01 D5 C5")
    reply = S8Slave(co2=400).respond(s8_request())
    assert reply == bytes.fromhex("FE 04 02 01 90 AC D8")
    assert mb.parse_reply(s8_request(), bytes.fromhex("FE 04 02 01 90 AC D8")) == [400]
    with pytest.raises(mb.ModbusReplyError) as e:
        mb.parse_reply(s8_request(), bytes.fromhex("FE 04 02 01 90 AC D9"))
    assert e.value.kind == "crc"


def test_modbus_crc_reference() -> None:
    # CRC-16/MODBUS check value for "123456789" is 0x4B37.
    assert mb.crc16(b"123456789") == 0x4B37


# -- interleaving noise and corruption --------------------------------------------------------
def _corrupt(frame: bytes, rnd: random.Random) -> bytes:
    b = bytearray(frame)
    i = rnd.randrange(2, len(b))  # keep the header so the decoder must reject on checksum
    b[i] ^= 1 << rnd.randrange(8)
    return bytes(b)


FAMILIES = {
    "pms5003": (Pms5003Protocol, lambda: ((psim.frame_bytes(s), s.values()) for s in psim.samples())),
    "sds011": (sds.Sds011Protocol, lambda: ((ssim.frame_bytes(s), s.values()) for s in ssim.samples())),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_noise_and_corrupt_frames_interleaved(family: str) -> None:
    make, gen = FAMILIES[family]
    rnd = random.Random(7)
    stream = bytearray()
    want = []
    corrupt = 0
    for frame, values in itertools.islice(gen(), 300):
        r = rnd.random()
        if r < 0.2:
            stream += bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 40)))  # line noise
        elif r < 0.3:
            stream += _corrupt(frame, rnd)
            corrupt += 1
        elif r < 0.35:
            stream += frame[: rnd.randrange(1, len(frame))]  # truncated frame
        stream += frame
        want.append(values)
    p = make()
    got = []
    pos = 0
    while pos < len(stream):  # arbitrary chunking, as a serial port delivers
        n = rnd.randrange(1, 64)
        got += p.feed(bytes(stream[pos : pos + n]))
        pos += n
    # Random noise can, rarely, contain a valid frame; with this seed it does not.
    assert got == want
    assert p.frames == 300
    assert p.errors["checksum"] + p.errors["malformed"] >= corrupt


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_split_point(family: str) -> None:
    make, gen = FAMILIES[family]
    frames = list(itertools.islice(gen(), 3))
    data = b"".join(f for f, _ in frames)
    for cut in range(len(data) + 1):
        p = make()
        assert p.feed(data[:cut]) + p.feed(data[cut:]) == [v for _, v in frames]


# -- lines ------------------------------------------------------------------------------------
def _lines(**kw: object) -> LinesProtocol:
    return LinesProtocol(LinesOptions.model_validate({"fields": lsim.FIELDS, **kw}))


@pytest.mark.parametrize("fmt", ["json", "csv", "kv"])
def test_lines_simulator_round_trip(fmt: str) -> None:
    p = _lines()
    ss = list(itertools.islice(lsim.samples(), 20))
    data = (lsim.CSV_HEADER if fmt == "csv" else b"") + b"".join(lsim.line_bytes(s, fmt) for s in ss)  # type: ignore[arg-type]
    got = []
    for i in range(0, len(data), 7):
        got += p.feed(data[i : i + 7])
    assert got == [s.values() for s in ss]
    assert not p.errors


def test_lines_scale_offset_unit_and_unknown_fields() -> None:
    opts = {
        "fields": {"t": {"quantity": "temperature", "unit": "°F"},
                   "p": {"quantity": "pressure", "unit": "kPa"},
                   "v": {"quantity": "voltage", "scale": 0.001}},
        "unknown_fields": "keep",
    }
    p = LinesProtocol(opts)
    out = p.feed(b'{"t": 212, "p": 101.325, "v": 3300, "Fw Ver": "1.2b", "ok": true, "nest": {"a": 1}}\n'
                 b"t=32 p=100 v=12000 state=idle\n")
    assert out == [
        {"temperature": 100.0, "pressure": 1013.25, "voltage": 3.3, "fw_ver": "1.2b", "ok": True},
        {"temperature": 0.0, "pressure": 1000.0, "voltage": 12.0, "state": "idle"},
    ]
    ignore = LinesProtocol({**opts, "unknown_fields": "ignore"})
    assert ignore.feed(b'{"t": 212, "x": 1}\n') == [{"temperature": 100.0}]
    assert ignore.ignored == 1


def test_lines_csv_configured_columns_header_again_and_errors() -> None:
    p = LinesProtocol({"columns": ["temp_c", "rh"], "fields": {"temp_c": {"quantity": "temperature"},
                                                                "rh": {"quantity": "humidity"}}})
    out = p.feed(b"21.5,40\r\n21.6\r\n\xff\xfe,1\r\nabc,41\r\n# comment\r\n\r\n21.7,42\r\n")
    assert out == [{"temperature": 21.5, "humidity": 40}, {"humidity": 41}, {"temperature": 21.7, "humidity": 42}]
    assert p.errors == {"columns": 1, "malformed": 1, "value": 1}
    h = LinesProtocol({"fields": {"a": {}, "b": {}}})
    assert h.feed(b"1,2\na,b\n1,2\nb,a\n1,2\n") == [{"a": 1, "b": 2}, {"a": 2, "b": 1}]
    assert h.errors == {"columns": 1}  # data before any header


def test_lines_overlong_line_is_dropped_and_counted() -> None:
    p = LinesProtocol({"fields": {"a": {}}, "max_line": 64})
    assert p.feed(b"a=1\n" + b"x" * 100) == [{"a": 1}]
    assert p.feed(b"y" * 100 + b"\na=2\n") == [{"a": 2}]
    assert p.errors == {"overflow": 1}


def test_lines_options_validation() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="unknown unit"):
        LinesOptions.model_validate({"fields": {"a": {"unit": "furlongs"}}})
    with pytest.raises(ValidationError, match="nothing would be read"):
        LinesOptions.model_validate({})
    with pytest.raises(ValidationError):
        LinesOptions.model_validate({"fields": {"a": {}}, "bogus": 1})

    class Plain:  # a plain config object (the BLE NUS driver passes its own options)
        format = "kv"
        fields = {"a": {"quantity": "co2"}}
        unknown_fields = "ignore"
        address = "AA:BB:CC:DD:EE:FF"

    assert LinesProtocol(Plain()).feed(b"a=5\n") == [{"co2": 5}]


# -- modbus register decoding -----------------------------------------------------------------
@pytest.mark.parametrize(("reg", "words", "value"), [
    ({"type": "uint16"}, [0xFFFF], 65535),
    ({"type": "int16"}, [0xFFFF], -1),
    ({"type": "int16", "scale": 0.1}, [0xFF38], -20.0),
    ({"type": "uint32"}, [0x0001, 0x0002], 65538),
    ({"type": "uint32", "word_order": "little"}, [0x0002, 0x0001], 65538),
    ({"type": "int32"}, [0xFFFF, 0xFFFE], -2),
    ({"type": "float32"}, [0x43DB, 0x8C2E], 439.0952),  # SCD30 interface description: ~439 ppm
    ({"type": "float32"}, [0x41D9, 0xE7FF], 27.23828),  # ~27.2 °C
    ({"type": "float32", "word_order": "little"}, [0x3A1B, 0x4243], 48.80674),  # ~48.8 %RH, words swapped
    ({"type": "uint16", "scale": 0.01, "offset": -40}, [6540], 25.4),
    ({"type": "float32"}, [0x7FC0, 0x0000], None),  # NaN is dropped
])
def test_modbus_decode(reg: dict[str, object], words: list[int], value: float | None) -> None:
    r = mb.Register.model_validate({"quantity": "x", "address": 0, **reg})
    assert mb.decode_register(r, words) == value


def test_modbus_plan_reads_groups_and_splits() -> None:
    regs = [mb.Register(quantity=f"q{a}", address=a, function=3, type="uint16") for a in (0, 1, 5, 40, 200)]
    regs.append(mb.Register(quantity="f", address=2, function=4, type="float32"))
    blocks = mb.plan_reads(regs)
    assert [(b.function, b.address, b.count) for b in blocks] == [(3, 0, 6), (3, 40, 1), (3, 200, 1), (4, 2, 2)]
    words = list(range(100, 106))
    assert mb.decode_block(blocks[0], words) == {"q0": 100, "q1": 101, "q5": 105}


def test_register_slave_exceptions_and_silence() -> None:
    s = RegisterSlave(1, holding={0: 7})
    assert s.respond(mb.read_request(1, 3, 0, 1)) == mb.reply(1, 3, [7])
    assert s.respond(mb.read_request(1, 3, 1, 1)) == mb.exception_reply(1, 3, 2)
    assert s.respond(mb.read_request(2, 3, 0, 1)) is None  # not addressed
    bad = bytearray(mb.read_request(1, 3, 0, 1))
    bad[-1] ^= 1
    assert s.respond(bytes(bad)) is None  # bad CRC: a slave stays silent


def test_rtu_sniffer_pairs_requests_and_replies_through_noise() -> None:
    p = mb.RtuSniffer()
    data = b"\x00\x13\x37" + s8_bus_bytes(612) + b"\xff" + s8_bus_bytes(615)
    got = []
    for i in range(0, len(data), 3):
        got += p.feed(data[i : i + 3])
    assert got == [{"slave": 0xFE, "function": 4, "ir3": 612}, {"slave": 0xFE, "function": 4, "ir3": 615}]
    assert p.requests == 2


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("key", ["scale", "offset"])
def test_scale_and_offset_must_be_finite(key: str, bad: float) -> None:
    from pydantic import ValidationError

    from drivers.lines.protocol import FieldMap

    with pytest.raises(ValidationError, match="finite number"):
        FieldMap(**{key: bad})
    with pytest.raises(ValidationError, match="finite number"):
        mb.Register(quantity="co2", address=3, **{key: bad})
    assert getattr(mb.Register(quantity="co2", address=3, **{key: 2.5}), key) == 2.5
