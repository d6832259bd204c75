"""The SQLite outbox: seq/epoch, acks, limits, gap records, crash safety, quarantine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.buffer import ROW_OVERHEAD, Outbox
from agent.model import Reading


def reading(i: int, device: str = "d1") -> Reading:
    return Reading(device=device, driver="sim", values={"n": i}, ts=1_790_000_000.0 + i, mono=float(i))


def events(ob: Outbox) -> list[dict[str, object]]:
    return [json.loads(p) for _, p in ob.db.execute("SELECT id, payload FROM events ORDER BY id")]


def test_seq_contiguous_and_epoch_kept_across_reopen(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "b.db").open()
    epoch = ob.epoch
    res = ob.commit([reading(i) for i in range(5)])
    assert [s for s, _ in res.accepted] == [1, 2, 3, 4, 5]
    ob.commit([], acks=[(1, 5)])
    assert ob.depth == 0
    ob.close()
    ob = Outbox(tmp_path / "b.db").open()
    assert ob.epoch == epoch
    res = ob.commit([reading(9)])
    assert [s for s, _ in res.accepted] == [6], "seq never repeats, even after every row was acked"
    ob.close()


def test_payload_is_byte_identical_on_every_fetch(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "b.db").open()
    ob.commit([reading(1), reading(2, "d2")])
    first = ob.fetch(0, 10)
    assert first == ob.fetch(0, 10)
    r = json.loads(first[1][1])
    assert r == {"seq": 2, "device": "d2", "driver": "sim", "ts": "2026-09-21T14:13:22.000Z",
                 "clock": "synced", "values": {"n": 2}, "tags": {}}
    ob.close()


def test_drop_oldest_records_exact_gaps_and_merges_them(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "b.db", max_bytes=10 * (ROW_OVERHEAD + 120)).open()
    total = 0
    for batch in range(10):
        ob.commit([reading(batch * 10 + i) for i in range(10)])
        total += 10
    assert ob.bytes <= ob.max_bytes
    remaining = [s for s, _ in ob.fetch(0, 1000)]
    gaps = [e for e in events(ob) if e["type"] == "gap"]
    assert len(gaps) == 1, "undelivered gaps of one reason merge into one event"
    g = gaps[0]
    assert g["reason"] == "buffer_full" and g["epoch"] == ob.epoch
    assert g["count"] + len(remaining) == total
    assert g["from_seq"] == 1 and g["to_seq"] == remaining[0] - 1
    assert remaining == list(range(remaining[0], total + 1))
    assert ob.dropped == {"buffer_full": g["count"]}
    ob.close()


def test_drop_spares_readings_in_flight(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "b.db", max_bytes=10 * (ROW_OVERHEAD + 120)).open()
    ob.commit([reading(i) for i in range(8)])
    ob.protect_upto = 3  # seqs 1..3 are published, awaiting PUBACK
    ob.commit([reading(i) for i in range(8, 16)])
    seqs = [s for s, _ in ob.fetch(0, 100)]
    assert seqs[:3] == [1, 2, 3]
    gap = next(e for e in events(ob) if e["type"] == "gap")
    assert gap["from_seq"] == 4
    assert gap["count"] == 16 - len(seqs)
    ob.close()


def test_reject_new_refuses_without_consuming_seq(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "b.db", max_bytes=5 * (ROW_OVERHEAD + 120), on_full="reject_new").open()
    res = ob.commit([reading(i) for i in range(10)])
    n = len(res.accepted)
    assert 0 < n < 10 and res.rejected == 10 - n
    assert [s for s, _ in res.accepted] == list(range(1, n + 1))
    ob.commit([], acks=[(1, n)])
    res = ob.commit([reading(99)])
    assert [s for s, _ in res.accepted] == [n + 1], "rejected readings never took a seq"
    assert not [e for e in events(ob) if e["type"] == "gap"]
    assert ob.rejected == 10 - n
    ob.close()


def test_max_age_expiry_is_a_gap(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "b.db", max_age=3600).open()
    ob.commit([reading(i) for i in range(3)], now=1000.0)
    ob.commit([reading(i) for i in range(3, 5)], now=5000.0)
    gaps = ob.expire(now=5000.0)
    assert gaps == [{"v": 1, "type": "gap", "epoch": ob.epoch, "from_seq": 1, "to_seq": 3,
                     "count": 3, "reason": "max_age"}]
    assert [s for s, _ in ob.fetch(0, 10)] == [4, 5]
    ob.close()


def test_events_durable_and_acked_once(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "b.db", max_age=1).open()
    ob.commit([reading(1)], now=0.0)
    ob.expire(now=100.0)
    ob.close()
    ob = Outbox(tmp_path / "b.db").open()
    evs = ob.fetch_events()
    assert len(evs) == 1 and json.loads(evs[0][1])["count"] == 1
    assert ob.fetch_events() == [], "in-flight events are not handed out twice"
    ob.ack_event(evs[0][0])
    ob.release_events()
    assert ob.fetch_events() == []
    ob.close()


def test_corrupt_database_is_quarantined_with_a_fresh_epoch(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    path.write_bytes(b"SQLite format 3\x00" + os.urandom(4096))
    ob = Outbox(path).open()
    assert ob.quarantined is not None and ob.quarantined.exists()
    assert ob.quarantined.read_bytes()[:16] == b"SQLite format 3\x00"
    assert ob.next_seq == 1 and len(ob.epoch) == 16
    ev = events(ob)
    assert ev[0]["type"] == "buffer_quarantined" and ev[0]["reason"] == "corrupt_database"
    ob.close()


_WRITER = textwrap.dedent("""
    import sys
    from agent.buffer import Outbox
    from agent.model import Reading
    ob = Outbox(sys.argv[1]).open()
    print(ob.epoch, flush=True)
    i = 0
    while True:
        ob.commit([Reading("d", "sim", {"n": i + k}, mono=0.0) for k in range(50)])
        i += 50
        if i == 500:
            print("go", flush=True)
""")


@pytest.mark.parametrize("run", range(3))
def test_sigkill_during_commits_leaves_no_seq_hole(tmp_path: Path, run: int) -> None:
    path = tmp_path / "b.db"
    epochs = set()
    for _ in range(2):
        p = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        assert p.stdout is not None
        epochs.add(p.stdout.readline().strip())
        assert p.stdout.readline().strip() == "go"
        p.send_signal(signal.SIGKILL)
        p.wait()
    ob = Outbox(path).open()
    seqs = [s for s, _ in ob.fetch(0, 10_000_000)]
    assert seqs == list(range(1, len(seqs) + 1))
    assert ob.next_seq == len(seqs) + 1
    assert len(seqs) % 50 == 0, "a batch is all or nothing"
    assert len(epochs) == 1 and ob.epoch in epochs
    ob.close()
