"""SQLite outbox: the durable buffer between drivers and the uplink.

Synchronous and single-threaded by design: `agent.pipeline` runs every call in one dedicated
thread so the event loop never blocks on disk.

Guarantees
- A reading is *accepted* when its transaction commits; only then does it own a `seq`.
  `seq` and the row are written in one transaction with `meta.next_seq`, so a crash
  (kill -9, power loss) can lose the uncommitted batch but never leaves a hole in seq.
- `epoch` is made once, when the database is created.
- Rows are deleted only after the broker acknowledged them (PUBACK).
- Every drop of accepted readings (buffer full, max age) is recorded, in the same
  transaction, as a durable gap event for the platform.
- With synchronous=FULL in WAL mode a committed batch survives power loss; the window is
  what is still in memory: at most `buffer.commit_interval` (default 0.5 s) of readings.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any, Literal

from agent.errors import BufferCorrupt, BufferError_
from agent.model import Reading, encode_reading

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# Per-row storage beyond the payload (rowid, ts, device, cell header, index share).
ROW_OVERHEAD = 48

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    ts REAL NOT NULL,          -- accept time (wall clock), for max_age
    device TEXT NOT NULL,
    clock INTEGER NOT NULL,    -- 1 synced, 0 unsynced
    mono REAL NOT NULL,        -- monotonic time of the reading (clock correction)
    payload TEXT NOT NULL      -- the wire form R, byte-identical on every redelivery
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

# SQLite page size of a new database file. Every commit appends the pages it touched to the WAL
# as whole frames: smaller pages mean fewer bytes written per small commit (benchmarks/wear.py).
PAGE_SIZE = 4096
# Inserts go in statements of this many rows (6 parameters each; SQLite allows 32766 from 3.32).
_ROWS_PER_STMT = 100
_INSERT_ONE = "INSERT INTO outbox VALUES (?, ?, ?, ?, ?, ?)"
_INSERT_MANY = "INSERT INTO outbox VALUES " + ",".join(["(?, ?, ?, ?, ?, ?)"] * _ROWS_PER_STMT)
_get_device = attrgetter("device")
_get_clock = attrgetter("clock")
_get_mono = attrgetter("mono")

DropReason = Literal["buffer_full", "max_age", "corrupt_database"]


@dataclass(slots=True)
class CommitResult:
    """What one commit did."""

    accepted: list[tuple[int, Reading]] = field(default_factory=list)
    rejected: int = 0
    gaps: list[dict[str, Any]] = field(default_factory=list)


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
        page_size: int = PAGE_SIZE,
    ) -> None:
        self.path = Path(path)
        self.page_size = page_size  # applies when the file is created; an existing file keeps its own
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.on_full = on_full
        self.synchronous = synchronous
        self.gateway = gateway
        self.quarantined: Path | None = None
        self._db: sqlite3.Connection | None = None
        self.epoch = ""
        self.next_seq = 1
        self.depth = 0
        self.bytes = 0
        self.rejected = 0
        self.dropped: dict[str, int] = {}
        # Seqs at or below this are being published; drops spare them (they may arrive).
        self.protect_upto = 0
        self._events_inflight: set[int] = set()
        self._open_gap: tuple[int, str] | None = None  # (event id, reason) still mergeable

    # -- lifecycle ----------------------------------------------------------------------
    def open(self) -> Outbox:
        """Open or create; a corrupt file is quarantined (renamed, kept) and a fresh one made."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._open()
        except (sqlite3.DatabaseError, BufferCorrupt) as e:
            if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
                raise BufferError_(f"{self.path}: database is locked by another process") from e
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
            if mode.lower() != "wal":
                log.warning("buffer: WAL not available (%s), using %s", self.path, mode)
            db.execute(f"PRAGMA synchronous={self.synchronous}")
            ok = db.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise BufferCorrupt(f"quick_check: {ok}")
            db.execute("BEGIN IMMEDIATE")
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    db.execute(stmt)
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
            db.execute("COMMIT")
        except BaseException:
            db.close()
            raise
        self._db = db
        self.epoch = meta["epoch"]
        top = db.execute("SELECT max(seq) FROM outbox").fetchone()[0] or 0
        self.next_seq = max(int(meta["next_seq"]), top + 1)
        self.depth, total = db.execute("SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox").fetchone()
        self.bytes = total + ROW_OVERHEAD * self.depth
        self.dropped = dict(db.execute("SELECT reason, sum(count) FROM drops GROUP BY reason").fetchall())
        self.rejected = int(meta.get("rejected", "0"))

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
        self.add_event(
            "buffer_quarantined",
            {"reason": "corrupt_database", "detail": why[:200], "quarantined_as": str(self.quarantined)},
        )

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
    def commit(self, readings: Sequence[Reading], acks: Iterable[tuple[int, int]] = (), now: float | None = None) -> CommitResult:
        """One transaction: accept readings (assign seqs), apply acks, enforce limits."""
        now = time.time() if now is None else now
        res = CommitResult()
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            freed = 0
            for lo, hi in acks:
                n, b = db.execute(
                    "SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox WHERE seq BETWEEN ? AND ?",
                    (lo, hi),
                ).fetchone()
                if n:
                    db.execute("DELETE FROM outbox WHERE seq BETWEEN ? AND ?", (lo, hi))
                    self.depth -= n
                    freed += b + ROW_OVERHEAD * n
            self.bytes -= freed
            inserted = self._insert(readings, now, res) if readings else False
            if not inserted:
                self._save_next_seq()
            db.execute("COMMIT")
        except BaseException:
            self._rollback_state()
            raise
        return res

    def _save_next_seq(self) -> None:
        """Persist meta.next_seq unless the table's newest row already implies it.

        On open next_seq = max(meta.next_seq, max(seq) + 1). A transaction that inserted rows
        has the last seq handed out as its newest row, so it skips this: one page less per commit
        in the WAL (SD-card wear). Only deletes without inserts (acks, expiry) need it.
        """
        top = self.db.execute("SELECT max(seq) FROM outbox").fetchone()[0] or 0
        if top + 1 != self.next_seq:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('next_seq', ?)", (str(self.next_seq),))

    def _insert(self, readings: Sequence[Reading], now: float, res: CommitResult) -> bool:
        """Assign seqs, enforce the limits, insert; True if rows were inserted (the newest seqs)."""
        db = self.db
        seq = self.next_seq
        n = len(readings)
        seqs = range(seq, seq + n)
        # Hot path: whole-batch C-level operations (map/zip/slices), no per-row Python statements.
        payloads = list(map(encode_reading, seqs, readings))
        res.accepted = list(zip(seqs, readings, strict=True))
        lo, hi = 0, n  # rows[lo:hi] are inserted
        added = sum(map(len, payloads)) + ROW_OVERHEAD * n
        over = self.bytes + added - self.max_bytes
        if over > 0:
            if self.on_full == "reject_new":
                # Keep the oldest that fit; the rest are refused (never accepted, no seq).
                room = self.max_bytes - self.bytes
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
                if self.bytes + added > self.max_bytes:
                    # Even an empty buffer cannot hold the batch: keep the newest that fit.
                    room = self.max_bytes - self.bytes
                    lo, added = n, 0
                    while lo > 0 and added + len(payloads[lo - 1]) + ROW_OVERHEAD <= room:
                        lo -= 1
                        added += len(payloads[lo]) + ROW_OVERHEAD
                    if lo:
                        # Those get seqs and are dropped at once: reported as a gap like any other.
                        gap = self._record_drop(seq, seq + lo - 1, lo, "buffer_full", now)
                        res.gaps.append(gap)
        if hi > lo:
            self._insert_rows(seq + lo, readings[lo:hi], payloads[lo:hi], now)
        self.next_seq = seq + n if self.on_full != "reject_new" else seq + hi
        self.depth += hi - lo
        self.bytes += added
        return hi > lo

    def _insert_rows(self, first: int, readings: Sequence[Reading], payloads: list[str], now: float) -> None:
        """INSERT the rows first.. as multi-row statements of _ROWS_PER_STMT (fewer steps than one per row)."""
        n = len(readings)
        flat: list[Any] = [None] * (6 * n)
        flat[0::6] = range(first, first + n)
        flat[1::6] = [now] * n
        flat[2::6] = map(_get_device, readings)
        flat[3::6] = [c == "synced" for c in map(_get_clock, readings)]
        flat[4::6] = map(_get_mono, readings)
        flat[5::6] = payloads
        width = 6 * _ROWS_PER_STMT
        full = n // _ROWS_PER_STMT * width
        if full:
            self.db.executemany(_INSERT_MANY, [flat[i:i + width] for i in range(0, full, width)])
        if full < len(flat):
            self.db.executemany(_INSERT_ONE, [flat[i:i + 6] for i in range(full, len(flat), 6)])

    def _drop_oldest(self, need: int, reason: DropReason, now: float) -> dict[str, Any] | None:
        """Delete the oldest rows not in flight until `need` bytes are free."""
        db = self.db
        freed = 0
        first = last = None
        count = 0
        cursor = self.protect_upto
        while freed < need:
            chunk = db.execute(
                "SELECT seq, length(payload) FROM outbox WHERE seq > ? ORDER BY seq LIMIT 2000", (cursor,)
            ).fetchall()
            if not chunk:
                break
            for seq, size in chunk:
                if first is None:
                    first = seq
                last = seq
                count += 1
                freed += size + ROW_OVERHEAD
                if freed >= need:
                    break
            cursor = last  # type: ignore[assignment]
        if first is None or last is None:
            return None
        db.execute("DELETE FROM outbox WHERE seq > ? AND seq <= ?", (self.protect_upto, last))
        self.depth -= count
        self.bytes -= freed
        return self._record_drop(first, last, count, reason, now)

    def expire(self, now: float | None = None) -> list[dict[str, Any]]:
        """Drop readings older than max_age (one transaction); returns the gap events."""
        now = time.time() if now is None else now
        db = self.db
        cutoff = now - self.max_age
        db.execute("BEGIN IMMEDIATE")
        try:
            first, last, n, b = db.execute(
                "SELECT min(seq), max(seq), count(*), coalesce(sum(length(payload)), 0) FROM outbox "
                "WHERE seq > ? AND ts < ?",
                (self.protect_upto, cutoff),
            ).fetchone()
            gaps = []
            if n:
                db.execute("DELETE FROM outbox WHERE seq > ? AND ts < ?", (self.protect_upto, cutoff))
                self.depth -= n
                self.bytes -= b + ROW_OVERHEAD * n
                gaps.append(self._record_drop(first, last, n, "max_age", now))
                self._save_next_seq()
            db.execute("COMMIT")
        except BaseException:
            self._rollback_state()
            raise
        return gaps

    def _record_drop(self, first: int, last: int, count: int, reason: DropReason, now: float) -> dict[str, Any]:
        db = self.db
        db.execute(
            "INSERT INTO drops (ts, reason, from_seq, to_seq, count) VALUES (?, ?, ?, ?, ?)",
            (now, reason, first, last, count),
        )
        self.dropped[reason] = self.dropped.get(reason, 0) + count
        log.warning("buffer: dropped %d readings (seq %d-%d, %s)", count, first, last, reason)
        gap = {"v": 1, "type": "gap", "epoch": self.epoch, "from_seq": first, "to_seq": last,
               "count": count, "reason": reason}
        # Merge into the previous undelivered gap of the same reason: an outage of days
        # must not turn into millions of events.
        if self._open_gap and self._open_gap[1] == reason and self._open_gap[0] not in self._events_inflight:
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

    def _rollback_state(self) -> None:
        try:
            self.db.execute("ROLLBACK")
        except sqlite3.DatabaseError:
            pass
        # Re-read counters: the in-memory view may have moved with the failed transaction.
        db = self.db
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        top = db.execute("SELECT max(seq) FROM outbox").fetchone()[0] or 0
        self.next_seq = max(int(meta["next_seq"]), top + 1)
        self.depth, total = db.execute("SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox").fetchone()
        self.bytes = total + ROW_OVERHEAD * self.depth
        self.dropped = dict(db.execute("SELECT reason, sum(count) FROM drops GROUP BY reason").fetchall())
        self._open_gap = None

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
        rows = self.db.execute("SELECT id, payload FROM events ORDER BY id LIMIT ?", (limit + len(self._events_inflight),)).fetchall()
        out = [(i, p) for i, p in rows if i not in self._events_inflight][:limit]
        self._events_inflight.update(i for i, _ in out)
        return out

    def ack_event(self, event_id: int) -> None:
        self.db.execute("DELETE FROM events WHERE id = ?", (event_id,))
        self._events_inflight.discard(event_id)
        if self._open_gap and self._open_gap[0] == event_id:
            self._open_gap = None

    def release_events(self) -> None:
        """After a disconnect: in-flight events become sendable again."""
        self._events_inflight.clear()

    # -- read path ----------------------------------------------------------------------
    def fetch(self, after_seq: int, limit: int) -> list[tuple[int, str]]:
        """Up to `limit` (seq, payload) with seq > after_seq, in seq order."""
        return self.db.execute(
            "SELECT seq, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
        ).fetchall()

    def first_seq(self) -> int | None:
        return self.db.execute("SELECT min(seq) FROM outbox").fetchone()[0]  # type: ignore[no-any-return]

    def oldest_ts(self) -> float | None:
        row = self.db.execute("SELECT ts FROM outbox ORDER BY seq LIMIT 1").fetchone()
        return row[0] if row else None

    def stats(self) -> BufferStats:
        db = self.db
        pending = db.execute("SELECT count(*) FROM events").fetchone()[0]
        try:
            file_bytes = sum(Path(str(self.path) + s).stat().st_size for s in ("", "-wal") if Path(str(self.path) + s).exists())
        except OSError:
            file_bytes = 0
        return BufferStats(
            epoch=self.epoch, depth=self.depth, bytes=self.bytes, max_bytes=self.max_bytes,
            oldest_ts=self.oldest_ts(), next_seq=self.next_seq, dropped=dict(self.dropped),
            rejected=self.rejected, events_pending=pending, file_bytes=file_bytes,
        )


def _iso(ts: float) -> str:
    from agent.model import format_ts

    return format_ts(ts)
