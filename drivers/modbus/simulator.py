"""Modbus RTU slave simulator: answers real request frames with byte-exact replies (pure, no I/O).

Used by the `sim` driver (senseair_s8 family), the probe tests (a sniffed bus: request + reply)
and as the register source of pymodbus' own server in the end-to-end tests.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from drivers.base import StreamProtocol
from drivers.family import RequestResponder, SimParams, Simulation
from drivers.modbus.protocol import crc16, exception_reply, read_request, reply, with_crc
from edge_common.model import Value

S8_ANY_ADDRESS = 0xFE
S8_CO2_IR = 3  # IR4, 0-based protocol address 3


class RegisterSlave:
    """A Modbus RTU slave with holding (fc 3/6) and input (fc 4) registers."""

    def __init__(self, slave: int, holding: dict[int, int] | None = None,
                 inputs: dict[int, int] | None = None, any_address: int | None = None) -> None:
        self.slave = slave
        self.any_address = any_address
        self.holding = dict(holding or {})
        self.inputs = dict(inputs or {})
        self.requests = 0

    def respond(self, frame: bytes) -> bytes | None:
        """The reply to one request frame; None when the slave stays silent (not addressed, bad CRC)."""
        if len(frame) < 4 or crc16(frame[:-2]) != int.from_bytes(frame[-2:], "little"):
            return None
        addr, fn = frame[0], frame[1]
        if addr not in (self.slave, self.any_address) or len(frame) != 8:
            return None
        self.requests += 1
        start, n = int.from_bytes(frame[2:4], "big"), int.from_bytes(frame[4:6], "big")
        if fn in (3, 4):
            table = self.holding if fn == 3 else self.inputs
            if not 1 <= n <= 125 or any(a not in table for a in range(start, start + n)):
                return exception_reply(addr, fn, 2)
            return reply(addr, fn, [table[a] for a in range(start, start + n)])
        if fn == 6:
            if start not in self.holding:
                return exception_reply(addr, fn, 2)
            self.holding[start] = n
            return with_crc(frame[:6])
        return exception_reply(addr, fn, 1)


def co2_values(seed: int = 0) -> Iterator[int]:
    """Endless classroom CO2 (ppm): rising while occupied, aired at the break."""
    n = seed
    while True:
        yield 420 + (n * 37) % 900 + round(20 * math.sin(n / 3))
        n += 1


class S8Slave(RegisterSlave):
    """Senseair S8: IR1 status, IR4 CO2 ppm; answers its address and the "any" address 0xFE."""

    def __init__(self, slave: int = 0x68, co2: int = 400) -> None:
        super().__init__(slave, inputs={0: 0, 1: 0, 2: 0, 3: co2, 21: 0, 22: 0},
                         holding={0: 0, 1: 0, 31: 0}, any_address=S8_ANY_ADDRESS)

    @property
    def co2(self) -> int:
        return self.inputs[S8_CO2_IR]

    @co2.setter
    def co2(self, ppm: int) -> None:
        self.inputs[S8_CO2_IR] = ppm & 0xFFFF


def s8_request(slave: int = S8_ANY_ADDRESS) -> bytes:
    """The master's CO2 read: FE 04 00 03 00 01 D5 C5 for the any-address."""
    return read_request(slave, 4, S8_CO2_IR, 1)


def s8_bus_bytes(co2: int, slave: int = S8_ANY_ADDRESS) -> bytes:
    """What a sniffer sees for one S8 poll: the request, then the reply."""
    req = s8_request(slave)
    rep = S8Slave(co2=co2).respond(req)
    assert rep is not None
    return req + rep


class S8Exchanges(StreamProtocol):
    """Poll-reply adapter: each fed chunk is one (request + reply) exchange of the S8 simulator."""

    def feed(self, data: bytes) -> list[dict[str, Value]]:
        from drivers.modbus.protocol import S8_REGISTERS, ModbusReplyError, decode_block, parse_reply, plan_reads

        request, answer = data[:8], data[8:]
        try:
            words = parse_reply(request, answer)
        except ModbusReplyError as e:
            self.errors[e.kind] += 1
            return []
        self.frames += 1
        return [decode_block(plan_reads(S8_REGISTERS)[0], words)]


class S8Responder(RequestResponder):
    """A Senseair S8 on the bus for a real master: answers its 8-byte requests; the CO2 moves on after
    every reply that carried it (the classroom of `co2_values`)."""

    def __init__(self, slave: int = 0x68) -> None:
        super().__init__()
        self._values = co2_values()
        self.slave = S8Slave(slave, co2=next(self._values))

    def take(self, buf: bytearray) -> bytes | None:
        if len(buf) < 8:  # fc 3, 4 and 6 requests are 8 bytes; garbage is skipped a byte at a time
            return None
        frame = bytes(buf[:8])
        rep = self.slave.respond(frame)
        if rep is None:
            del buf[:1]
            return b""
        del buf[:8]
        start, n = int.from_bytes(frame[2:4], "big"), int.from_bytes(frame[4:6], "big")
        if frame[1] == 4 and start <= S8_CO2_IR < start + n and rep[1] == 4:
            self.slave.co2 = next(self._values)
        return rep


# The simulated S8 as a generic `modbus` device reads it.
S8_AS_MODBUS = {"slave": S8_ANY_ADDRESS, "registers": [
    {"quantity": "co2", "address": S8_CO2_IR, "function": 4, "type": "int16", "unit": "ppm"}]}


def simulation(p: SimParams) -> Simulation:
    """The `sim` driver's source: a polled Senseair S8, decoded with the generic Modbus decoder."""
    return (s8_bus_bytes(c) for c in co2_values()), S8Exchanges()
