"""Decode rate per protocol on one core: frames/s through each pure decoder (python benchmarks/decode.py).

Beside each rate: the frames/s the serial line itself can carry at the family's usual baud (10 bits
per byte, 8N1), the physical limit a decoder has to keep up with.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

from drivers.base import StreamProtocol
from drivers.jbd_bms import simulator as jsim
from drivers.jbd_bms.protocol import JbdProtocol
from drivers.lines import simulator as lsim
from drivers.lines.protocol import LinesProtocol
from drivers.modbus import protocol as mb
from drivers.modbus.simulator import co2_values, s8_bus_bytes
from drivers.nmea.protocol import NmeaProtocol
from drivers.nmea.simulator import epoch_bytes, fixes
from drivers.obd2 import simulator as osim
from drivers.obd2.protocol import Elm327Protocol
from drivers.pms5003 import simulator as psim
from drivers.pms5003.protocol import Pms5003Protocol
from drivers.sds011 import simulator as ssim
from drivers.sds011.protocol import Sds011Protocol
from drivers.vesc import simulator as vsim
from drivers.vesc.protocol import VescProtocol

N = 20_000
CHUNK = 64  # bytes per read, like a busy serial port


def _stream(frames: list[bytes]) -> list[bytes]:
    data = b"".join(frames)
    return [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]


CASES: list[tuple[str, Callable[[], StreamProtocol], list[bytes], int, int]] = []


def _case(name: str, make: Callable[[], StreamProtocol], frames: list[bytes], per_frame: int = 1,
          baud: int = 9600) -> None:
    CASES.append((name, make, _stream(frames), len(frames) * per_frame, baud))


def main() -> None:
    _case("nmea (4-sentence epochs)", NmeaProtocol,
          [epoch_bytes(f) for f in itertools.islice(fixes(start=1_790_000_000.0), N // 4)], 4)
    _case("pms5003", Pms5003Protocol, [psim.frame_bytes(s) for s in itertools.islice(psim.samples(), N)])
    _case("sds011", Sds011Protocol, [ssim.frame_bytes(s) for s in itertools.islice(ssim.samples(), N)])
    _case("modbus rtu sniffer (req+reply)", mb.RtuSniffer,
          [s8_bus_bytes(c) for c in itertools.islice(co2_values(), N // 2)], 2)
    for fmt in ("json", "csv", "kv"):
        hdr = [lsim.CSV_HEADER] if fmt == "csv" else []
        _case(f"lines {fmt}", lambda: LinesProtocol({"fields": lsim.FIELDS}),
              hdr + [lsim.line_bytes(s, fmt) for s in itertools.islice(lsim.samples(), N)], baud=115200)
    _case("vesc GET_VALUES (req+reply)", lambda: VescProtocol(vsim.GEOMETRY),
          list(itertools.islice(vsim.exchange_bytes(), N)), baud=115200)
    _case("jbd_bms 0x03+0x04 (reqs+replies)", JbdProtocol, list(itertools.islice(jsim.exchanges(), N // 2)), 2)
    _case("obd2 ELM327 replies (5 PIDs)", Elm327Protocol, list(itertools.islice(osim.exchanges(), N // 5)), 5,
          baud=38400)
    from benchmarks.common import machine

    print(f"machine: {machine()}")
    print(f"{'protocol':34} {'frames/s (1 core)':>18} {'MB/s':>8} {'line max frames/s':>18}")
    for name, make, chunks, frames, baud in CASES:
        best = 0.0
        nbytes = sum(map(len, chunks))
        for _ in range(3):
            p = make()
            t0 = time.perf_counter()
            for c in chunks:
                p.feed(c)
            p.flush()
            dt = time.perf_counter() - t0
            best = max(best, frames / dt)
            assert not p.errors, (name, p.errors)
        line = baud / 10 / (nbytes / frames)
        print(f"{name:34} {best:>18,.0f} {best * nbytes / frames / 1e6:>8.2f} {line:>12,.0f} @{baud}")
    # Register decoding for a modbus poll of 4 values
    regs = [mb.Register(quantity=f"q{i}", address=2 * i, type="float32") for i in range(4)]
    block = mb.plan_reads(regs)[0]
    words = [0x43DB, 0x8C2E] * 4
    t0 = time.perf_counter()
    for _ in range(N):
        mb.decode_block(block, words)
    print(f"{'modbus decode_block (4 x float32)':34} {N / (time.perf_counter() - t0):>18,.0f}")


if __name__ == "__main__":
    main()
