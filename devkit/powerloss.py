"""Simulated power loss of a SQLite WAL database (crash-consistent snapshots, WAL cuts); a full disk.

A power cut keeps what was fsynced and may lose anything written after it. In WAL mode SQLite
syncs the WAL at every commit under `synchronous=FULL`; under `NORMAL` only before each
checkpoint ("the WAL file is synchronized before each checkpoint"). The snapshot's own
wal-index (`-shm`) says where that point is, so the cut is derived from SQLite's documented
durability, never from what the agent claims:

- FULL: every committed frame (`mxFrame`) is durable; only a transaction in progress is lost.
- NORMAL: frames up to the last checkpoint (`nBackfill`, or `nBackfillAttempted` once a
  checkpoint has begun: it synced the WAL before copying any page) are durable; every later
  frame may be lost, so the WAL is cut at a random frame boundary from there on.

Layouts (sqlite.org/walformat.html): the WAL is a 32-byte header, then frames of a 24-byte
header plus one page; the `-shm` starts with two copies of the 48-byte WalIndexHdr (mxFrame at
16, the WAL header's salt bytes at 32) and the checkpoint info (nBackfill at 96, nBackfillAttempted at 128), in
native byte order.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import struct
from dataclasses import dataclass
from pathlib import Path

WAL_HEADER = 32
FRAME_HEADER = 24
SUFFIXES = ("", "-wal", "-shm")


@dataclass(frozen=True, slots=True)
class WalState:
    """Where the durable and committed ends of a snapshot's WAL are (in frames)."""

    page_size: int
    mx_frame: int  # last committed frame
    backfilled: int  # frames checkpointed into the database file (WAL synced before that)
    frames_in_file: int

    def durable(self, synchronous: str) -> int:
        """Frames a power cut cannot take away at this `synchronous` level."""
        return self.mx_frame if synchronous == "FULL" else min(self.backfilled, self.mx_frame)

    def offset(self, frames: int) -> int:
        return WAL_HEADER + frames * (FRAME_HEADER + self.page_size)


def wal_state(db: Path) -> WalState | None:
    """The WAL state of a snapshot (None: no WAL or no wal-index, nothing beyond the db file)."""
    wal, shm = Path(f"{db}-wal"), Path(f"{db}-shm")
    if not wal.exists() or not shm.exists() or wal.stat().st_size < WAL_HEADER:
        return None
    idx = shm.read_bytes()[:136]
    if len(idx) < 136:
        return None
    page = struct.unpack_from("=H", idx, 14)[0]
    page = 65536 if page == 1 else page
    mx_frame, = struct.unpack_from("=I", idx, 16)
    backfill, = struct.unpack_from("=I", idx, 96)
    attempted, = struct.unpack_from("=I", idx, 128)
    # The wal-index must describe this WAL generation (SQLite copies the salt bytes verbatim).
    if idx[32:40] != wal.read_bytes()[16:24]:
        mx_frame = backfill = attempted = 0
    in_file = max(0, (wal.stat().st_size - WAL_HEADER) // (FRAME_HEADER + page))
    return WalState(page, mx_frame, max(backfill, attempted), in_file)


def snapshot(db: Path, dest: Path) -> None:
    """Copy db, -wal and -shm together while the process is stopped (crash-consistent).

    The caller stops the process (SIGSTOP) first: a stopped process is never inside a write(2),
    so the three files are exactly what the page cache holds at one instant.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for suffix in SUFFIXES:
        src = Path(f"{db}{suffix}")
        if src.exists():
            shutil.copyfile(src, dest / f"{db.name}{suffix}")


def stop(pid: int) -> None:
    """SIGSTOP and wait until the process is really stopped (state T in /proc)."""
    import time

    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        if state in ("T", "t"):
            return
        time.sleep(0.005)
    raise AssertionError(f"process {pid} did not stop")


def power_cut(snap_db: Path, dest_db: Path, synchronous: str, rng: random.Random) -> tuple[int, int]:
    """Restore a snapshot as it could be found after a power cut; (frames kept, frames committed).

    The WAL is cut at a random frame boundary between the durable point and the last committed
    frame (frames of a transaction in progress always go).
    """
    dest_db.parent.mkdir(parents=True, exist_ok=True)
    for suffix in SUFFIXES:
        src = Path(f"{snap_db}{suffix}")
        if src.exists():
            shutil.copyfile(src, Path(f"{dest_db}{suffix}"))
    st = wal_state(snap_db)
    if st is None:
        return 0, 0
    keep = rng.randint(st.durable(synchronous), st.mx_frame)
    with open(f"{dest_db}-wal", "r+b") as f:
        f.truncate(st.offset(keep))
    return keep, st.mx_frame


def fill(mnt: Path) -> Path:
    """Take every free block of the filesystem, as another writer filling the card; delete it to free."""
    filler = mnt / "filler"
    with open(filler, "ab", buffering=0) as f:
        for size in (65536, 4096):  # then the last partial chunk
            with contextlib.suppress(OSError):
                while f.write(b"\0" * size):
                    pass
    return filler
