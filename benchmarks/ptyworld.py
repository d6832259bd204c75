"""Simulated serial devices in their own process, each on a real pseudo-terminal: what the agent on a
Pi reads is a device it does not run. A talking family's simulator writes its wire bytes once per
`interval`, each device at its own phase (real devices keep their own clocks); a family that is asked (a `DriverEntry.responder`, e.g. the
Senseair S8's Modbus slave) answers what the agent's real driver writes (`PtyResponder`).

Run: python -m benchmarks.ptyworld INTERVAL FAMILY... ; prints one JSON line {"ports": [path, ...]}
(in the order given) once every port is open, then serves until killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import sys
import tty
from collections.abc import Iterator

from drivers.family import SimParams
from drivers.registry import registry
from drivers.transport.simulated import PtyResponder
from edge_common.ticks import sleep_until


class PtyTalker:
    """A talking simulator on a pseudo-terminal: one chunk per `interval`; what the driver writes is read
    and dropped (init commands)."""

    def __init__(self, chunks: Iterator[bytes], interval: float, phase: float = 0.0) -> None:
        self._chunks, self._interval, self._phase = chunks, interval, phase
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.port = os.ttyname(self._slave)

    def _drain(self) -> None:
        with contextlib.suppress(OSError):
            os.read(self._master, 4096)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self._master, self._drain)
        k = math.floor(loop.time() / self._interval)
        try:
            for chunk in self._chunks:
                with contextlib.suppress(BlockingIOError):  # nobody reading: the tty buffer is full
                    os.write(self._master, chunk)
                k += 1
                await sleep_until((k + self._phase) * self._interval)
        finally:
            loop.remove_reader(self._master)
            os.close(self._master)
            os.close(self._slave)


async def serve(interval: float, families: list[str]) -> None:
    reg = registry()
    devices: list[PtyResponder | PtyTalker] = []
    for i, name in enumerate(families):
        fam = reg.family_of(name)
        responder = fam.responder(name)
        if responder is not None:
            devices.append(PtyResponder(responder))
        else:
            chunks, _ = fam.simulation(name, SimParams())
            devices.append(PtyTalker(chunks, interval, i / len(families)))
    print(json.dumps({"ports": [d.port for d in devices]}), flush=True)
    await asyncio.gather(*(d.run() for d in devices))


def main() -> None:
    asyncio.run(serve(float(sys.argv[1]), sys.argv[2:]))


if __name__ == "__main__":
    main()
