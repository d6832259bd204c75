"""A polled serial device on a pty: a thread reads what the agent writes and answers with a simulator.

The agent opens the pty slave (behind a stable symlink that vanishes on `unplug`, like a
/dev/serial/by-id path); every byte the agent wrote is kept in `written`, so a test can assert
the gateway sent nothing but its read requests.
"""

from __future__ import annotations

import os
import select
import threading
import tty
from collections.abc import Callable
from pathlib import Path


class PolledPty:
    """`answer(bytes written by the agent) -> reply bytes` served on a pty at `link`."""

    def __init__(self, link: Path, answer: Callable[[bytes], bytes]) -> None:
        self.link = link
        self.answer = answer
        self.written = bytearray()
        self.mute = False  # True: the device hears but does not answer
        self._lock = threading.Lock()
        self._master = self._slave = -1
        self._stop = threading.Event()
        self.plug()
        self._thread = threading.Thread(target=self._serve, daemon=True, name=f"polled-{link.name}")
        self._thread.start()

    @property
    def port(self) -> str:
        return str(self.link)

    def plug(self) -> None:
        with self._lock:
            self._master, self._slave = os.openpty()
            tty.setraw(self._master)
            tty.setraw(self._slave)
            tmp = self.link.with_name(self.link.name + ".tmp")
            if tmp.is_symlink():
                tmp.unlink()
            tmp.symlink_to(os.ttyname(self._slave))
            tmp.replace(self.link)

    def unplug(self) -> None:
        with self._lock:
            if self.link.is_symlink():
                self.link.unlink()
            for fd in (self._master, self._slave):
                if fd >= 0:
                    os.close(fd)
            self._master = self._slave = -1

    def close(self) -> None:
        self._stop.set()
        self.unplug()
        self._thread.join(5)

    def _serve(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                fd = self._master
            if fd < 0:
                self._stop.wait(0.02)
                continue
            try:
                ready, _, _ = select.select([fd], [], [], 0.05)
                if not ready:
                    continue
                data = os.read(fd, 4096)
            except OSError:
                self._stop.wait(0.02)
                continue
            with self._lock:
                if fd != self._master:
                    continue
                self.written += data
                reply = b"" if self.mute else self.answer(data)
                try:
                    if reply:
                        os.write(fd, reply)
                except OSError:
                    pass
