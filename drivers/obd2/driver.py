"""`obd2` driver: an ELM327 adapter (USB, or a Bluetooth SPP adapter's rfcomm port) polled for mode 01 PIDs.

After opening the port the adapter is set up with `ATZ ATE0 ATL0 ATS0 ATH1 ATSP0` (reset, echo off,
no linefeeds, no spaces, headers on, automatic protocol), then every `poll_interval` each
configured PID is requested (`010D`, ...) and the values of the replies form one reading. Only
these AT setup commands and mode 01 "show current data" requests are ever sent: no mode 04
(clear trouble codes), no writes. A PID the vehicle keeps answering `NO DATA` to while it answers
the others is dropped after three polls (logged), so an unsupported PID does not count errors forever.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import BaseModel

from drivers.base import DeviceContext, StreamProtocol
from drivers.obd2.protocol import INIT, PIDS, Elm327Protocol, Obd2Options, pid_number, request
from drivers.polled import PolledDriver

if TYPE_CHECKING:
    from drivers.transport import ByteTransport
    from edge_common.device import DeviceConfig

log = logging.getLogger(__name__)
RESET_TIMEOUT = 3.0  # ATZ: the adapter reboots (about 1 s on a genuine ELM327)
UNSUPPORTED_AFTER = 3  # polls answering NO DATA for a PID while others answer: the vehicle lacks it


class Obd2Driver(PolledDriver):
    """A vehicle's OBD-II port through an ELM327: the configured PIDs every poll."""

    name = "obd2"
    Options: ClassVar[type[BaseModel]] = Obd2Options
    default_baud: ClassVar[int] = 38400  # ELM327 v1.x default; many clones use 9600 or 115200
    requests: ClassVar[tuple[bytes, ...]] = ()

    @classmethod
    def device_transport(cls, device: DeviceConfig) -> Literal["serial", "ble", "none"]:
        return "serial"

    @classmethod
    def transports(cls) -> tuple[Literal["serial", "ble", "none"], ...]:
        return ("serial",)

    def __init__(self, device: DeviceConfig, ctx: DeviceContext) -> None:
        super().__init__(device, ctx)
        self._proto: Elm327Protocol | None = None
        self._asked: list[int] = []  # the PIDs of the last poll
        self._asked_at = 0  # the protocol's reply count when that poll began
        self._no_data: Counter[int] = Counter()
        self.unsupported: set[int] = set()

    def make_protocol(self) -> StreamProtocol:
        return Elm327Protocol()

    def poll_requests(self) -> tuple[bytes, ...]:
        proto = self._proto
        if proto is not None and self._asked and proto.frames - self._asked_at == len(self._asked):
            self._account(list(proto.replies)[-len(self._asked):])
        pids = [p for p in (pid_number(x) for x in self.options.pids) if p is not None and p not in self.unsupported]
        self._asked = pids
        self._asked_at = proto.frames if proto is not None else 0
        return tuple(request(p) for p in pids)

    def _account(self, replies: list[list[str]]) -> None:
        """PIDs the vehicle answers NO DATA to, poll after poll while others answer, are no longer asked."""
        no_data = [any(x.upper() == "NO DATA" for x in r) for r in replies]
        if all(no_data):
            return  # ignition off or the bus asleep: nothing to conclude
        for pid, nd in zip(self._asked, no_data, strict=True):
            self._no_data[pid] = self._no_data[pid] + 1 if nd else 0
            if self._no_data[pid] >= UNSUPPORTED_AFTER and pid not in self.unsupported:
                self.unsupported.add(pid)
                log.info("%s: the vehicle does not support PID 0x%02X (%s): no longer polled", self.device.id, pid,
                         PIDS[pid].quantity)

    async def serve(self, port: ByteTransport, proto: StreamProtocol, seen: Counter[str]) -> None:
        assert isinstance(proto, Elm327Protocol)
        for cmd in INIT:
            _, ok = await self._exchange(port, proto, cmd.encode() + b"\r",
                                         RESET_TIMEOUT if cmd == "ATZ" else self.options.timeout)
            reply = proto.replies[-1] if ok and proto.replies else []
            if cmd == "ATZ" and ok:
                log.info("%s: %s", self.device.id, " ".join(x for x in reply if x.upper().startswith("ELM"))
                         or "adapter reset")
            elif not ok or not any(x.upper() == "OK" for x in reply):
                self.ctx.count_error("setup")
                log.warning("%s: the adapter did not acknowledge %s (%s)", self.device.id, cmd,
                            " ".join(reply) or "no reply")
        proto.errors.clear()  # what setup replies looked like is not a bus error
        seen.clear()
        self._proto, self._asked, self.unsupported = proto, [], set()  # (re)opened: perhaps another vehicle
        self._no_data.clear()
        await super().serve(port, proto, seen)
