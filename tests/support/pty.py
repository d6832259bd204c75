"""Pseudo-terminal devices: the agent opens the slave path with real pyserial, tests write the master."""

from __future__ import annotations

import os
import tty
from pathlib import Path


class PtyDevice:
    """A serial device on a pty; `link` (optional) is a stable symlink like /dev/serial/by-id/..."""

    def __init__(self, link: Path | None = None) -> None:
        self.link = link
        self.master = -1
        self.slave = -1
        self.path = ""
        self.plug()

    def plug(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        tty.setraw(self.master)
        self.path = os.ttyname(self.slave)
        if self.link is not None:
            tmp = self.link.with_name(self.link.name + ".tmp")
            if tmp.is_symlink() or tmp.exists():
                tmp.unlink()
            tmp.symlink_to(self.path)
            tmp.replace(self.link)

    @property
    def port(self) -> str:
        return str(self.link) if self.link is not None else self.path

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.master, view)
            view = view[n:]

    def read_available(self, n: int = 65536) -> bytes:
        """Bytes the agent wrote to the device (non-blocking)."""
        os.set_blocking(self.master, False)
        try:
            return os.read(self.master, n)
        except BlockingIOError:
            return b""
        finally:
            os.set_blocking(self.master, True)

    def unplug(self) -> None:
        """The USB adapter vanishes: the port path goes away and reads fail."""
        if self.link is not None and self.link.is_symlink():
            self.link.unlink()
        for fd in (self.master, self.slave):
            if fd >= 0:
                os.close(fd)
        self.master = self.slave = -1

    def close(self) -> None:
        self.unplug()
