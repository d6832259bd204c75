"""`obd2` driver: an ELM327 adapter (USB, or a Bluetooth SPP adapter's rfcomm port) polled for mode 01 PIDs.

After opening the port the adapter is set up with `ATZ ATE0 ATL0 ATS0 ATH1 ATSP0` (reset, echo off,
no linefeeds, no spaces, headers on, automatic protocol), then every `poll_interval` each
configured PID is requested (`010D`, ...) and the values of the replies form one reading. Only
these AT setup commands and mode 01 "show current data" requests are ever sent: no mode 04
(clear trouble codes), no writes.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import BaseModel

from drivers.base import StreamProtocol
from drivers.obd2.protocol import INIT, Elm327Protocol, Obd2Options, pid_number, request
from drivers.polled import PolledDriver

if TYPE_CHECKING:
    from drivers.transport.serialport import SerialPort
    from edge_common.device import DeviceConfig

log = logging.getLogger(__name__)
RESET_TIMEOUT = 3.0  # ATZ: the adapter reboots (about 1 s on a genuine ELM327)


class Obd2Driver(PolledDriver):
    """A vehicle's OBD-II port through an ELM327: the configured PIDs every poll."""

    name = "obd2"
    Options: ClassVar[type[BaseModel]] = Obd2Options
    default_baud: ClassVar[int] = 38400  # ELM327 v1.x default; many clones use 9600 or 115200
    requests: ClassVar[tuple[bytes, ...]] = ()

    @classmethod
    def device_transport(cls, device: DeviceConfig) -> Literal["serial", "ble", "none"]:
        return "serial"

    def make_protocol(self) -> StreamProtocol:
        return Elm327Protocol()

    def poll_requests(self) -> tuple[bytes, ...]:
        pids = [pid_number(p) for p in self.options.pids]
        return tuple(request(p) for p in pids if p is not None)

    async def serve(self, port: SerialPort, proto: StreamProtocol, seen: Counter[str]) -> None:
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
        await super().serve(port, proto, seen)
