"""Property-based fuzzing of every serial protocol decoder: no exception escapes, every output is valid.

FUZZ_EXAMPLES (env) sets the number of inputs per property (default 200 to keep the suite fast).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.model import Reading, encode_reading
from drivers.base import StreamProtocol
from drivers.lines import simulator as lsim
from drivers.lines.protocol import LinesProtocol
from drivers.modbus import protocol as mb
from drivers.modbus.simulator import s8_bus_bytes, s8_request
from drivers.nmea.protocol import NmeaProtocol
from drivers.nmea.simulator import epoch_bytes, expected_values, fixes
from drivers.pms5003 import simulator as psim
from drivers.pms5003.protocol import Pms5003Protocol
from drivers.sds011 import simulator as ssim
from drivers.sds011.protocol import Sds011Protocol

N = int(os.environ.get("FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=N, deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)
KEY = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
COUNTS: dict[str, int] = {}

DECODERS: dict[str, Callable[[], StreamProtocol]] = {
    "nmea": NmeaProtocol,
    "pms5003": Pms5003Protocol,
    "sds011": Sds011Protocol,
    "modbus_sniffer": mb.RtuSniffer,
    "lines_auto_keep": lambda: LinesProtocol({"unknown_fields": "keep"}),
    "lines_csv_mapped": lambda: LinesProtocol({"format": "csv", "fields": lsim.FIELDS}),
    "lines_kv_scaled": lambda: LinesProtocol({"format": "kv", "fields": {
        "t": {"quantity": "temperature", "unit": "°F", "scale": 0.1}, "v": {"quantity": "voltage", "unit": "mV"}}}),
}


def _valid(values: dict[str, object]) -> None:
    assert isinstance(values, dict) and values
    for k, v in values.items():
        assert isinstance(k, str) and KEY.match(k), k
        assert isinstance(v, bool | int | float | str), (k, v)
        if isinstance(v, float):
            assert math.isfinite(v), (k, v)
    r = Reading(device="fuzz", driver="fuzz", values=values)  # type: ignore[arg-type]
    json.loads(encode_reading(1, r))


def _run(name: str, chunks: list[bytes]) -> list[dict[str, object]]:
    COUNTS[name] = COUNTS.get(name, 0) + 1
    p = DECODERS[name]()
    out: list[dict[str, object]] = []
    for c in chunks:
        out += p.feed(c)
    out += p.flush()
    for v in out:
        _valid(v)
    assert all(n >= 0 for n in p.errors.values())
    return out


chunks_st = st.lists(st.binary(max_size=300), max_size=12)


@FUZZ
@given(chunks=chunks_st)
def test_fuzz_nmea_raw(chunks: list[bytes]) -> None:
    _run("nmea", chunks)


@FUZZ
@given(chunks=chunks_st)
def test_fuzz_pms5003_raw(chunks: list[bytes]) -> None:
    _run("pms5003", chunks)


@FUZZ
@given(chunks=chunks_st)
def test_fuzz_sds011_raw(chunks: list[bytes]) -> None:
    _run("sds011", chunks)


@FUZZ
@given(chunks=chunks_st)
def test_fuzz_modbus_sniffer_raw(chunks: list[bytes]) -> None:
    _run("modbus_sniffer", chunks)


text_st = st.lists(st.text(alphabet=st.sampled_from(list('{}[]":,=;. -+eE0123456789abtvxyz_\r\n\t\\')) | st.characters(),
                           max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")), max_size=10)


@FUZZ
@given(chunks=text_st | chunks_st)
def test_fuzz_lines_auto(chunks: list[bytes]) -> None:
    _run("lines_auto_keep", chunks)


@FUZZ
@given(chunks=text_st | chunks_st)
def test_fuzz_lines_csv(chunks: list[bytes]) -> None:
    _run("lines_csv_mapped", chunks)


@FUZZ
@given(chunks=text_st | chunks_st)
def test_fuzz_lines_kv(chunks: list[bytes]) -> None:
    _run("lines_kv_scaled", chunks)


# -- structured: valid frames between noise that cannot start a frame; all valid ones delivered --
def _interleave(frames: list[bytes], noise: list[bytes], cuts: list[int]) -> list[bytes]:
    stream = b"".join(n + f for n, f in zip(noise, frames, strict=False)) + b"".join(noise[len(frames):])
    if len(noise) < len(frames):
        stream += b"".join(frames[len(noise):])
    out, pos = [], 0
    for c in cuts:
        out.append(stream[pos : pos + c])
        pos += c
    out.append(stream[pos:])
    return out


@FUZZ
@given(n=st.integers(1, 8), noise=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"B", b"")), max_size=9),
       cuts=st.lists(st.integers(1, 50), max_size=20), seed=st.integers(0, 10_000))
def test_fuzz_pms5003_valid_frames_survive_noise(n: int, noise: list[bytes], cuts: list[int], seed: int) -> None:
    ss = [s for _, s in zip(range(n), psim.samples(seed), strict=False)]
    got = _run("pms5003", _interleave([psim.frame_bytes(s) for s in ss], noise, cuts))
    assert got == [s.values() for s in ss]


@FUZZ
@given(n=st.integers(1, 8), noise=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\xaa", b"")), max_size=9),
       cuts=st.lists(st.integers(1, 50), max_size=20), seed=st.integers(0, 10_000))
def test_fuzz_sds011_valid_frames_survive_noise(n: int, noise: list[bytes], cuts: list[int], seed: int) -> None:
    ss = [s for _, s in zip(range(n), ssim.samples(seed), strict=False)]
    got = _run("sds011", _interleave([ssim.frame_bytes(s) for s in ss], noise, cuts))
    assert got == [s.values() for s in ss]


@FUZZ
@given(n=st.integers(1, 5), noise=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"$", b"")), max_size=6),
       cuts=st.lists(st.integers(1, 80), max_size=20), seed=st.integers(0, 10_000))
def test_fuzz_nmea_valid_epochs_survive_noise(n: int, noise: list[bytes], cuts: list[int], seed: int) -> None:
    fs = [f for _, f in zip(range(n), fixes(start=1_790_000_000.0 + seed), strict=False)]
    got = _run("nmea", _interleave([epoch_bytes(f) for f in fs], noise, cuts))
    assert got == [expected_values(f) for f in fs]


@FUZZ
@given(data=st.binary(max_size=40), count=st.integers(1, 4))
def test_fuzz_modbus_parse_reply_only_raises_its_error(data: bytes, count: int) -> None:
    COUNTS["modbus_parse_reply"] = COUNTS.get("modbus_parse_reply", 0) + 1
    try:
        words = mb.parse_reply(mb.read_request(0xFE, 4, 3, count), data)
    except mb.ModbusReplyError as e:
        assert e.kind in ("crc", "exception", "malformed")
    else:
        assert len(words) == count and all(0 <= w <= 0xFFFF for w in words)


@FUZZ
@given(words=st.lists(st.integers(0, 0xFFFF), min_size=2, max_size=2),
       typ=st.sampled_from(["int16", "uint16", "int32", "uint32", "float32"]),
       order=st.sampled_from(["big", "little"]),
       scale=st.floats(-1e6, 1e6, allow_nan=False), offset=st.floats(-1e6, 1e6, allow_nan=False))
def test_fuzz_modbus_register_decode(words: list[int], typ: str, order: str, scale: float, offset: float) -> None:
    COUNTS["modbus_decode"] = COUNTS.get("modbus_decode", 0) + 1
    reg = mb.Register.model_validate({"quantity": "q", "address": 0, "type": typ, "word_order": order,
                                      "scale": scale, "offset": offset})
    values = mb.decode_block(mb.plan_reads([reg])[0], words)
    if values:
        _valid(values)


def test_modbus_sniffer_on_s8_bus_still_decodes_after_fuzz() -> None:
    p = mb.RtuSniffer()
    assert p.feed(s8_request() + s8_bus_bytes(777)[8:]) == [{"slave": 0xFE, "function": 4, "ir3": 777}]


def test_zz_report_fuzz_counts() -> None:
    """Prints how many inputs each decoder saw in this run (pytest -s shows it)."""
    print("\nfuzz inputs per decoder:", dict(sorted(COUNTS.items())), "total", sum(COUNTS.values()))
