"""`sds011` driver: Nova SDS011 in active reporting mode, with optional mode/duty-cycle commands on open."""

from __future__ import annotations

import logging

from pydantic import BaseModel, ConfigDict, Field

from drivers.base import StreamProtocol
from drivers.sds011 import protocol as p
from drivers.stream import StreamDriver
from drivers.transport import ByteTransport

log = logging.getLogger(__name__)


class Sds011Options(BaseModel):
    """Keys of an `sds011` device."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Send "set active reporting mode" on every open (the sensor stores it; factory default is active).
    active_mode: bool = False
    # Duty cycle sent on open: 0 = continuous, 1-30 = one measurement every N minutes. None: leave as is.
    working_period: int | None = Field(default=None, ge=0, le=30)


class Sds011Driver(StreamDriver):
    name = "sds011"
    default_baud = 9600
    default_expected_interval = 30.0
    Options = Sds011Options


    def make_protocol(self) -> StreamProtocol:
        return p.Sds011Protocol()

    async def on_open(self, port: ByteTransport) -> None:
        o: Sds011Options = self.options
        if o.active_mode:
            await port.write(p.set_active_mode())
        if o.working_period is not None:
            await port.write(p.set_working_period(o.working_period))
        if o.active_mode or o.working_period is not None:
            log.info("%s: sent SDS011 setup (active_mode=%s, working_period=%s)",
                     self.device.id, o.active_mode, o.working_period)
