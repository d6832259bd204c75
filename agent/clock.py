"""Is the system clock synchronised? And fixing readings stamped before it was.

A Pi without RTC boots with a wrong wall clock. Until the clock is synchronised readings are
marked `clock: "unsynced"`. When synchronisation is detected, readings still buffered that were
never handed to the uplink get their timestamp recomputed from the monotonic clock
(`ts = mono + (time() - monotonic())` measured right after the sync) and are marked
`"synced"`; readings that may already be on the wire keep their bytes (a redelivered seq must
be byte-identical). Semantics: docs/PROTOCOL.md ("Clock correction").

Detection, first match wins: EDGE_AGENT_CLOCK=synced|unsynced|file:PATH (tests, odd hosts);
systemd-timesyncd's flag file; the kernel's adjtimex(2) STA_UNSYNC status (read-only
query, allowed by the unit's SystemCallFilter); unknown (seccomp, containers) -> unsynced when
timesyncd runs here, else synced (assume the host keeps time).
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import time
from typing import TYPE_CHECKING, Literal

from agent.buffer import write_fault
from agent.model import Reading
from agent.ticks import sleep_to_tick

if TYPE_CHECKING:
    from agent.buffer import Outbox
    from agent.pipeline import Pipeline

log = logging.getLogger(__name__)

TIMESYNC_FLAG = "/run/systemd/timesync/synchronized"
TIMESYNC_DIR = "/run/systemd/timesync"
STA_UNSYNC = 0x0040
TIME_ERROR = 5
POLL_INTERVAL = 1.0  # while unsynced: re-stamp soon after the sync
SYNCED_POLL_INTERVAL = 10.0  # while synced: only a loss to notice (ClockMonitor rechecks as often)
ClockState = Literal["synced", "unsynced"]


class _Timex(ctypes.Structure):
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_pad", ctypes.c_int * 11),
    ]


_libc: ctypes.CDLL | None = None


def kernel_synced() -> bool | None:
    """adjtimex(2) view (modes=0: read only): True synced, False unsynced, None when unavailable."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)  # the process's own libc: no ldconfig subprocess
        tx = _Timex()
        rc = _libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return None
    if rc < 0:
        return None
    return not (rc == TIME_ERROR or tx.status & STA_UNSYNC)


class ClockMonitor:
    """Cached clock-sync state (`state()` is called for every reading; `refresh()` re-detects)."""

    def __init__(self, recheck: float = 10.0) -> None:
        self.recheck = recheck
        self._state: ClockState = "unsynced"
        self._checked = -1e9
        self.offset = time.time() - time.monotonic()  # wall - monotonic at the last refresh

    def detect(self) -> ClockState:
        forced = os.environ.get("EDGE_AGENT_CLOCK", "")
        if forced in ("synced", "unsynced"):
            return forced  # type: ignore[return-value]
        if forced.startswith("file:"):
            return "synced" if os.path.exists(forced[5:]) else "unsynced"
        if os.path.exists(TIMESYNC_FLAG):
            return "synced"
        k = kernel_synced()
        if k is None:
            # No kernel view (seccomp, containers): trust timesyncd if it runs here, else the host.
            return "unsynced" if os.path.isdir(TIMESYNC_DIR) else "synced"
        return "synced" if k else "unsynced"

    def refresh(self) -> ClockState:
        self._state = self.detect()
        self._checked = time.monotonic()
        return self._state

    def state(self) -> ClockState:
        if time.monotonic() - self._checked > self.recheck:
            self.refresh()
        return self._state


@dataclasses.dataclass(frozen=True, slots=True)
class Correction:
    """What one clock correction did in the buffer."""

    rewritten: int  # payload now carries the corrected ts and "synced"
    frozen: int  # possibly already published: only the internal accept time was corrected


def corrected(r: Reading, offset: float) -> Reading:
    """The reading with ts recomputed from its monotonic time, marked synced."""
    if r.clock == "synced":
        return r
    return dataclasses.replace(r, ts=r.mono + offset, clock="synced")


def correct_outbox(outbox: Outbox, offset: float) -> Correction:
    """Buffer thread: fix the unsynced readings this process accepted (Outbox.restamp_unsynced)."""
    return Correction(*outbox.restamp_unsynced(offset))


async def correct_buffered(pipeline: Pipeline, offset: float) -> Correction:
    """Correct queued readings in memory, then the committed ones on the buffer thread."""
    pipeline.rewrite_queued(lambda r: corrected(r, offset))
    return await pipeline.call(correct_outbox, pipeline.outbox, offset)


async def watch_clock(mon: ClockMonitor, pipeline: Pipeline, interval: float = POLL_INTERVAL,
                      synced_interval: float = SYNCED_POLL_INTERVAL) -> None:
    """Poll the sync state; on unsynced -> synced, correct what is still buffered.

    Polls on the shared timer grid (agent/ticks.py): every `interval` while unsynced, every
    `synced_interval` while synced.
    """
    prev = mon.refresh()
    while True:
        await sleep_to_tick(interval if prev == "unsynced" else synced_interval)
        before = mon.offset
        cur = mon.refresh()
        mon.offset = time.time() - time.monotonic()
        if prev == "unsynced" and cur == "synced":
            try:
                res = await correct_buffered(pipeline, mon.offset)
            except Exception as e:  # the disk refuses (full, locked, read-only): readings stay unsynced
                if write_fault(e) is None:
                    log.exception("clock synchronised, but re-stamping buffered readings failed")
                    prev = cur
                    continue
                log.warning("clock synchronised, but re-stamping buffered readings failed (%s); retrying", e)
                continue  # prev stays unsynced: the next poll tries again
            else:
                log.warning(
                    "clock synchronised (wall clock moved %+.3fs): %d buffered readings "
                    "re-stamped, %d already handed to the uplink keep their time",
                    mon.offset - before,
                    res.rewritten,
                    res.frozen,
                )
        elif prev == "synced" and cur == "unsynced":
            log.warning("clock lost synchronisation: new readings are marked unsynced")
        prev = cur
