"""Is the system clock synchronised? (A Pi without RTC boots with a wrong clock.)"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import time
from typing import Literal

TIMESYNC_FLAG = "/run/systemd/timesync/synchronized"
STA_UNSYNC = 0x0040
TIME_ERROR = 5


class _Timex(ctypes.Structure):
    _fields_ = [
        ("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
        ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long), ("time_usec", ctypes.c_long), ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long), ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int),
        ("_pad", ctypes.c_int * 11),
    ]


def kernel_synced() -> bool | None:
    """adjtimex(2) view: True synced, False unsynced, None when unavailable."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        tx = _Timex()
        rc = libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return None
    if rc < 0:
        return None
    return not (rc == TIME_ERROR or tx.status & STA_UNSYNC)


class ClockMonitor:
    """Cached clock-sync state; `EDGE_AGENT_CLOCK=synced|unsynced` overrides (tests, odd hosts)."""

    def __init__(self, recheck: float = 10.0) -> None:
        self.recheck = recheck
        self._state: Literal["synced", "unsynced"] = "unsynced"
        self._checked = -1e9

    def detect(self) -> Literal["synced", "unsynced"]:
        forced = os.environ.get("EDGE_AGENT_CLOCK")
        if forced in ("synced", "unsynced"):
            return forced  # type: ignore[return-value]
        if os.path.exists(TIMESYNC_FLAG):
            return "synced"
        k = kernel_synced()
        # No way to tell (containers, odd kernels): assume the host keeps time.
        return "synced" if k is None or k else "unsynced"

    def state(self) -> Literal["synced", "unsynced"]:
        now = time.monotonic()
        if now - self._checked > self.recheck:
            self._state = self.detect()
            self._checked = now
        return self._state
