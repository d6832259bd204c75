"""The reference receiver's dedupe and gap accounting, message by message."""

from __future__ import annotations

import json

import pytest

from agent.model import Reading, encode_reading
from agent.receiver import Receiver, _covered, raw_readings

E1 = "00112233445566aa"
E2 = "ffeeddccbbaa9988"
P = "edge/gw-test"


def r(seq: int, co2: int | None = None) -> str:
    return encode_reading(seq, Reading(device="a101-co2", driver="senseair_s8",
                                       values={"co2": co2 if co2 is not None else 400 + seq}, ts=1.79e9))


def tel(epoch: str, *seqs: int, gateway: str = "gw-test") -> bytes:
    return ('{"v":1,"gateway":"%s","epoch":"%s","readings":[%s]}'
            % (gateway, epoch, ",".join(r(s) for s in seqs))).encode()


def gap(epoch: str, a: int, b: int, n: int, reason: str = "buffer_full") -> bytes:
    return json.dumps({"v": 1, "type": "gap", "epoch": epoch, "from_seq": a, "to_seq": b, "count": n,
                       "reason": reason, "ts": "2026-11-27T07:00:00.000Z"}, separators=(",", ":")).encode()


@pytest.fixture
def rx() -> Receiver:
    x = Receiver(since_epoch_start=True)
    yield x
    x.close()


def test_raw_readings_are_the_exact_wire_text() -> None:
    body = tel(E1, 1, 2, 3).decode()
    assert raw_readings(body) == [r(1), r(2), r(3)]
    assert raw_readings('{"v":1,"readings":[ {"a":1} , {"b":[2]} ]}') == ['{"a":1}', '{"b":[2]}']


def test_identical_redelivery_is_dropped_as_duplicate(rx: Receiver) -> None:
    rx.ingest(f"{P}/telemetry", tel(E1, 1, 2, 3))
    rx.ingest(f"{P}/telemetry", tel(E1, 2, 3, 4))
    rep = rx.report()
    assert (rep["received"], rep["duplicates"], rep["conflicts"], rep["missing"]) == (4, 2, 0, 0)
    assert rep["ok"]


def test_conflicting_redelivery_is_an_error(rx: Receiver) -> None:
    rx.ingest(f"{P}/telemetry", tel(E1, 1, 2))
    body = ('{"v":1,"gateway":"gw-test","epoch":"%s","readings":[%s]}' % (E1, r(2, co2=999))).encode()
    rx.ingest(f"{P}/telemetry", body)
    rep = rx.report()
    assert rep["conflicts"] == 1 and rep["duplicates"] == 0 and not rep["ok"]
    assert "conflicting redelivery" in rep["errors"][0]


def test_same_seq_in_another_epoch_or_gateway_is_not_a_duplicate(rx: Receiver) -> None:
    rx.ingest(f"{P}/telemetry", tel(E1, 1))
    rx.ingest(f"{P}/telemetry", tel(E2, 1))
    rx.ingest("edge/gw-other/telemetry", tel(E1, 1, gateway="gw-other"))
    assert rx.report()["received"] == 3


def test_gaps_explain_missing_seqs_exactly(rx: Receiver) -> None:
    rx.ingest(f"{P}/telemetry", tel(E1, 1, 2))
    rx.ingest(f"{P}/events", gap(E1, 3, 7, 5))
    rx.ingest(f"{P}/telemetry", tel(E1, 8, 9))
    rx.ingest(f"{P}/events", gap(E1, 3, 7, 5))  # redelivered gap: deduped
    rep = rx.report()
    assert (rep["received"], rep["gaps"], rep["gap_duplicates"], rep["gap_readings"]) == (4, 1, 1, 5)
    assert (rep["missing"], rep["unexplained"], rep["gap_balance"]) == (5, 0, 0)
    assert rep["ok"]


def test_a_gap_envelope_may_contain_delivered_seqs_but_count_must_match(rx: Receiver) -> None:
    rx.ingest(f"{P}/telemetry", tel(E1, 1, 4, 5, 9))
    rx.ingest(f"{P}/events", gap(E1, 2, 8, 5))  # lost 2,3,6,7,8 (4 and 5 arrived)
    rep = rx.report()
    assert (rep["missing"], rep["unexplained"], rep["gap_balance"], rep["ok"]) == (5, 0, 0, True)


