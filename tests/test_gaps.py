"""Gap events of the SQLite outbox: every drop path, exact counts, durability, quarantine."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from agent.buffer import ROW_OVERHEAD, Outbox
from agent.contract import validate
from agent.model import Reading, encode_reading
from agent.receiver import Receiver

T0 = 1_790_000_000.0


def reading(i: int, ts: float = T0) -> Reading:
    return Reading(device="a101-co2", driver="senseair_s8", values={"co2": 400 + i}, ts=ts, mono=float(i))


def row_size(seq: int) -> int:
    return len(encode_reading(seq, reading(seq))) + ROW_OVERHEAD


def events(ob: Outbox) -> list[dict]:
    return [json.loads(p) for _, p in ob.db.execute("SELECT id, payload FROM events ORDER BY id")]


def gaps(ob: Outbox) -> list[dict]:
    return [e for e in events(ob) if e["type"] == "gap"]


def deliver_all(ob: Outbox, rx: Receiver, gateway: str = "gw-test") -> None:
    """What the uplink does once the broker is back: telemetry, then events; acks delete."""
    rows = ob.fetch_for_send(0, 100_000)
    if rows:
        body = ('{"v":1,"gateway":"%s","epoch":"%s","readings":[' % (gateway, ob.epoch)
                + ",".join(p for _, p in rows) + "]}")
        rx.ingest(f"edge/{gateway}/telemetry", body.encode())
        ob.commit([], [(rows[0][0], rows[-1][0])])
    for eid, payload in ob.fetch_events(1000):
        rx.ingest(f"edge/{gateway}/events", payload.encode())
        ob.ack_event(eid)


def test_drop_oldest_gap_counts_equal_the_lost_seqs(tmp_path: Path) -> None:
    size = row_size(1)
    ob = Outbox(tmp_path / "b.db", max_bytes=10 * size + size // 2, gateway="gw-test").open()
    for i in range(1, 101):  # one reading per commit: 100 commits, 90 drops
        ob.commit([reading(i)], now=T0 + i)
    assert ob.depth == 10 and ob.next_seq == 101
    gs = gaps(ob)
    assert len(gs) == 1, "drops while undelivered merge into one event"
    assert (gs[0]["from_seq"], gs[0]["to_seq"], gs[0]["count"], gs[0]["reason"]) == (1, 90, 90, "buffer_full")
    assert ob.dropped == {"buffer_full": 90}
    for g in gs:
        validate("events", json.dumps(g))
    rx = Receiver(since_epoch_start=True)
    deliver_all(ob, rx)
    rep = rx.report()
    assert (rep["received"], rep["gap_readings"], rep["missing"], rep["unexplained"], rep["gap_balance"]) == (
        10, 90, 90, 0, 0)
    assert rep["ok"]


def test_a_batch_larger_than_the_buffer_keeps_the_newest_and_reports_the_rest(tmp_path: Path) -> None:
    size = row_size(1)
    ob = Outbox(tmp_path / "b.db", max_bytes=5 * size + 10).open()
    ob.commit([reading(i) for i in range(1, 21)], now=T0)
    assert ob.depth == 5
    assert [s for s, _ in ob.fetch(0, 100)] == [16, 17, 18, 19, 20]
    assert [(g["from_seq"], g["to_seq"], g["count"]) for g in gaps(ob)] == [(1, 15, 15)]


def test_sent_rows_are_never_dropped_and_published_gaps_are_final(tmp_path: Path) -> None:
    size = row_size(1)
    ob = Outbox(tmp_path / "b.db", max_bytes=10 * size + 10).open()
    ob.commit([reading(i) for i in range(1, 5)], now=T0)
    sent = ob.fetch_for_send(0, 100)  # seqs 1-4 handed to the uplink, then the link drops
    assert [s for s, _ in sent] == [1, 2, 3, 4]
    ob.release_events()
    for i in range(5, 31):
        ob.commit([reading(i)], now=T0 + i)
    kept = [s for s, _ in ob.fetch(0, 100)]
    assert kept[:4] == [1, 2, 3, 4], "rows possibly delivered are kept for redelivery"
    first = gaps(ob)
    assert [(g["from_seq"], g["count"]) for g in first] == [(5, 30 - 4 - (len(kept) - 4))]
    ((_eid, payload),) = ob.fetch_events(10)  # published; the PUBACK gets lost
    ob.release_events()
    for i in range(31, 36):
        ob.commit([reading(i)], now=T0 + i)
    after = gaps(ob)
    assert after[0] == json.loads(payload), "a published gap never changes"
    assert len(after) == 2 and after[1]["from_seq"] > after[0]["to_seq"]
    # protection survives a restart (persisted before publishing)
    ob.close()
    ob2 = Outbox(tmp_path / "b.db", max_bytes=10 * size + 10).open()
    assert ob2.protect_upto == 4
    for i in range(36, 60):
        ob2.commit([reading(i)], now=T0 + i)
    assert [s for s, _ in ob2.fetch(0, 4)] == [1, 2, 3, 4]
    total_lost = sum(g["count"] for g in gaps(ob2))
    assert total_lost + ob2.depth == 59


def test_max_age_expiry_reports_a_gap_and_spares_sent_rows(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "b.db", max_age=3600).open()
    ob.commit([reading(i) for i in range(1, 4)], now=T0)
    ob.fetch_for_send(0, 1)  # seq 1 in flight
    ob.commit([reading(i) for i in range(4, 11)], now=T0 + 10)
    ob.commit([reading(i) for i in range(11, 13)], now=T0 + 5000)
    got = ob.expire(now=T0 + 3610 + 100)
    assert [(g["from_seq"], g["to_seq"], g["count"], g["reason"]) for g in got] == [(2, 10, 9, "max_age")]
    assert [s for s, _ in ob.fetch(0, 100)] == [1, 11, 12]
    assert ob.dropped == {"max_age": 9}


def test_reject_new_creates_no_gap_and_no_seq(tmp_path: Path) -> None:
    size = row_size(1)
    ob = Outbox(tmp_path / "b.db", max_bytes=3 * size + 10, on_full="reject_new").open()
    res = ob.commit([reading(i) for i in range(1, 6)], now=T0)
    assert [s for s, _ in res.accepted] == [1, 2, 3] and res.rejected == 2
    res = ob.commit([reading(9)], now=T0)
    assert res.rejected == 1 and ob.next_seq == 4
    assert gaps(ob) == [] and ob.rejected == 3


def test_gap_events_survive_a_restart_until_delivered(tmp_path: Path) -> None:
    size = row_size(1)
    ob = Outbox(tmp_path / "b.db", max_bytes=4 * size + 10).open()
    for i in range(1, 21):
        ob.commit([reading(i)], now=T0 + i)
    before = gaps(ob)
    ob.db.close()  # like kill -9: no checkpoint, no clean close
    ob._db = None
    ob2 = Outbox(tmp_path / "b.db", max_bytes=4 * size + 10).open()
    assert gaps(ob2) == before
    rx = Receiver(since_epoch_start=True)
    deliver_all(ob2, rx)
    rep = rx.report()
    assert rep["received"] == ob2.next_seq - 1 - rep["gap_readings"]
    assert rep["unexplained"] == 0 and rep["gap_balance"] == 0 and rep["ok"]
    assert gaps(ob2) == []


def _corrupt_page_of(path: Path, table: str) -> None:
    db = sqlite3.connect(path)
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    with open(path, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xff\xff\xff\xff")  # invalid b-tree page type: quick_check fails


def test_quarantine_reports_the_old_epoch_as_a_gap_and_carries_events(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    size = row_size(1)
    ob = Outbox(path, max_bytes=6 * size + 10).open()
    for i in range(1, 11):
        ob.commit([reading(i)], now=T0 + i)  # 4 dropped (gap event pending), 6 waiting
    ob.commit([], [(5, 6)])  # two of them delivered
    old_epoch, old_gaps = ob.epoch, gaps(ob)
    ob.close()
    _corrupt_page_of(path, "drops")
    ob2 = Outbox(path).open()
    assert ob2.quarantined is not None and ob2.epoch != old_epoch
    evs = events(ob2)
    assert evs[0] == old_gaps[0], "undelivered events of the old file are carried over verbatim"
    gap = evs[1]
    assert (gap["epoch"], gap["from_seq"], gap["to_seq"], gap["count"], gap["reason"]) == (
        old_epoch, 7, 10, 4, "corrupt_database")
    q = evs[2]
    assert q["type"] == "buffer_quarantined" and q["old_epoch"] == old_epoch and q["lost"] == 4
    assert q["epoch"] == ob2.epoch
    for e in evs:
        validate("events", json.dumps(e))
    # the platform saw seqs 5-6 of the old epoch; 1-4 and 7-10 are accounted for by gaps
    rx = Receiver(since_epoch_start=True)
    old_r = [encode_reading(s, reading(s)) for s in (5, 6)]
    rx.ingest("edge/gw/telemetry", ('{"v":1,"gateway":"gw","epoch":"%s","readings":[%s]}'
                                    % (old_epoch, ",".join(old_r))).encode())
    deliver_all(ob2, rx, "gw")
    rep = rx.report()
    assert (rep["received"], rep["gap_readings"], rep["unexplained"], rep["gap_balance"]) == (2, 8, 0, 0)


def test_quarantine_of_an_unreadable_file_reports_an_unknown_loss(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    path.write_bytes(b"this is not a database" * 100)
    ob = Outbox(path).open()
    (q,) = events(ob)
    assert q["type"] == "buffer_quarantined" and q["old_epoch"] is None and q["lost"] is None
    validate("events", json.dumps(q))
    assert Path(q["quarantined_as"]).read_bytes().startswith(b"this is not")
