"""ELM327 simulator: an adapter on a car's OBD-II port answering AT commands and mode 01 PIDs, as real bytes.

It behaves as an ELM327 v1.5 does: `ATZ` prints the banner, `ATE0`/`ATS0`/`ATH1`/`ATL0` change the
reply format, `ATSP0` makes the first request search for the protocol (`SEARCHING...`), the car
(CAN 11-bit, engine ECU 7E8) answers the PIDs it supports and `NO DATA` for the others, anything
else is `?`. The car drives a 65 s town cycle (stand, accelerate to 25 km/h, cruise, brake, stand),
advanced by `dt` per request.
"""

from __future__ import annotations

from collections.abc import Iterator

from drivers.family import PerPoll, RequestResponder, SimParams, Simulation
from drivers.obd2.protocol import BY_NAME, INIT, Elm327Protocol, request

BANNER = "ELM327 v1.5"
SUPPORTED = (0x05, 0x0C, 0x0D, 0x42, 0x5B)
CYCLE = ((3.0, 0.0), (12.0, 25.0), (35.0, 25.0), (8.0, 0.0), (7.0, 0.0))  # (s, km/h at the end)


class Car:
    """Speed, motor speed, coolant and pack state of a small EV, stepped by `step(dt)`."""

    def __init__(self) -> None:
        self.t = 0.0
        self.kmh = 0.0
        self.coolant = 22.0
        self.soc = 85.0

    def step(self, dt: float) -> None:
        self.t += dt
        tc, start, prev = self.t % sum(d for d, _ in CYCLE), 0.0, 0.0
        for dur, target in CYCLE:
            if tc < start + dur:
                self.kmh = prev + (target - prev) * (tc - start) / dur
                break
            start, prev = start + dur, target
        self.coolant += (22.0 + self.kmh / 2 - self.coolant) * 0.02 * dt
        self.soc = max(0.0, self.soc - self.kmh * 0.0004 * dt)

    @property
    def rpm(self) -> float:
        return self.kmh / 3.6 / (2 * 3.14159 * 0.25) * 60 * 4  # 0.25 m wheel, 4:1 reduction


class Elm327(RequestResponder):
    """The adapter: feed what the host wrote, get the reply bytes (each ending in the `>` prompt)."""

    def __init__(self, dt: float = 1.0, supported: tuple[int, ...] = SUPPORTED) -> None:
        super().__init__()
        self.car = Car()
        self.dt = dt
        self.supported = supported
        self.echo = self.spaces = True
        self.headers = False
        self.searching = False
        self.written: list[str] = []

    def payload(self, pid: int) -> bytes:
        c = self.car
        if pid == 0x05:
            return bytes([max(0, min(255, round(c.coolant) + 40))])
        if pid == 0x0C:
            return min(0xFFFF, round(c.rpm * 4)).to_bytes(2, "big")
        if pid == 0x0D:
            return bytes([min(255, round(c.kmh))])
        if pid == 0x42:
            return round(13.8 * 1000).to_bytes(2, "big")  # the 12 V system, charged by the DC-DC
        return bytes([round(c.soc * 255 / 100)])  # 0x5B

    def _line(self, data: bytes) -> str:
        parts = [f"{b:02X}" for b in data]
        if self.headers:
            parts = ["7E8", f"{len(data):02X}", *parts]
        return (" " if self.spaces else "").join(parts)

    def _command(self, cmd: str) -> str:
        c = cmd.strip().upper().replace(" ", "")
        self.written.append(c)
        if c == "ATZ":
            self.echo, self.spaces, self.headers = True, True, False
            return f"\r\r{BANNER}\r\r"
        if c in ("ATE0", "ATE1"):
            self.echo = c == "ATE1"
            return "OK\r\r"
        if c in ("ATS0", "ATS1"):
            self.spaces = c == "ATS1"
            return "OK\r\r"
        if c in ("ATH0", "ATH1"):
            self.headers = c == "ATH1"
            return "OK\r\r"
        if c in ("ATL0", "ATL1"):
            return "OK\r\r"
        if c.startswith("ATSP"):
            self.searching = c == "ATSP0"
            return "OK\r\r"
        if len(c) == 4 and c.startswith("01") and all(x in "0123456789ABCDEF" for x in c):
            pid = int(c[2:], 16)
            self.car.step(self.dt)
            head = "SEARCHING...\r" if self.searching else ""
            self.searching = False
            if pid not in self.supported:
                return head + "NO DATA\r\r"
            return head + self._line(bytes([0x41, pid]) + self.payload(pid)) + "\r\r"
        return "?\r\r"

    def take(self, buf: bytearray) -> bytes | None:
        if (i := buf.find(b"\r")) < 0:
            return None
        line = buf[:i].decode("ascii", "replace")
        del buf[:i + 1]
        if not line.strip():
            return b""
        echo = line + "\r" if self.echo else ""
        return (echo + self._command(line) + ">").encode()


def exchanges(dt: float = 1.0) -> Iterator[bytes]:
    """The adapter set up as the driver does, then one poll of every PID per chunk (requests and replies)."""
    elm = Elm327(dt=dt)
    for cmd in INIT:
        elm.answer(cmd.encode() + b"\r")
    while True:
        reqs = b"".join(request(p) for p in BY_NAME.values())
        yield elm.answer(reqs)


def simulation(p: SimParams) -> Simulation:
    """The `sim` driver's source: one poll of the five PIDs per chunk, one reading each."""
    return exchanges(), PerPoll(Elm327Protocol())