def test_unexplained_missing_and_overcounted_gaps_are_reported(rx: Receiver) -> None:
    rx.ingest(f"{P}/telemetry", tel(E1, 1, 2, 5, 6, 10))
    rx.ingest(f"{P}/events", gap(E1, 3, 4, 2))
    rx.ingest(f"{P}/events", gap(E1, 6, 6, 1))  # claims 6 lost, but it arrived
    rep = rx.report()
    assert rep["missing"] == 5  # 3 4 7 8 9
    assert rep["unexplained"] == 3  # 7 8 9
    assert rep["gap_balance"] == 1  # one seq claimed lost beyond what is missing
    assert not rep["ok"]


def test_missing_head_counts_only_since_epoch_start(rx: Receiver) -> None:
    rx.ingest(f"{P}/telemetry", tel(E1, 4, 5))
    assert rx.report()["unexplained"] == 3
    late = Receiver(since_epoch_start=False)
    late.ingest(f"{P}/telemetry", tel(E1, 4, 5))
    assert late.report()["unexplained"] == 0
    late.close()


def test_gap_at_the_tail_extends_the_horizon(rx: Receiver) -> None:
    rx.ingest(f"{P}/telemetry", tel(E1, 1, 2))
    rx.ingest(f"{P}/events", gap(E1, 3, 10, 8, "max_age"))
    rep = rx.report()
    assert rep["epochs"][0]["last_seq"] == 10 and rep["unexplained"] == 0 and rep["ok"]


def test_out_of_order_first_arrivals_are_flagged(rx: Receiver) -> None:
    rx.ingest(f"{P}/telemetry", tel(E1, 1, 3))
    rx.ingest(f"{P}/telemetry", tel(E1, 2))
    rep = rx.report()
    assert rep["out_of_order"] == 1 and not rep["ok"]


@pytest.mark.parametrize(("topic", "payload"), [
    ("telemetry", b'{"v":1,"gateway":"gw-test","epoch":"00112233445566aa","readings":[]}'),
    ("telemetry", b'{"v":2,"gateway":"gw-test","epoch":"00112233445566aa","readings":[{}]}'),
    ("telemetry", b"not json"),
    ("events", b'{"v":1,"type":"gap","epoch":"00112233445566aa","from_seq":5,"to_seq":3,"count":1,'
               b'"reason":"buffer_full","ts":"2026-11-27T07:00:00.000Z"}'),
    ("events", b'{"v":1,"type":"gap","epoch":"00112233445566aa","from_seq":1,"to_seq":3,"count":4,'
               b'"reason":"buffer_full","ts":"2026-11-27T07:00:00.000Z"}'),
    ("events", b'{"v":1,"type":"reboot"}'),
    ("status", b'{"v":1,"state":"online","gateway":"gw-test"}'),
    ("status", b'{"v":true,"state":"offline","gateway":"gw-test","ts":"2026-11-27T07:00:00.000Z"}'),
    ("firmware", b"{}"),  # no such topic (P/commands is the platform's own and ignored)
])
def test_invalid_messages_are_counted_and_kept(rx: Receiver, topic: str, payload: bytes) -> None:
    rx.ingest(f"{P}/{topic}", payload)
    rep = rx.report()
    assert rep["invalid"] == 1 and rep["received"] == 0 and not rep["ok"]
    assert rx.db.execute("SELECT payload FROM invalid").fetchone()[0] == payload


def test_status_and_health_are_tracked(rx: Receiver) -> None:
    rx.ingest(f"{P}/status", b'{"v":1,"state":"offline","gateway":"gw-test","ts":"2026-11-27T07:00:00.000Z",'
                             b'"reason":"lost"}', retain=True)
    rep = rx.report()
    assert rep["status"] == {f"{P}/status": "offline"} and rep["offline"] == 1 and rep["ok"]


def test_covered_intersects_ranges() -> None:
    assert _covered([(3, 4), (7, 9)], [(1, 3), (8, 20)]) == 3
    assert _covered([(1, 10)], [(2, 3), (3, 5), (9, 12)]) == 6
    assert _covered([(5, 6)], []) == 0
