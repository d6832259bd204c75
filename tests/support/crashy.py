"""Test drivers: one that emits a counter, one that crashes after a few readings."""

from __future__ import annotations

import asyncio
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from drivers.base import Driver


class CounterOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    interval: float = 0.01
    crash_after: int = 0  # 0: never


class CounterDriver(Driver):
    """Emits n=0,1,2,... every `interval`; raises after `crash_after` readings of one run."""

    name = "counter"
    transport: ClassVar[Literal["serial", "ble", "none"]] = "none"
    Options = CounterOptions
    runs = 0

    async def run(self) -> None:
        type(self).runs += 1
        n = 0
        self.ctx.set_link("connected")
        while True:
            self.ctx.emit({"n": n, "run": self.ctx.restarts})
            n += 1
            if self.options.crash_after and n >= self.options.crash_after:
                raise RuntimeError("simulated driver bug")
            await asyncio.sleep(self.options.interval)
