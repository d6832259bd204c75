"""A real Modbus RTU slave for tests: pymodbus' own server on one pty, the agent on another.

A bridge thread copies bytes between the two pty masters, so every byte on the wire is real;
it can also corrupt or swallow the slave's replies (CRC errors, timeouts) and vanish like an
unplugged USB adapter (the agent's port is a symlink that disappears).
"""

from __future__ import annotations

import asyncio
import os
import select
import threading
import tty
from pathlib import Path

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer
from pymodbus.simulator import DataType, SimData, SimDevice


def _pty() -> tuple[int, int, str]:
    m, s = os.openpty()
    tty.setraw(m)
    tty.setraw(s)
    return m, s, os.ttyname(s)


class ModbusBench:
    """`registers[address] = value` is served by slave `slave` for function 3 and 4 alike."""

    def __init__(self, link: Path, slave: int, registers: dict[int, int], size: int = 128) -> None:
        self.link = link
        self.slave = slave
        self.registers = dict(registers)
        self.size = size
        self.mode = "ok"  # ok | corrupt | silent
        self.sparse = False  # True: like many real devices, unmapped addresses answer exception 2
        self.to_slave = bytearray()  # every byte the agent sent
        self.to_master = bytearray()  # every byte the slave answered (before faults)
        self.requests = 0
        self._lock = threading.Lock()
        self._srv_m, self._srv_s, self._srv_path = _pty()
        self._agent_m = self._agent_s = -1
        self.plug()
        self._stop = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server_thread = threading.Thread(target=self._serve, daemon=True)
        self._server_thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("modbus server did not start")
        self._bridge = threading.Thread(target=self._copy, daemon=True)
        self._bridge.start()

    # -- the agent's side: a pty behind a stable symlink ------------------------------------
    def plug(self) -> None:
        with self._lock:
            self._agent_m, self._agent_s, path = _pty()
            tmp = self.link.with_name(self.link.name + ".tmp")
            if tmp.is_symlink():
                tmp.unlink()
            tmp.symlink_to(path)
            tmp.replace(self.link)

    def unplug(self) -> None:
        with self._lock:
            if self.link.is_symlink():
                self.link.unlink()
            for fd in (self._agent_m, self._agent_s):
                if fd >= 0:
                    os.close(fd)
            self._agent_m = self._agent_s = -1

    # -- pymodbus server ----------------------------------------------------------------------
    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      current_registers: list[int], set_values: list[int] | None) -> ExcCodes | None:
        self.requests += 1
        if self.sparse and any(a not in self.registers for a in range(address, address + count)):
            return ExcCodes.ILLEGAL_ADDRESS
        for i in range(len(current_registers)):
            current_registers[i] = self.registers.get(start_address + i, 0) & 0xFFFF
        return None

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        async def main() -> None:
            device = SimDevice(id=self.slave, simdata=[SimData(0, count=self.size, values=0, datatype=DataType.REGISTERS)], action=self._action)  # type: ignore[arg-type]
            self.server = ModbusSerialServer(device, framer=FramerType.RTU, port=self._srv_path, baudrate=9600)
            self._stopped = asyncio.Event()
            await self.server.serve_forever(background=True)
            self._ready.set()
            await self._stopped.wait()
            await self.server.shutdown()  # type: ignore[no-untyped-call]

        self._loop.run_until_complete(main())

    # -- the wire -----------------------------------------------------------------------------
    def _copy(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                agent = self._agent_m
            fds = [self._srv_m] + ([agent] if agent >= 0 else [])
            try:
                r, _, _ = select.select(fds, [], [], 0.02)
            except (OSError, ValueError):
                continue
            for fd in r:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    continue
                if fd == self._srv_m:
                    self.to_master += data
                    if self.mode == "silent":
                        continue
                    if self.mode == "corrupt":
                        data = data[:-1] + bytes([data[-1] ^ 0x55])
                    with self._lock:
                        if self._agent_m >= 0:
                            os.write(self._agent_m, data)
                else:
                    self.to_slave += data
                    os.write(self._srv_m, data)

    def close(self) -> None:
        self._stop.set()
        self._loop.call_soon_threadsafe(self._stopped.set)
        self._server_thread.join(5)
        self._bridge.join(5)
        self.unplug()
        for fd in (self._srv_m, self._srv_s):
            os.close(fd)
