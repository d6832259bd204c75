"""SQLite outbox: the durable buffer between drivers and the uplink.

Synchronous and single-threaded by design: `agent.pipeline` runs every call in one dedicated
thread so the event loop never blocks on disk.

Guarantees
- A reading is *accepted* when its transaction commits; only then does it own a `seq`.
  `seq` and the row are written in one transaction with `meta.next_seq`, so a crash
  (kill -9, power loss) can lose the uncommitted batch but never leaves a hole in seq.
- `epoch` is made once, when the database is created.
- Rows are deleted only after the broker acknowledged them (PUBACK).
- Every drop of accepted readings (buffer full, max age, a quarantined corrupt database) is
  recorded, in the same transaction, as a durable gap event for the platform. Rows that were
  ever handed to the uplink (`sent_upto`, persisted before publishing) are never dropped:
  they may have reached the platform, so counting them as lost could be wrong. Hence the sum
  of gap counts is exactly the set of seqs the platform will never see (docs/PROTOCOL.md).
- With synchronous=FULL in WAL mode a committed batch survives power loss; the window is
  what is still in memory: at most `buffer.commit_interval` (default 0.5 s) of readings.
- With synchronous=NORMAL a commit is durable only after the next WAL sync, which SQLite does
  before a checkpoint. Nothing read from here may be published before that (`sync`,
  `read_mark`): a power cut may then lose readings and reuse their seqs, but only seqs that
  never left the gateway, so a seq the platform has always keeps its content.

Layout (schema v2)
- A commit stores its readings as one `segments` row (SEG_MAX readings at most): the seq range
  lo..hi, the accept time, and the wire forms R packed as one JSON array text, one per line,
  which reads back byte for byte. Per-reading rows cost per-row CPU and bytes (SD-card wear).
- Acks, drops and expiry remove seqs: a whole segment is deleted, a removed prefix moves the
  segment's live mark (`cuts`, the blob stays), a removal inside a segment splits it (the rest
  is rewritten). Monotonic times are kept only for unsynced readings (clock correction).
- A commit that hands its own rows to a caught-up uplink records that in the segment (`sent`),
  not in meta.sent_upto: one page less per commit. protect_upto = max of both.
- `outbox` is a view, one row per stored reading (seq, ts, device, clock, mono, payload), for
  the CLI, tests and a sqlite3 shell. A v1 file (one `outbox` row per reading) is migrated in
  place by `open`, in the opening transaction: seqs, payloads, marks, drops and events kept.
  An agent older than v2 cannot write a v2 file (its inserts fail: no silent loss).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any, Literal

from agent.errors import BufferCorrupt, BufferError_, BufferFull
from agent.model import Reading, encode_readings, format_ts

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
# Per-reading share of `bytes` beyond the payload (separator, segment row and index share).
ROW_OVERHEAD = 8
# Readings per segment row at most: a partial ack, drop or re-stamp rewrites at most this many.
SEG_MAX = 1024
_SEP = ",\n"  # between payloads in a segment (compact JSON never holds a raw newline)

# Layout v2: one `segments` row per commit (SEG_MAX readings at most): seqs lo..hi, their
# wire forms R joined as a JSON array. Acks, drops and expiry remove live seqs from the front
# (`cuts` holds the first live seq of a segment whose prefix went) or split a segment in two
# (a removal that starts inside it). `outbox` is a view with one row per live reading (CLI,
# tests, sqlite3 shell); the agent reads and writes the segments.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS segments (
    lo INTEGER PRIMARY KEY,    -- seq of the first payload
    hi INTEGER NOT NULL,       -- seq of the last
    ts REAL NOT NULL,          -- accept time (wall clock), for max_age
    clock INTEGER NOT NULL,    -- 1 every reading synced, 0 some unsynced (mono set)
    sent INTEGER NOT NULL,     -- seqs up to this were handed to the uplink by the commit itself
    bytes INTEGER NOT NULL,    -- the payloads' share of `bytes` (a cut segment: cuts.bytes)
    mono TEXT,                 -- JSON array of the readings' monotonic times (clock correction)
    payloads TEXT NOT NULL     -- JSON array of the wire forms R, one per line: byte-identical on redelivery
);
CREATE TABLE IF NOT EXISTS cuts (
    lo INTEGER PRIMARY KEY,    -- a segment whose first seqs were acked or dropped
    live INTEGER NOT NULL,     -- its first seq still stored
    bytes INTEGER NOT NULL     -- its live readings' share of `bytes`
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    type TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS drops (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    reason TEXT NOT NULL,
    from_seq INTEGER NOT NULL,
    to_seq INTEGER NOT NULL,
    count INTEGER NOT NULL
);
"""
_VIEW = """
CREATE VIEW IF NOT EXISTS outbox AS
SELECT s.lo + j.key AS seq, s.ts AS ts, json_extract(j.value, '$.device') AS device,
       json_extract(j.value, '$.clock') = 'synced' AS clock,
       json_extract(s.mono, '$[' || j.key || ']') AS mono, j.value AS payload
FROM segments s JOIN json_each(s.payloads) j LEFT JOIN cuts c ON c.lo = s.lo
WHERE s.lo + j.key >= coalesce(c.live, s.lo)
"""
# Live segments: (lo, hi, first live seq, live readings' share of `bytes`).
_LIVE = ("SELECT s.lo, s.hi, coalesce(c.live, s.lo), coalesce(c.bytes, s.bytes) "
         "FROM segments s LEFT JOIN cuts c ON c.lo = s.lo")
_INSERT_SEG = "INSERT INTO segments VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_get_clock = attrgetter("clock")
_get_mono = attrgetter("mono")

# SQLite page size of a new database file. Every commit appends the pages it touched to the WAL
# as whole frames: smaller pages mean fewer bytes written per small commit (benchmarks/wear.py:
# at 10 devices x 1 Hz a commit's segment fits one 2 KiB page, 7.1x the payload against 9.7x).
PAGE_SIZE = 4096
DropReason = Literal["buffer_full", "max_age", "corrupt_database"]
# What keeps the buffer from writing: the disk is full, another process holds the lock, the
# filesystem went read-only, the device fails (I/O error), or the file is damaged.
Fault = Literal["disk_full", "locked", "read_only", "io_error", "corrupt"]
PendingEvent = tuple[str, dict[str, Any], float]  # (type, body, time made): stored with the next commit


