"""The outbox hot path: the fast encoder says exactly what plain json.dumps says, the batched
insert keeps every column exact, and next_seq survives reopen though insert-only commits skip
the meta write."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.buffer import ROW_OVERHEAD, SEG_MAX, Outbox
from agent.model import Reading, encode_reading, encode_readings, format_ts


def reference_ts(ts: float) -> str:
    ms = round(ts * 1000)
    sec = ms // 1000
    return datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


def reference_encode(seq: int, r: Reading) -> str:
    """The definition: compact json.dumps, non-finite floats dropped, keys in this order."""
    dumps: Any = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    values = {k: v for k, v in r.values.items() if not (isinstance(v, float) and not math.isfinite(v))}
    return (
        f'{{"seq":{seq},"device":{dumps(r.device)},"driver":{dumps(r.driver)},'
        f'"ts":"{reference_ts(r.ts)}","clock":"{r.clock}","values":{dumps(values)},'
        f'"tags":{dumps(dict(r.tags))}}}'
    )


text = st.text(max_size=12)
value = st.one_of(st.floats(), st.integers(min_value=-(2**70), max_value=2**70), st.booleans(), text)
readings = st.builds(
    Reading,
    device=text, driver=text,
    values=st.dictionaries(text, value, max_size=6),
    ts=st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False),
    clock=st.sampled_from(["synced", "unsynced"]),
    tags=st.dictionaries(text, text, max_size=3),
)


@settings(max_examples=400, deadline=None)
@given(seq=st.integers(min_value=1, max_value=2**53), r=readings)
def test_encode_reading_equals_json_dumps(seq: int, r: Reading) -> None:
    out = encode_reading(seq, r)
    ref = reference_encode(seq, r)
    # orjson spells some floats differently (1e16 for 1e+16): same numbers, same keys, same order,
    # so re-encoding the output with json.dumps gives the reference byte for byte.
    assert compact(json.loads(out)) == ref
    assert not re.search(r"\s", re.sub(r'"(?:[^"\\]|\\.)*"', '""', out))  # compact: no whitespace between tokens
    assert json.loads(out)["seq"] == seq


@settings(max_examples=200, deadline=None)
@given(seq=st.integers(min_value=1, max_value=2**53), rs=st.lists(readings, max_size=8))
def test_encode_readings_is_encode_reading_per_seq(seq: int, rs: list[Reading]) -> None:
    """The batch encoder (the outbox's hot path) says byte for byte what encode_reading says."""
    assert encode_readings(seq, rs) == [encode_reading(seq + i, r) for i, r in enumerate(rs)]


def compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


@pytest.mark.parametrize(("values", "wire"), [
    ({"co2": 612, "temperature": 21.4}, '{"co2":612,"temperature":21.4}'),
    ({"t": float("nan"), "rh": 40.5}, '{"rh":40.5}'),  # NaN dropped, not sent as null
    ({"t": float("inf"), "state": "null"}, '{"state":"null"}'),
    ({"big": 2**70}, '{"big":1180591620717411303424}'),  # beyond orjson's 64 bits
    ({"ok": True, "name": "Ä-1"}, '{"ok":true,"name":"Ä-1"}'),
])
def test_encode_reading_values_vectors(values: dict[str, Any], wire: str) -> None:
    out = encode_reading(7, Reading(device="d", driver="sim", values=values, ts=1_790_000_000.123))
    assert out == ('{"seq":7,"device":"d","driver":"sim","ts":"2026-09-21T14:13:20.123Z","clock":"synced",'
                   f'"values":{wire},"tags":{{}}}}')


def test_format_ts_vectors() -> None:
    assert format_ts(1_790_000_000.123) == "2026-09-21T14:13:20.123Z"
    assert format_ts(1_790_000_000.9996) == "2026-09-21T14:13:21.000Z"  # rounds into the next second
    assert format_ts(0.0) == "1970-01-01T00:00:00.000Z"
    assert format_ts(-0.0004) == "1970-01-01T00:00:00.000Z"


def test_batched_insert_rows_exact(tmp_path: Path) -> None:
    """A batch that is not a multiple of the segment size: every column of every reading exact."""
    n = 2 * SEG_MAX + 7
    rs = [Reading(device=f"d{i % 3}", driver="sim", values={"n": i, "x": i / 7}, ts=1_790_000_000.0 + i,
                  clock="synced" if i % 2 else "unsynced", mono=100.0 + i) for i in range(n)]
    ob = Outbox(tmp_path / "b.db").open()
    ob.commit(rs[:1], now=5.0)
    res = ob.commit(rs[1:], now=6.0)
    assert [s for s, _ in res.accepted] == list(range(2, n + 1))
    assert [r for _, r in res.accepted] == rs[1:]
    rows = ob.db.execute("SELECT seq, ts, device, clock, mono, payload FROM outbox ORDER BY seq").fetchall()
    expect = [(i + 1, 5.0 if i == 0 else 6.0, r.device, 1 if r.clock == "synced" else 0, r.mono,
               reference_encode(i + 1, r)) for i, r in enumerate(rs)]
    assert rows == expect
    assert ob.depth == n
    assert ob.bytes == ob.db.execute("SELECT sum(length(payload)) FROM outbox").fetchone()[0] + ROW_OVERHEAD * n
    segs = ob.db.execute("SELECT lo, hi FROM segments ORDER BY lo").fetchall()
    assert segs == [(1, 1), (2, SEG_MAX + 1), (SEG_MAX + 2, 2 * SEG_MAX + 1), (2 * SEG_MAX + 2, n)]
    ob.close()
    again = Outbox(tmp_path / "b.db").open()  # what open() recounts is what commit() counted
    assert (again.depth, again.bytes) == (n, ob.bytes)
    again.close()


def _meta_next_seq(ob: Outbox) -> int:
    return int(ob.db.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()[0])


def _crash_reopen(ob: Outbox, path: Path) -> Outbox:
    ob.db.close()  # no checkpoint, no clean close: what a kill leaves (committed WAL frames)
    ob._db = None
    return Outbox(path).open()


def test_next_seq_never_reused_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    r = Reading(device="d", driver="sim", values={"n": 1}, ts=1_790_000_000.0, mono=1.0)
    ob = Outbox(path).open()
    ob.commit([r] * 3)
    assert _meta_next_seq(ob) == 1, "insert-only commit: the newest row carries next_seq"
    ob = _crash_reopen(ob, path)
    assert [s for s, _ in ob.commit([r]).accepted] == [4]
    ob.commit([], acks=[(1, 4)])  # the table is empty now: meta must carry it
    assert _meta_next_seq(ob) == 5
    ob = _crash_reopen(ob, path)
    assert [s for s, _ in ob.commit([r, r]).accepted] == [5, 6]
    ob.commit([], acks=[(6, 6)])  # the newest row acked, an older one left
    ob = _crash_reopen(ob, path)
    assert [s for s, _ in ob.commit([r]).accepted] == [7]
    ob.commit([r], acks=[(5, 7)])  # acks and inserts in one transaction
    ob = _crash_reopen(ob, path)
    assert [s for s, _ in ob.commit([r]).accepted] == [9]
    ob.max_age = 0.0
    ob.expire(now=2_000_000_000.0)  # expiry empties the table
    assert ob.depth == 0
    ob = _crash_reopen(ob, path)
    assert [s for s, _ in ob.commit([r]).accepted] == [10]
    ob.close()


def test_commit_with_send_after_marks_sent_in_the_same_transaction(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "b.db").open()
    ob.commit([Reading("d", "sim", {"n": 0})])
    statements: list[str] = []
    ob.db.set_trace_callback(statements.append)
    res = ob.commit([Reading("d", "sim", {"n": i}) for i in (1, 2)], send_after=(1, 100))
    ob.db.set_trace_callback(None)
    assert [s for s, _ in res.for_send or []] == [2, 3]
    assert [s for s in statements if s in ("BEGIN IMMEDIATE", "COMMIT")] == ["BEGIN IMMEDIATE", "COMMIT"]
    # The uplink was caught up: the new segment itself records what was handed out (no meta page).
    assert not any("'sent_upto'" in s for s in statements)
    assert ob.db.execute("SELECT lo, hi, sent FROM segments ORDER BY lo").fetchall() == [(1, 1, 0), (2, 3, 3)]
    assert ob.protect_upto == ob.fetched_upto == 3
    assert ob.commit([Reading("d", "sim", {"n": 9})], send_after=None).for_send is None
    ob.close()
    again = Outbox(tmp_path / "b.db").open()  # durable: a restart never drops rows maybe published
    assert again.protect_upto == 3
    # Not caught up (seq 1 not yet handed out): the rows are read back and meta keeps the mark.
    statements.clear()
    again.db.set_trace_callback(statements.append)
    res = again.commit([Reading("d", "sim", {"n": 10})], send_after=(0, 2))
    again.db.set_trace_callback(None)
    assert [s for s, _ in res.for_send or []] == [1, 2]
    assert not any("'sent_upto'" in s for s in statements), "3 already protected"
    res = again.commit([Reading("d", "sim", {"n": 11})], send_after=(2, 100))
    assert [s for s, _ in res.for_send or []] == [3, 4, 5, 6]
    again.close()
    third = Outbox(tmp_path / "b.db").open()
    assert third.protect_upto == 6
    third.close()
