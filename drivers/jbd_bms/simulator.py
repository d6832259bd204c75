"""JBD BMS simulator: a 13S 20 Ah pack that discharges, charges and balances, answering polls as real frames.

One cycle every 600 steps: discharge at about 12 A (a ride) until 25 %, rest, charge at 5 A to
100 % with cell balancing above 4.1 V per cell (the weakest cell lags), rest; the cycle count
rises after each full charge. Two NTCs follow the current.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from drivers.family import PerPoll, RequestResponder, SimParams, Simulation
from drivers.jbd_bms.protocol import (
    BASIC_INFO,
    BASIC_INFO_REQUEST,
    CELL_VOLTAGES,
    CELL_VOLTAGES_REQUEST,
    JbdProtocol,
    reply,
)

CELLS = 13
CAPACITY_AH = 20.0


def _ocv(soc: float) -> float:
    """Open-circuit voltage of a Li-ion cell at state of charge `soc` (0..1), V."""
    return 3.3 + 0.9 * soc - 0.15 * math.exp(-12 * soc)


class Pack:
    """The BMS's view of the pack, stepped once per poll (`dt` seconds apart; time runs 10x for the demo)."""

    def __init__(self, dt: float = 1.0, speedup: float = 10.0) -> None:
        self.dt, self.speedup = dt, speedup
        self.remaining = 0.8 * CAPACITY_AH
        self.cycles = 3
        self.mode = "discharge"
        self.rest = 0.0
        self.temps = [22.0, 23.0]
        self.cell_offset = [0.004 * math.sin(i) for i in range(CELLS)]
        self.cell_offset[7] = -0.02  # the weak cell

    def step(self, current: float | None = None) -> tuple[bytes, bytes]:
        """(basic info reply, cell voltages reply) now, then advance; `current` (A) overrides the cycle's."""
        soc = self.remaining / CAPACITY_AH
        if current is None:
            current = {"discharge": -12.0 - 3 * math.sin(self.remaining), "charge": 5.0}.get(self.mode, 0.0)
        cells_v = [_ocv(soc) + off + current * 0.002 for off in self.cell_offset]
        balancing = self.mode == "charge" and max(cells_v) > 4.1
        bal_bits = sum(1 << i for i, v in enumerate(cells_v) if balancing and v > min(cells_v) + 0.01)
        cells_mv = [round(v * 1000) for v in cells_v]
        volts = sum(cells_mv) / 1000
        basic = (round(volts * 100).to_bytes(2, "big") + round(current * 100).to_bytes(2, "big", signed=True)
                 + round(self.remaining * 100).to_bytes(2, "big") + round(CAPACITY_AH * 100).to_bytes(2, "big")
                 + self.cycles.to_bytes(2, "big") + (((26 - 0) << 9) | (5 << 5) | 14).to_bytes(2, "big")
                 + bal_bits.to_bytes(2, "big") + bytes(2) + bytes(2) + bytes([0x10, round(soc * 100), 0x03, CELLS, 2])
                 + b"".join(round(t * 10 + 2731).to_bytes(2, "big") for t in self.temps))
        cells = b"".join(v.to_bytes(2, "big") for v in cells_mv)
        self._advance(current, balancing)
        return reply(BASIC_INFO, basic), reply(CELL_VOLTAGES, cells)

    def _advance(self, current: float, balancing: bool) -> None:
        dt = self.dt * self.speedup
        self.remaining = min(CAPACITY_AH, max(0.0, self.remaining + current * dt / 3600))
        soc = self.remaining / CAPACITY_AH
        for i in range(2):
            target = 22.0 + i + abs(current) * 0.4
            self.temps[i] += (target - self.temps[i]) * 0.05
        if balancing:  # the bleed resistors pull the high cells towards the weak one
            self.cell_offset[7] = min(0.0, self.cell_offset[7] + 0.0005)
        if self.mode == "discharge" and soc <= 0.25:
            self.mode, self.rest = "rest_empty", 30 * self.dt
        elif self.mode == "charge" and soc >= 1.0:
            self.mode, self.rest = "rest_full", 30 * self.dt
            self.cycles += 1
        elif self.mode.startswith("rest"):
            self.rest -= self.dt
            if self.rest <= 0:
                self.mode = "charge" if self.mode == "rest_empty" else "discharge"


def exchanges(dt: float = 1.0) -> Iterator[bytes]:
    """Endless polls as they pass on the line: both requests and both replies."""
    pack = Pack(dt)
    while True:
        basic, cells = pack.step()
        yield BASIC_INFO_REQUEST + basic + CELL_VOLTAGES_REQUEST + cells


class JbdResponder(RequestResponder):
    """The BMS's UART: feed what the master wrote, get the replies (one per read request, in order)."""

    def __init__(self, dt: float = 1.0, pack: Pack | None = None) -> None:
        super().__init__()
        self.pack = pack or Pack(dt)
        self._pending: bytes | None = None  # the cell reply of the current poll
        self.polls = 0

    def take(self, buf: bytearray) -> bytes | None:
        if (i := buf.find(0xDD)) < 0:
            return None
        del buf[:i]
        if len(buf) < 7:
            return None
        frame = bytes(buf[:7])
        del buf[:7 if frame in (BASIC_INFO_REQUEST, CELL_VOLTAGES_REQUEST) else 1]
        if frame == BASIC_INFO_REQUEST:
            basic, self._pending = self.pack.step()
            self.polls += 1
            return basic
        if frame == CELL_VOLTAGES_REQUEST:
            if self._pending is None:
                _, self._pending = self.pack.step()
            return self._pending
        return b""


def simulation(p: SimParams) -> Simulation:
    """The `sim` driver's source: one poll (both requests and replies) per chunk, one reading each."""
    return exchanges(), PerPoll(JbdProtocol())