@dataclass(slots=True)
class CommitResult:
    """What one commit did."""

    accepted: list[tuple[int, Reading]] = field(default_factory=list)
    rejected: int = 0
    gaps: list[dict[str, Any]] = field(default_factory=list)
    for_send: list[tuple[int, str]] | None = None  # rows fetched for the uplink (`send_after`)
    events: int = 0  # events stored


@dataclass(frozen=True, slots=True)
class BufferStats:
    epoch: str
    depth: int
    bytes: int
    max_bytes: int
    oldest_ts: float | None
    next_seq: int
    dropped: dict[str, int]
    rejected: int
    events_pending: int
    file_bytes: int


class Outbox:
    """The buffer database. Not thread-safe: use from one thread."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int = 256_000_000,
        max_age: float = 14 * 86400.0,
        on_full: Literal["drop_oldest", "reject_new"] = "drop_oldest",
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        gateway: str = "",
        min_free_disk: int = 8_000_000,
        page_size: int = PAGE_SIZE,
    ) -> None:
        self.path = Path(path)
        self.page_size = page_size  # applies when the file is created; an existing file keeps its own
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.on_full = on_full
        self.synchronous = synchronous
        self.gateway = gateway
        self.min_free_disk = min_free_disk
        self._page_size = 4096
        self.quarantined: Path | None = None
        self._db: sqlite3.Connection | None = None
        self.epoch = ""
        self.next_seq = 1
        self.depth = 0
        self.bytes = 0
        self.rejected = 0
        self.dropped: dict[str, int] = {}
        # Seqs at or below this were handed to the uplink (persisted as meta.sent_upto before
        # publishing); drops spare them: they may have arrived, even after a disconnect/restart.
        self.protect_upto = 0
        # Highest seq ever fetched for publishing (never reset): those payloads are frozen.
        self.fetched_upto = 0
        self.opened_seq = 1  # first seq this process may assign (agent.clock corrects from here)
        self._events_inflight: set[int] = set()
        self._events_sent: set[int] = set()  # ever published: never merged into any more
        self._open_gap: tuple[int, str] | None = None  # (event id, reason) still mergeable
        # Set when the disk filled up: the buffer behaves as if max_bytes were this.
        self.full_cap: int | None = None
        self._full_since = 0.0
        self.disk_full_count = 0
        self.full_retry = FULL_RETRY
        self._unlogged: dict[str, int] = {}
        self._last_drop_log = -1e18
        # Durability under synchronous=NORMAL, in the connection's total_changes: every change
        # up to `durable_changes` is on disk; what was handed out for publishing was read with
        # `read_mark` changes made (the uplink publishes it once durable_changes >= read_mark).
        self.durable_changes = 0
        self.read_mark = 0
        self.syncs = 0
        self._sent_upto_saved = 0  # meta.sent_upto as last written (protect_upto may be ahead)
        self._events_acked: set[int] = set()  # PUBACKed events whose delete has not committed yet
        self._unwritten_logged = False
        self._last_read: tuple[int, float | None] = (0, None)  # (events pending, oldest ts) for stats
        self._file_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the file we opened
        self._file_checked = -1e18
        self._wal_mode = True
        self._split: tuple[int, list[str]] | None = None  # (segment lo, its payloads): the last one read
        self.migrated: int | None = None  # v1 readings moved into segments by open(), if it migrated

    # -- lifecycle ----------------------------------------------------------------------
    def open(self) -> Outbox:
        """Open or create; a corrupt file is quarantined (renamed, kept) and a fresh one made.

        Only corruption quarantines: a full disk, an I/O error or a read-only filesystem is
        not the file's fault (BufferError_ naming it; the file is left alone).
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._open()
        except (sqlite3.DatabaseError, BufferCorrupt) as e:
            if is_locked(e):
                raise BufferError_(f"{self.path}: database is locked by another process") from e
            fault = write_fault(e)
            if fault is not None and fault != "corrupt":
                raise BufferError_(f"{self.path}: cannot open the buffer ({fault.replace('_', ' ')}: {e})") from e
            self._quarantine(str(e))
            self._open()
            self._record_quarantine(str(e))
        return self

    def _open(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA busy_timeout=5000")
            db.execute(f"PRAGMA page_size={int(self.page_size)}")  # before WAL mode creates the file
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            self._wal_mode = mode.lower() == "wal"
            if mode.lower() != "wal":
                log.warning("buffer: WAL not available (%s), using %s", self.path, mode)
            db.execute(f"PRAGMA synchronous={self.synchronous}")
            self._page_size = db.execute("PRAGMA page_size").fetchone()[0]
            db.execute(f"PRAGMA wal_autocheckpoint={max(1, WAL_BYTES // self._page_size)}")
            db.execute(f"PRAGMA journal_size_limit={WAL_BYTES}")
            ok = db.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise BufferCorrupt(f"quick_check: {ok}")
            db.execute("BEGIN IMMEDIATE")
            v1 = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'outbox'").fetchone()
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    db.execute(stmt)
            if v1:
                self.migrated = _migrate_v1(db)
            db.execute(_VIEW)
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            if "epoch" not in meta:
                meta = {
                    "epoch": secrets.token_hex(8),
                    "next_seq": "1",
                    "created": f"{time.time():.3f}",
                    "schema_version": str(SCHEMA_VERSION),
                    "gateway": self.gateway,
                }
                db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta.items())
            elif meta.get("schema_version") != str(SCHEMA_VERSION):
                meta["schema_version"] = str(SCHEMA_VERSION)
                db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            db.execute("COMMIT")
        except BaseException:
            db.close()
            raise
        self._db = db
        self._split = None
        self.epoch = meta["epoch"]
        top = self._top()
        self.next_seq = max(int(meta["next_seq"]), top + 1)
        self.opened_seq = self.next_seq
        depth, total, sent = db.execute(
            "SELECT coalesce(sum(s.hi - coalesce(c.live, s.lo) + 1), 0), "
            "coalesce(sum(coalesce(c.bytes, s.bytes)), 0), "
            "coalesce(max(s.sent), 0) FROM segments s LEFT JOIN cuts c ON c.lo = s.lo").fetchone()
        self.depth, self.bytes = int(depth), int(total)
        self.dropped = dict(db.execute("SELECT reason, sum(count) FROM drops GROUP BY reason").fetchall())
        self.rejected = int(meta.get("rejected", "0"))
        self.protect_upto = self._sent_upto_saved = max(int(meta.get("sent_upto", "0")), int(sent))
        self._file_id = self._identity()

    def _quarantine(self, why: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        log.error("buffer: %s is corrupt (%s); quarantined as %s, starting a fresh epoch", self.path, why, target)
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                src.rename(Path(str(target) + suffix))
        self.quarantined = target

    def _record_quarantine(self, why: str) -> None:
        """Report the old epoch's undelivered readings as a gap and carry over its events."""
        assert self.quarantined is not None
        old = salvage(self.quarantined)
        now = time.time()
        db = self.db
        mark = self._mark()
        db.execute("BEGIN IMMEDIATE")
        try:
            for ts, type_, payload in old.events:  # verbatim: byte-identical if already sent
                db.execute("INSERT INTO events (ts, type, payload) VALUES (?, ?, ?)", (ts, type_, payload))
            if old.epoch and old.lost and old.first is not None and old.last is not None:
                self._record_drop(old.first, old.last, old.lost, "corrupt_database", now, epoch=old.epoch)
                self._open_gap = None
            self.add_event("buffer_quarantined", {
                "reason": "corrupt_database", "detail": why[:200], "quarantined_as": str(self.quarantined),
                "epoch": self.epoch, "old_epoch": old.epoch, "lost": old.lost if old.epoch else None,
            }, now=now)
            db.execute("COMMIT")
        except BaseException:
            self._rollback_state(mark)
            raise
        log.error("buffer: old epoch %s: %s readings lost, %d undelivered events carried over",
                  old.epoch or "(unreadable)", "unknown number of" if old.lost is None else old.lost,
                  len(old.events))

    def _identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_dev, st.st_ino

    def check_file(self, now: float | None = None) -> str | None:
        """Is `path` still our database? If it was deleted or replaced while we run, put ours back.

        SQLite goes on writing into the open file even after it left the directory: at the next
        start everything in it would be gone. So the open database is copied (backup API) to
        `path` and reopened: same epoch, same seqs, nothing lost. A foreign file found at `path`
        is kept as `<path>.replaced-<time>`. At most once a second; returns what was done.
        """
        now = time.monotonic() if now is None else now
        if now - self._file_checked < 1.0 or self._db is None:
            return None
        self._file_checked = now
        found = self._identity()
        if found == self._file_id:
            if not self._wal_mode or all(os.path.exists(f"{self.path}{s}") for s in ("-wal", "-shm")):
                return None
            # Only the -wal/-shm went: commits would go on into a WAL no restart can find (and a
            # reader would build its own index). Closing checkpoints the detached WAL into the
            # database file; reopening makes a new one beside it. The checkpoint must be whole
            # first: what stays in the detached WAL at close is gone.
            busy, frames, done = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy or done < frames:
                raise sqlite3.OperationalError("database is locked (a reader holds the detached WAL)")
            self._db.close()
            self._db = None
            self._open()
            msg = f"{self.path}-wal/-shm were deleted while the agent ran; checkpointed and reopened (nothing lost)"
            log.error("buffer: %s", msg)
            return msg
        stamp = time.strftime("%Y%m%dT%H%M%S")
        what = "deleted"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if found is not None:
            aside = self.path.with_name(f"{self.path.name}.replaced-{stamp}")
            os.rename(self.path, aside)
            what = f"replaced by another file (kept as {aside})"
        tmp = self.path.with_name(f"{self.path.name}.restore-{stamp}")
        dst = sqlite3.connect(tmp)
        try:
            self._db.backup(dst)
        except BaseException:
            dst.close()
            with contextlib.suppress(OSError):  # a full or read-only disk: tried again in a second
                os.unlink(tmp)
            raise
        dst.close()
        self._db.close()  # the detached file goes with its last descriptor
        self._db = None
        os.replace(tmp, self.path)
        self._open()
        msg = (f"{self.path} was {what} while the agent ran; restored from the open database "
               f"(epoch {self.epoch}, {self.depth} readings kept, next seq {self.next_seq})")
        log.error("buffer: %s", msg)
        return msg

    def close(self) -> None:
        if self._db is not None:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.DatabaseError:
                pass
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise BufferError_("buffer is not open")
        return self._db

    # -- write path -----------------------------------------------------------------------
    def commit(
        self, readings: Sequence[Reading], acks: Iterable[tuple[int, int]] = (), now: float | None = None,
        send_after: tuple[int, int] | None = None, events: Sequence[PendingEvent] = (),
    ) -> CommitResult:
        """One transaction: accept readings (assign seqs), apply acks, enforce limits.

        `send_after=(after_seq, limit)`: when readings were accepted, also fetch_for_send in the
        same transaction (`res.for_send`): `sent_upto` becomes durable with the rows, one WAL
        commit and fsync instead of two (SD-card wear, CPU at light load).

        A full disk lowers the effective size limit to what fits (dropping or rejecting per
        `on_full`) and raises BufferFull only if even that cannot be written.
        """
        now = time.time() if now is None else now
        acks = list(acks)
        if self.full_cap is not None and now - self._full_since > self.full_retry:
            self.full_cap = None  # space may have come back: try the configured limit again
        try:
            return self._commit(readings, acks, now, send_after, events)
        except sqlite3.OperationalError as e:
            if not _is_full(e):
                raise
        self.disk_full_count += 1
        self._full_since = now
        log.error("buffer: disk full at %d stored bytes; limiting the buffer to what fits", self.bytes)
        try:
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.DatabaseError:
            pass
        batch = sum(len(r.values) * 16 + 160 for r in readings)
        self.full_cap = max(0, min(self.bytes, self.max_bytes) - batch)
        try:
            return self._commit(readings, acks, now, send_after, events)
        except sqlite3.OperationalError as e:
            if _is_full(e):
                raise BufferFull(f"{self.path}: disk full") from e
            raise

    def _commit(self, readings: Sequence[Reading], acks: list[tuple[int, int]], now: float,
                send_after: tuple[int, int] | None = None, events: Sequence[PendingEvent] = ()) -> CommitResult:
        res = CommitResult()
        db = self.db
        mark = self._mark()
        db.execute("BEGIN IMMEDIATE")
        try:
            for lo, hi in acks:
                self._remove(lo, hi)
            for type_, body, ts in events:
                self.add_event(type_, body, now=ts, in_txn=True)
            acked_events = sorted(self._events_acked)
            if acked_events:
                db.executemany("DELETE FROM events WHERE id = ?", [(i,) for i in acked_events])
            inserted, send, seg_sent = self._insert(readings, now, res, send_after) if readings else (False, None, 0)
            if not inserted:
                self._save_next_seq()
            if send is None and send_after is not None and res.accepted:
                send = self._read(*send_after)
            # Handed-out marks not in a segment's own `sent` (a caught-up uplink's rows carry it).
            sent_upto = max(self.protect_upto, send[-1][0] if send and send[-1][0] > seg_sent else 0)
            saved = max(self._sent_upto_saved, seg_sent)
            if sent_upto > saved:  # also a mark fetch_for_send could not write
                db.execute("INSERT OR REPLACE INTO meta VALUES ('sent_upto', ?)", (str(sent_upto),))
                saved = sent_upto
            db.execute("COMMIT")
        except BaseException:
            self._rollback_state(mark)
            raise
        self._sent_upto_saved = saved
        self._unwritten_logged = False
        self._forget_events(acked_events)
        res.events = len(events)
        if send is not None:  # committed now: the uplink may publish them (once durable)
            self.read_mark = self.db.total_changes
            if send:
                self.fetched_upto = max(self.fetched_upto, send[-1][0])
                self.protect_upto = max(self.protect_upto, send[-1][0])
            res.for_send = send
        self._log_drops(res.gaps, now)
        return res

    def _log_drops(self, gaps: list[dict[str, Any]], now: float) -> None:
        """Log drops at most every DROP_LOG_EVERY seconds (a full buffer drops on every commit)."""
        for g in gaps:
            self._unlogged[g["reason"]] = self._unlogged.get(g["reason"], 0) + g["count"]
        if self._unlogged and now - self._last_drop_log >= DROP_LOG_EVERY:
            for reason, n in self._unlogged.items():
                log.warning("buffer: dropped %d readings (%s); %d dropped in total; gap events report the seqs",
                            n, reason, self.dropped.get(reason, 0))
            self._unlogged.clear()
            self._last_drop_log = now

    @property
    def limit(self) -> int:
        """Effective size bound: max_bytes, lowered while the disk is (nearly) full."""
        cap = self.max_bytes if self.full_cap is None else min(self.max_bytes, self.full_cap)
        room = self._disk_room()
        return cap if room is None else min(cap, self.bytes + room)

    def _disk_room(self) -> int | None:
        """Stored bytes that can still be added while keeping `min_free_disk` free on the filesystem."""
        try:
            st = os.statvfs(self.path.parent)
            wal = Path(str(self.path) + "-wal")
            wal_size = wal.stat().st_size if wal.exists() else 0
        except OSError:
            return None
        free = st.f_bavail * st.f_frsize
        free_pages = self.db.execute("PRAGMA freelist_count").fetchone()[0] * self._page_size
        wal_growth = max(0, WAL_BYTES - wal_size)
        usable = free + free_pages - self.min_free_disk - wal_growth
        return max(0, int(usable / PAGE_FILL))

    def _save_next_seq(self) -> None:
        """Persist meta.next_seq unless the newest segment already implies it.

        On open next_seq = max(meta.next_seq, max(hi) + 1). A transaction that inserted a segment
        has the last seq handed out as its `hi`, so it skips this: one page less per commit in
        the WAL (SD-card wear). Only deletes without inserts (acks, expiry) need it.
        """
        if self._top() + 1 != self.next_seq:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('next_seq', ?)", (str(self.next_seq),))

    def _top(self) -> int:
        """The newest seq stored (0: none)."""
        row = self.db.execute("SELECT hi FROM segments ORDER BY lo DESC LIMIT 1").fetchone()
        return int(row[0]) if row else 0

    def _insert(self, readings: Sequence[Reading], now: float, res: CommitResult,
                send_after: tuple[int, int] | None = None) -> tuple[bool, list[tuple[int, str]] | None, int]:
        """Assign seqs, enforce the limits, insert the segments.

        Returns (inserted, rows for the uplink, their last seq): with `send_after` past every
        stored seq (the uplink is caught up), what it gets is this commit's rows, taken from
        memory, and the segment records them as handed out (no meta write, no read back).
        """
        db = self.db
        caught_up = send_after is not None and send_after[0] >= self._top()
        seq = self.next_seq
        n = len(readings)
        seqs = range(seq, seq + n)
        # Hot path: whole-batch C-level operations (map/zip/slices), no per-row Python statements.
        payloads = encode_readings(seq, readings)
        res.accepted = list(zip(seqs, readings, strict=True))
        lo, hi = 0, n  # payloads[lo:hi] are stored
        added = sum(map(len, payloads)) + ROW_OVERHEAD * n
        limit = self.limit
        over = self.bytes + added - limit
        if over > 0:
            if self.on_full == "reject_new":
                # Keep the oldest that fit; the rest are refused (never accepted, no seq).
                room = limit - self.bytes
                while hi > 0 and added > room:
                    hi -= 1
                    added -= len(payloads[hi]) + ROW_OVERHEAD
                res.rejected = n - hi
                self.rejected += res.rejected
                res.accepted = res.accepted[:hi]
                if res.rejected:
                    db.execute("INSERT OR REPLACE INTO meta VALUES ('rejected', ?)", (str(self.rejected),))
            else:
                gap = self._drop_oldest(over, "buffer_full", now)
                if gap:
                    res.gaps.append(gap)
                if self.bytes + added > limit:
                    # Even an empty buffer cannot hold the batch: keep the newest that fit.
                    room = limit - self.bytes
                    lo, added = n, 0
                    while lo > 0 and added + len(payloads[lo - 1]) + ROW_OVERHEAD <= room:
                        lo -= 1
                        added += len(payloads[lo]) + ROW_OVERHEAD
                    if lo:
                        # Those get seqs and are dropped at once: reported as a gap like any other.
                        gap = self._record_drop(seq, seq + lo - 1, lo, "buffer_full", now)
                        res.gaps.append(gap)
        send: list[tuple[int, str]] | None = None
        seg_sent = 0
        if caught_up and res.accepted:
            assert send_after is not None
            i0 = max(lo, send_after[0] + 1 - seq)
            take = max(0, min(hi - i0, send_after[1]))
            send = list(zip(range(seq + i0, seq + i0 + take), payloads[i0:i0 + take], strict=True))
            seg_sent = seq + i0 + take - 1 if take else 0
        if hi > lo:
            self._insert_segments(seq + lo, readings[lo:hi], payloads[lo:hi], now, seg_sent)
        self.next_seq = seq + n if self.on_full != "reject_new" else seq + hi
        self.depth += hi - lo
        self.bytes += added
        return hi > lo, send, seg_sent

    def _insert_segments(self, first: int, readings: Sequence[Reading], payloads: list[str], now: float,
                         sent: int = 0) -> None:
        """INSERT seqs first.. as segments of at most SEG_MAX readings."""
        rows = []
        for i in range(0, len(payloads), SEG_MAX):
            rs, ps = readings[i:i + SEG_MAX], payloads[i:i + SEG_MAX]
            lo, hi = first + i, first + i + len(ps) - 1
            synced = "unsynced" not in set(map(_get_clock, rs))
            mono = None if synced else json.dumps(list(map(_get_mono, rs)))
            rows.append((lo, hi, now, synced, min(sent, hi) if sent >= lo else 0,
                         sum(map(len, ps)) + ROW_OVERHEAD * len(ps), mono, _pack(ps)))
        self.db.executemany(_INSERT_SEG, rows)

    def _payloads(self, lo: int, hi: int) -> list[str]:
        """Every payload stored in segment `lo` (seqs lo..hi, acked prefix included)."""
        if self._split is not None and self._split[0] == lo:
            return self._split[1]
        blob = self.db.execute("SELECT payloads FROM segments WHERE lo = ?", (lo,)).fetchone()[0]
        ps = _unpack(blob, hi - lo + 1)
        self._split = (lo, ps)
        return ps

    def _remove(self, lo: int, hi: int) -> tuple[int, int | None, int | None]:
        """Delete the stored seqs lo..hi (in the open transaction); (count, first, last) removed.

        A segment goes whole, loses a prefix (`cuts`), or is split in two (the rest is rewritten).
        """
        db = self.db
        count, first, last = 0, None, None
        rows = db.execute(
            _LIVE + " WHERE s.lo >= coalesce((SELECT max(lo) FROM segments WHERE lo <= ?), 0) AND s.lo <= ? "
            "ORDER BY s.lo", (lo, hi)).fetchall()
        for slo, shi, live, live_bytes in rows:
            a, b = max(lo, live), min(hi, shi)
            if a > b:
                continue
            n = b - a + 1
            if a == live and b == shi:  # the whole rest
                freed = live_bytes
                db.execute("DELETE FROM segments WHERE lo = ?", (slo,))
                if live != slo:
                    db.execute("DELETE FROM cuts WHERE lo = ?", (slo,))
            else:
                ps = self._payloads(slo, shi)
                freed = sum(map(len, ps[a - slo:b + 1 - slo])) + ROW_OVERHEAD * n
                if a == live:  # a prefix: the blob stays, the live mark moves
                    db.execute("INSERT OR REPLACE INTO cuts VALUES (?, ?, ?)", (slo, b + 1, live_bytes - freed))
                else:
                    self._split_segment(slo, live, shi, a, b, ps)
            self.depth -= n
            self.bytes -= freed
            count += n
            first = a if first is None else first
            last = b
        return count, first, last

    def _split_segment(self, slo: int, live: int, shi: int, a: int, b: int, ps: list[str]) -> None:
        """Rewrite segment slo (live seqs live..shi) without seqs a..b: one or two segments."""
        db = self.db
        ts, clock, sent, mono = db.execute("SELECT ts, clock, sent, mono FROM segments WHERE lo = ?", (slo,)).fetchone()
        monos = None if mono is None else json.loads(mono)
        db.execute("DELETE FROM segments WHERE lo = ?", (slo,))
        db.execute("DELETE FROM cuts WHERE lo = ?", (slo,))
        rows = []
        for plo, phi in ((live, a - 1), (b + 1, shi)):
            if plo <= phi:
                i, j = plo - slo, phi + 1 - slo
                rows.append((plo, phi, ts, clock, sent if sent >= plo else 0,
                             sum(map(len, ps[i:j])) + ROW_OVERHEAD * (j - i),
                             None if monos is None else json.dumps(monos[i:j]), _pack(ps[i:j])))
        db.executemany(_INSERT_SEG, rows)
        self._split = None

    def _segments_from(self, first: int, after_lo: int | None = None, batch: int = 64) -> list[tuple[Any, ...]]:
        """Live segments (lo, hi, live, live bytes) holding seqs >= first, `batch` at a time."""
        if after_lo is None:
            return self.db.execute(
                _LIVE + " WHERE s.lo >= coalesce((SELECT max(lo) FROM segments WHERE lo <= ?), 0) AND s.hi >= ? "
                "ORDER BY s.lo LIMIT ?", (first, first, batch)).fetchall()
        return self.db.execute(_LIVE + " WHERE s.lo > ? ORDER BY s.lo LIMIT ?", (after_lo, batch)).fetchall()

    def _drop_oldest(self, need: int, reason: DropReason, now: float) -> dict[str, Any] | None:
        """Delete the oldest readings not in flight until `need` bytes are free."""
        start = self.protect_upto + 1
        freed, end = 0, None
        rows = self._segments_from(start)
        while rows and freed < need:
            for slo, shi, live, size in rows:
                a = max(live, start)
                if a == live:
                    if freed + size < need:
                        freed, end = freed + size, shi
                        continue
                ps = self._payloads(slo, shi)
                for seq in range(a, shi + 1):
                    freed += len(ps[seq - slo]) + ROW_OVERHEAD
                    end = seq
                    if freed >= need:
                        break
                if freed >= need:
                    break
            else:
                rows = self._segments_from(start, rows[-1][0])
        if end is None:
            return None
        count, first, last = self._remove(start, end)
        if not count or first is None or last is None:
            return None
        return self._record_drop(first, last, count, reason, now)

    def expire(self, now: float | None = None) -> list[dict[str, Any]]:
        """Drop readings older than max_age (one transaction); returns the gap events."""
        now = time.time() if now is None else now
        db = self.db
        cutoff = now - self.max_age
        mark = self._mark()
        db.execute("BEGIN IMMEDIATE")
        try:
            old = db.execute("SELECT lo, hi FROM segments WHERE ts < ? AND hi > ? ORDER BY lo",
                             (cutoff, self.protect_upto)).fetchall()
            first = last = None
            n = 0
            for slo, shi in old:
                c, f, last_ = self._remove(max(slo, self.protect_upto + 1), shi)
                if c:
                    n += c
                    first = f if first is None else first
                    last = last_
            gaps = []
            if n and first is not None and last is not None:
                gaps.append(self._record_drop(first, last, n, "max_age", now))
                self._save_next_seq()
            db.execute("COMMIT")
        except BaseException:
            self._rollback_state(mark)
            raise
        self._log_drops(gaps, now)
        return gaps

    def _record_drop(self, first: int, last: int, count: int, reason: DropReason, now: float,
                     epoch: str | None = None) -> dict[str, Any]:
        db = self.db
        db.execute(
            "INSERT INTO drops (ts, reason, from_seq, to_seq, count) VALUES (?, ?, ?, ?, ?)",
            (now, reason, first, last, count),
        )
        self.dropped[reason] = self.dropped.get(reason, 0) + count
        gap = {"v": 1, "type": "gap", "epoch": epoch or self.epoch, "from_seq": first, "to_seq": last,
               "count": count, "reason": reason}
        # Merge into the previous gap of the same reason while it was never published: an
        # outage of days must not turn into millions of events, and a published gap is final
        # (the platform dedupes gaps on (gateway, epoch, from_seq)).
        if (epoch is None and self._open_gap and self._open_gap[1] == reason
                and self._open_gap[0] not in self._events_sent):
            row = db.execute("SELECT payload FROM events WHERE id = ?", (self._open_gap[0],)).fetchone()
            if row is not None:
                prev = json.loads(row[0])
                if prev["to_seq"] < first:
                    prev["to_seq"] = last
                    prev["count"] += count
                    prev["ts"] = _iso(now)
                    db.execute("UPDATE events SET payload = ?, ts = ? WHERE id = ?",
                               (json.dumps(prev, separators=(",", ":")), now, self._open_gap[0]))
                    return gap
        eid = self.add_event("gap", gap, now=now, in_txn=True)
        self._open_gap = (eid, reason)
        return gap

    def _mark(self) -> tuple[Any, ...]:
        """The in-memory view a transaction may move (restored by _rollback_state if it fails)."""
        return (self.next_seq, self.depth, self.bytes, dict(self.dropped), self.rejected, self._open_gap)

    def _rollback_state(self, mark: tuple[Any, ...]) -> None:
        # Restored from memory, not re-read: after an I/O error reads may fail too, and a
        # next_seq left advanced by a failed commit would skip seqs (a hole no gap explains).
        try:
            self.db.execute("ROLLBACK")
        except sqlite3.DatabaseError:
            pass
        self.next_seq, self.depth, self.bytes, self.dropped, self.rejected, self._open_gap = mark
        self._split = None  # the cached payloads may be of a segment the rollback undid

    # -- events -------------------------------------------------------------------------
    def add_event(self, type_: str, body: dict[str, Any], *, now: float | None = None, in_txn: bool = False) -> int:
        """Store an event durably for `P/events`; returns its id."""
        now = time.time() if now is None else now
        payload = {"v": 1, "type": type_, **{k: v for k, v in body.items() if k not in ("v", "type")}}
        payload.setdefault("ts", _iso(now))
        cur = self.db.execute(
            "INSERT INTO events (ts, type, payload) VALUES (?, ?, ?)",
            (now, type_, json.dumps(payload, separators=(",", ":"))),
        )
        return int(cur.lastrowid or 0)

    def fetch_events(self, limit: int = 100) -> list[tuple[int, str]]:
        """Undelivered events not already in flight, oldest first; marks them in flight."""
        skip = self._events_inflight | self._events_acked
        rows = self.db.execute(
            "SELECT id, payload FROM events ORDER BY id LIMIT ?", (limit + len(skip),)
        ).fetchall()
        out = [(i, p) for i, p in rows if i not in skip][:limit]
        self.read_mark = self.db.total_changes
        self._events_inflight.update(i for i, _ in out)
        self._events_sent.update(i for i, _ in out)
        return out

    def ack_event(self, event_id: int) -> None:
        """The broker has the event: delete it (kept for the next commit if the disk refuses)."""
        self._events_acked.add(event_id)
        self._events_inflight.discard(event_id)
        if self._open_gap and self._open_gap[0] == event_id:
            self._open_gap = None
        done = sorted(self._events_acked)
        try:
            self.db.executemany("DELETE FROM events WHERE id = ?", [(i,) for i in done])
        except sqlite3.DatabaseError as e:
            if write_fault(e) is None:
                raise
            self._unwritten(e, "acknowledged events are deleted later")
            return
        self._forget_events(done)

    def _forget_events(self, ids: Iterable[int]) -> None:
        for i in ids:
            self._events_acked.discard(i)
            self._events_sent.discard(i)

    def _unwritten(self, e: BaseException, what: str) -> None:
        if not self._unwritten_logged:
            log.warning("buffer: write refused (%s); %s", e, what)
            self._unwritten_logged = True

    def release_events(self) -> None:
        """After a disconnect: in-flight events become sendable again."""
        self._events_inflight.clear()

    # -- read path ----------------------------------------------------------------------
    def fetch(self, after_seq: int, limit: int) -> list[tuple[int, str]]:
        """Up to `limit` (seq, payload) with seq > after_seq, in seq order."""
        rows = self._read(after_seq, limit)
        if rows:
            self.fetched_upto = max(self.fetched_upto, rows[-1][0])
        self.read_mark = self.db.total_changes
        return rows

    def _read(self, after_seq: int, limit: int) -> list[tuple[int, str]]:
        out: list[tuple[int, str]] = []
        first, prev = after_seq + 1, None
        while len(out) < limit:
            rows = self._segments_from(first, prev)
            if not rows:
                break
            for slo, shi, live, _ in rows:
                a = max(live, first)
                take = min(shi - a + 1, limit - len(out))
                if take <= 0:
                    continue
                ps = self._payloads(slo, shi)
                out.extend(zip(range(a, a + take), ps[a - slo:a - slo + take], strict=True))
                if len(out) >= limit:
                    break
            prev = rows[-1][0]
        return out

    def fetch_for_send(self, after_seq: int, limit: int) -> list[tuple[int, str]]:
        """Like fetch, and mark the rows as handed to the uplink (durably) before they go out."""
        rows = self.fetch(after_seq, limit)
        if rows and rows[-1][0] > self.protect_upto:
            self.protect_upto = rows[-1][0]
            try:
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('sent_upto', ?)", (str(self.protect_upto),))
            except sqlite3.DatabaseError as e:
                # Delivering what is stored comes first: the mark protects the rows in memory
                # and the next commit writes it.
                if write_fault(e) is None:
                    raise
                self._unwritten(e, "the handed-out mark is kept in memory until a commit writes it")
            else:
                self._sent_upto_saved = self.protect_upto
                self.read_mark = self.db.total_changes
        return rows

    # -- durability ---------------------------------------------------------------------
    @property
    def durable(self) -> bool:
        """Everything handed out for publishing so far is on disk."""
        return self.durable_changes >= self.read_mark

    def sync(self) -> bool:
        """Make every commit so far durable; True when done (False: retry later).

        FULL: each commit already was. NORMAL: a PASSIVE checkpoint (SQLite syncs the WAL
        before it copies frames, and the database file after); it is complete only if no
        reader held back a frame.
        """
        mark = self.db.total_changes
        if self.synchronous == "NORMAL":
            try:
                busy, frames, done = self.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.OperationalError as e:
                if not _is_full(e):
                    raise
                # A full disk refuses the checkpoint's copy into the database file, not the
                # WAL's own sync: fsync the WAL ourselves (the file, whichever descriptor).
                fd = os.open(f"{self.path}-wal", os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                busy = done = frames = 0
            if busy or done < frames:
                return False
            self.syncs += 1
        self.durable_changes = mark
        return True

    # -- clock correction ---------------------------------------------------------------
    def restamp_unsynced(self, offset: float) -> tuple[int, int]:
        """Re-stamp the unsynced readings this process accepted with `mono + offset` (one transaction).

        Readings up to max(fetched_upto, protect_upto) may already be on the wire: their payload
        stays byte-identical; only the internal accept time (used for max_age) is corrected. The
        rest get the corrected ts and clock "synced" in their payload. Returns (rewritten, frozen).
        """
        db = self.db
        frozen_upto = max(self.fetched_upto, self.protect_upto)
        mark = self._mark()
        rewritten = frozen = delta_all = 0
        db.execute("BEGIN IMMEDIATE")
        try:
            segs = db.execute(
                "SELECT s.lo, s.hi, coalesce(c.live, s.lo), c.bytes, s.mono, s.payloads FROM segments s "
                "LEFT JOIN cuts c ON c.lo = s.lo WHERE s.clock = 0 AND s.lo >= ? ORDER BY s.lo",
                (self.opened_seq,)).fetchall()
            for lo, hi, live, cut, mono, blob in segs:
                monos = json.loads(mono)
                ps = _unpack(blob, hi - lo + 1)
                stamps: list[float] = []
                left = False  # unsynced payloads stay (frozen)
                delta = 0
                for i in range(live - lo, hi - lo + 1):
                    body = json.loads(ps[i])
                    if body.get("clock") != "unsynced":
                        continue
                    ts = monos[i] + offset
                    stamps.append(ts)
                    if lo + i <= frozen_upto:
                        frozen += 1
                        left = True
                        continue
                    body["ts"], body["clock"] = format_ts(ts), "synced"
                    new = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
                    delta += len(new) - len(ps[i])
                    ps[i] = new
                    rewritten += 1
                if not stamps:
                    continue
                # One accept time per segment: the latest corrected one (max_age never drops early).
                db.execute("UPDATE segments SET ts = ?, clock = ?, bytes = bytes + ?, payloads = ? WHERE lo = ?",
                           (max(stamps), not left, delta, _pack(ps), lo))
                if cut is not None and delta:
                    db.execute("UPDATE cuts SET bytes = bytes + ? WHERE lo = ?", (delta, lo))
                delta_all += delta
            db.execute("COMMIT")
        except BaseException:
            self._rollback_state(mark)
            raise
        self._split = None
        self.bytes += delta_all
        return rewritten, frozen

    def first_seq(self) -> int | None:
        row = self.db.execute(_LIVE + " ORDER BY s.lo LIMIT 1").fetchone()
        return int(row[2]) if row else None

    def oldest_ts(self) -> float | None:
        row = self.db.execute("SELECT ts FROM segments ORDER BY lo LIMIT 1").fetchone()
        return row[0] if row else None

    def stats(self) -> BufferStats:
        """Counters for health and status; a disk that fails reads leaves the last values read."""
        db = self.db
        try:
            self._last_read = (db.execute("SELECT count(*) FROM events").fetchone()[0], self.oldest_ts())
        except sqlite3.DatabaseError:
            pass
        pending, oldest = self._last_read
        try:
            files = (Path(str(self.path) + suffix) for suffix in ("", "-wal"))
            file_bytes = sum(f.stat().st_size for f in files if f.exists())
        except OSError:
            file_bytes = 0
        return BufferStats(
            epoch=self.epoch, depth=self.depth, bytes=self.bytes, max_bytes=self.max_bytes,
            oldest_ts=oldest, next_seq=self.next_seq, dropped=dict(self.dropped),
            rejected=self.rejected, events_pending=pending, file_bytes=file_bytes,
        )


FULL_RETRY = 10.0  # seconds before a full disk is probed again
DROP_LOG_EVERY = 30.0
WAL_BYTES = 1 << 20  # checkpoint (and cap the WAL file) at 1 MiB, whatever the page size
PAGE_FILL = 1.4  # file bytes per stored byte (b-tree page fill, WAL copy)


def sqlite_code(e: BaseException) -> int | None:
    """The primary SQLite result code of `e` (extended codes folded: SQLITE_IOERR_WRITE -> SQLITE_IOERR)."""
    code = getattr(e, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def _is_full(e: sqlite3.OperationalError) -> bool:
    return sqlite_code(e) == sqlite3.SQLITE_FULL


def is_locked(e: BaseException) -> bool:
    """Another connection held the database past the busy timeout (e.g. a sqlite3 shell)."""
    return isinstance(e, sqlite3.OperationalError) and sqlite_code(e) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


_FAULTS: dict[int, Fault] = {
    sqlite3.SQLITE_FULL: "disk_full",
    sqlite3.SQLITE_BUSY: "locked",
    sqlite3.SQLITE_LOCKED: "locked",
    sqlite3.SQLITE_READONLY: "read_only",
    sqlite3.SQLITE_PERM: "read_only",
    sqlite3.SQLITE_IOERR: "io_error",
    sqlite3.SQLITE_CANTOPEN: "io_error",
    sqlite3.SQLITE_CORRUPT: "corrupt",
    sqlite3.SQLITE_NOTADB: "corrupt",
}


_OS_FAULTS: dict[int, Fault] = {errno.ENOSPC: "disk_full", errno.EDQUOT: "disk_full", errno.EROFS: "read_only",
                                 errno.EACCES: "read_only", errno.EPERM: "read_only"}


def write_fault(e: BaseException, path: Path | None = None) -> Fault | None:
    """What a failed buffer operation says about the disk, or None when it is not the disk's doing.

    SQLite reports a write refused by a filesystem gone read-only (ext4 errors=remount-ro on a
    failing SD card; newer kernels do not even flag the mount) as a plain I/O error: with `path`
    given, creating a file next to it tells read_only (EROFS) and disk_full (ENOSPC) apart.
    """
    if isinstance(e, BufferFull):
        return "disk_full"
    if isinstance(e, OSError):  # our own file operations (restoring a deleted file, a WAL fsync)
        return _OS_FAULTS.get(e.errno or 0, "io_error")
    if not isinstance(e, sqlite3.DatabaseError):
        return None
    code = sqlite_code(e)
    fault = _FAULTS.get(code) if code is not None else None
    if fault == "io_error" and path is not None:
        probe = path.with_name(f".{path.name}.write-probe")
        try:
            os.close(os.open(probe, os.O_CREAT | os.O_WRONLY, 0o600))
            os.unlink(probe)
        except OSError as oe:
            fault = _OS_FAULTS.get(oe.errno or 0, fault)
    return fault


_EPOCH_RE = re.compile(r"^[0-9a-f]{16}$")


@dataclass(slots=True)
class Salvage:
    """What could be read back from a quarantined database."""

    epoch: str | None = None
    lost: int | None = None  # undelivered readings (rows still in the outbox)
    first: int | None = None
    last: int | None = None
    events: list[tuple[float, str, str]] = field(default_factory=list)  # undelivered events


def salvage(path: Path) -> Salvage:
    """Read, best effort and read-only, the epoch, outbox range and pending events of a broken db."""
    out = Salvage()
    try:
        src = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return out
    try:
        try:
            row = src.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
            if row and isinstance(row[0], str) and _EPOCH_RE.match(row[0]):
                out.epoch = row[0]
        except sqlite3.DatabaseError:
            return out
        for sql in ("SELECT min(coalesce(c.live, s.lo)), max(s.hi), "
                    "coalesce(sum(s.hi - coalesce(c.live, s.lo) + 1), 0) "
                    "FROM segments s LEFT JOIN cuts c ON c.lo = s.lo",
                    "SELECT min(seq), max(seq), count(*) FROM outbox"):  # v2, else v1
            try:
                first, last, n = src.execute(sql).fetchone()
            except sqlite3.DatabaseError:
                continue
            out.lost, out.first, out.last = int(n), first, last
            break
        try:
            for ts, type_, payload in src.execute("SELECT ts, type, payload FROM events ORDER BY id"):
                if isinstance(payload, str) and isinstance(type_, str):
                    json.loads(payload)  # skip rows that are no longer valid JSON
                    out.events.append((float(ts), type_, payload))
        except (sqlite3.DatabaseError, ValueError, TypeError):
            out.events.clear()  # all or nothing: a partial list would be misleading
    finally:
        src.close()
    return out


def stored_depth(db: sqlite3.Connection) -> int:
    """Readings stored in a buffer database of either layout (v2 segments, v1 rows)."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'segments'").fetchone():
        return int(db.execute("SELECT coalesce(sum(s.hi - coalesce(c.live, s.lo) + 1), 0) "
                              "FROM segments s LEFT JOIN cuts c ON c.lo = s.lo").fetchone()[0])
    return int(db.execute("SELECT count(*) FROM outbox").fetchone()[0])


def _pack(payloads: Sequence[str]) -> str:
    """A segment's payloads column: a JSON array, one element per line."""
    return "[" + _SEP.join(payloads) + "]"


def _unpack(blob: str, n: int) -> list[str]:
    """The n payloads of a segment, byte-identical to what was packed."""
    return [blob[1:-1]] if n == 1 else blob[1:-1].split(_SEP)


def _migrate_v1(db: sqlite3.Connection) -> int:
    """Layout v1 (one `outbox` row per reading) into segments, in the caller's transaction.

    Consecutive seqs with one accept time (what one commit stored) become one segment; seqs,
    payloads, accept times, clock state and monotonic times are kept as they are. Returns the
    number of readings moved.
    """
    moved = 0
    group: list[tuple[int, float, int, float, str]] = []

    def flush() -> None:
        if group:
            synced = all(g[2] for g in group)
            db.execute(_INSERT_SEG, (group[0][0], group[-1][0], group[0][1], synced, 0,
                                     sum(len(g[4]) for g in group) + ROW_OVERHEAD * len(group),
                                     None if synced else json.dumps([g[3] for g in group]),
                                     _pack([g[4] for g in group])))
            group.clear()

    cur = db.execute("SELECT seq, ts, clock, mono, payload FROM outbox ORDER BY seq")
    while chunk := cur.fetchmany(10_000):
        for row in chunk:
            seq, ts, _, _, payload = row
            if not (group and seq == group[-1][0] + 1 and ts == group[0][1] and len(group) < SEG_MAX
                    and "\n" not in payload and "\n" not in group[-1][4]):
                flush()  # a payload with a raw newline (never written by this agent) stays alone
            group.append(row)
            moved += 1
    flush()
    db.execute("DROP TABLE outbox")
    if moved:
        log.warning("buffer: layout v1 migrated to v2 in place: %d readings kept", moved)
    return moved


def _iso(ts: float) -> str:
    from agent.model import format_ts

    return format_ts(ts)
