"""Outbox layout v2 (segments): a real v1 file migrates in place with nothing lost, and acks,
drops and reopen keep every seq, payload and counter exact whatever the segment boundaries."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agent.buffer as buffer
from agent.buffer import ROW_OVERHEAD, Outbox, stored_depth
from agent.model import Reading, encode_reading

# The v1 file format (agent/buffer.py before layout v2), verbatim: one row per reading.
V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY, ts REAL NOT NULL, device TEXT NOT NULL, clock INTEGER NOT NULL,
    mono REAL NOT NULL, payload TEXT NOT NULL
);
CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, type TEXT NOT NULL,
                     payload TEXT NOT NULL);
CREATE TABLE drops (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, reason TEXT NOT NULL,
                    from_seq INTEGER NOT NULL, to_seq INTEGER NOT NULL, count INTEGER NOT NULL);
"""
EPOCH = "0123456789abcdef"


def reading(i: int, clock: str = "synced") -> Reading:
    return Reading(device=f"dev-{i % 3}", driver="sim", values={"n": i, "t": i / 7, "s": "Ä\"\\x"},
                   ts=1_790_000_000.0 + i, clock=clock, mono=1000.0 + i / 3)  # type: ignore[arg-type]


def build_v1(path: Path) -> list[tuple[int, float, str, int, float, str]]:
    """A v1 buffer as the v1 agent leaves it: commits of several rows (one ts each), acked holes,
    a drop with its gap event, a row re-stamped alone, unsynced rows, sent_upto, rejected."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA page_size=4096")
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(V1_SCHEMA)
    rows = []
    commits = [(1, 8, 100.0), (9, 15, 100.5), (16, 16, 101.0), (17, 40, 101.5), (41, 45, 102.0)]
    acked = set(range(1, 6)) | {12}  # acked: seqs 1-5 and one in the middle of a commit
    dropped = set(range(17, 21))  # drop_oldest took 17-20
    for lo, hi, ts in commits:
        for seq in range(lo, hi + 1):
            if seq in acked or seq in dropped:
                continue
            clock = "unsynced" if 41 <= seq else "synced"
            r = reading(seq, clock)
            rows.append((seq, ts + (0.25 if seq == 30 else 0.0), r.device, int(clock == "synced"), r.mono,
                         encode_reading(seq, r)))
    db.executemany("INSERT INTO outbox VALUES (?, ?, ?, ?, ?, ?)", rows)
    gap = {"v": 1, "type": "gap", "epoch": EPOCH, "from_seq": 17, "to_seq": 20, "count": 4,
           "reason": "buffer_full", "ts": "2026-12-07T10:00:00.000Z"}
    db.execute("INSERT INTO drops (ts, reason, from_seq, to_seq, count) VALUES (101.6, 'buffer_full', 17, 20, 4)")
    db.execute("INSERT INTO events (ts, type, payload) VALUES (101.6, 'gap', ?)", (json.dumps(gap, separators=(",", ":")),))
    db.execute("INSERT INTO events (ts, type, payload) VALUES (101.7, 'agent_started', '{\"v\":1,\"type\":\"agent_started\"}')")
    meta = {"epoch": EPOCH, "next_seq": "48", "created": "99.000", "schema_version": "1", "gateway": "gw-1",
            "sent_upto": "22", "rejected": "3"}  # 46-47 were acked: next_seq is above max(seq)
    db.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
    db.close()  # WAL checkpointed on close, as a stopped v1 agent leaves it
    return rows


def test_v1_file_migrates_in_place_and_delivers_every_reading_identically(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    rows = build_v1(path)
    con = sqlite3.connect(path)
    v1_events = con.execute("SELECT id, ts, type, payload FROM events ORDER BY id").fetchall()
    con.close()
    ob = Outbox(path).open()
    assert ob.migrated == len(rows)
    assert (ob.epoch, ob.next_seq, ob.depth) == (EPOCH, 48, len(rows))
    assert ob.bytes == sum(len(r[5]) + ROW_OVERHEAD for r in rows)
    assert ob.protect_upto == 22 and ob.rejected == 3 and ob.dropped == {"buffer_full": 4}
    # The view shows every v1 row, every column as it was (mono is kept only where the clock
    # correction needs it: unsynced readings).
    assert ob.db.execute("SELECT seq, ts, device, clock, mono, payload FROM outbox ORDER BY seq").fetchall() == [
        (seq, ts, dev, clock, None if clock else mono, p) for seq, ts, dev, clock, mono, p in rows]
    assert ob.db.execute("SELECT type FROM sqlite_master WHERE name = 'outbox'").fetchone() == ("view",)
    assert ob.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("2",)
    assert ob.db.execute("SELECT id, ts, type, payload FROM events ORDER BY id").fetchall() == v1_events
    # One segment per v1 commit run (holes and the re-stamped row split runs), seqs 41-45 unsynced.
    segs = ob.db.execute("SELECT lo, hi, clock FROM segments ORDER BY lo").fetchall()
    assert segs == [(6, 8, 1), (9, 11, 1), (13, 15, 1), (16, 16, 1), (21, 29, 1), (30, 30, 1), (31, 40, 1),
                    (41, 45, 0)]
    ob.close()
    # Reopen: already v2, nothing moved again; deliver in packs that cut across segments.
    ob = Outbox(path).open()
    assert ob.migrated is None and ob.depth == len(rows)
    got: list[tuple[int, str]] = []
    cursor = 0
    while pack := ob.fetch_for_send(cursor, 4):
        got += pack
        cursor = pack[-1][0]
        ob.commit([], acks=[(pack[0][0], cursor)])
    assert got == [(r[0], r[5]) for r in rows], "every seq once, in order, byte-identical"
    assert (ob.depth, ob.bytes) == (0, 0)
    assert [s for s, _ in ob.commit([reading(99)]).accepted] == [48], "no seq reused"
    ob.close()


def test_restamp_after_migration_rewrites_only_this_process_rows(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    rows = build_v1(path)
    ob = Outbox(path).open()
    ob.commit([reading(100, "unsynced"), reading(101, "unsynced")])  # seqs 48, 49
    assert ob.restamp_unsynced(5.0) == (2, 0), "41-45 are of a previous run: their mono is another clock's"
    live = dict(ob.fetch(0, 1000))
    for seq, *_, payload in rows:
        assert live[seq] == payload
    for seq in (48, 49):
        body = json.loads(live[seq])
        assert body["clock"] == "synced"
    assert ob.bytes == sum(len(p) + ROW_OVERHEAD for p in live.values())
    ob.close()


@pytest.fixture
def small_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(buffer, "SEG_MAX", 5)


ops = st.lists(st.one_of(
    st.tuples(st.just("commit"), st.integers(1, 12)),
    st.tuples(st.just("ack"), st.integers(0, 60), st.integers(0, 12)),
    st.tuples(st.just("send"), st.integers(0, 60), st.integers(1, 9)),
    st.just(("reopen",)),
), max_size=40)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=ops)
def test_acks_in_any_order_keep_the_rest_exact(tmp_path_factory: pytest.TempPathFactory, small_segments: None,
                                               script: list[tuple[Any, ...]]) -> None:
    """Commits, acks of arbitrary ranges (prefix, middle, suffix, across segments), reads and
    restarts against a model: stored seqs, payloads, depth and bytes stay exact."""
    path = tmp_path_factory.mktemp("v2") / "b.db"
    ob = Outbox(path).open()
    model: dict[int, str] = {}
    try:
        for op in script:
            if op[0] == "commit":
                res = ob.commit([reading(i) for i in range(op[1])])
                for seq, r in res.accepted:
                    model[seq] = encode_reading(seq, r)
            elif op[0] == "ack":
                lo, hi = op[1], op[1] + op[2]
                ob.commit([], acks=[(lo, hi)])
                for seq in range(lo, hi + 1):
                    model.pop(seq, None)
            elif op[0] == "send":
                want = sorted((s, p) for s, p in model.items() if s > op[1])[:op[2]]
                assert ob.fetch_for_send(op[1], op[2]) == want
            else:
                ob.close()
                ob = Outbox(path).open()
            assert ob.fetch(0, 10_000) == sorted(model.items())
            assert ob.depth == len(model) == stored_depth(ob.db)
            assert ob.bytes == sum(len(p) + ROW_OVERHEAD for p in model.values())
            assert ob.first_seq() == (min(model) if model else None)
        ob.close()
        ob = Outbox(path).open()
        assert (ob.depth, ob.bytes) == (len(model), sum(len(p) + ROW_OVERHEAD for p in model.values()))
        assert ob.db.execute("SELECT seq, payload FROM outbox ORDER BY seq").fetchall() == sorted(model.items())
    finally:
        ob.close()


def test_drop_oldest_inside_a_segment_spares_what_was_handed_out(tmp_path: Path) -> None:
    """The protected mark inside a segment: the drop splits it, the gap names exactly the seqs."""
    size = len(encode_reading(1, reading(1))) + ROW_OVERHEAD
    ob = Outbox(tmp_path / "b.db", max_bytes=12 * size + size // 2).open()
    ob.commit([reading(i) for i in range(10)])  # one segment, seqs 1-10
    assert [s for s, _ in ob.fetch_for_send(0, 3)] == [1, 2, 3]  # handed out: never dropped
    res = ob.commit([reading(i) for i in range(10, 14)])  # 14 readings > 12: two must go
    assert [(g["from_seq"], g["to_seq"], g["count"]) for g in res.gaps] == [(4, 5, 2)]
    assert [s for s, _ in ob.fetch(0, 100)] == [1, 2, 3, *range(6, 15)]
    assert ob.db.execute("SELECT lo, hi FROM segments ORDER BY lo").fetchall() == [(1, 3), (6, 10), (11, 14)]
    ob.close()
    ob = Outbox(tmp_path / "b.db").open()
    assert ob.depth == 12 and ob.protect_upto == 3
    ob.close()
