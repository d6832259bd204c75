"""Power loss under load: crash-consistent snapshots, the WAL cut where a power cut may cut it.

Each round: an agent runs under load against a real broker while a subscriber records what it
publishes; it is stopped (SIGSTOP) at a random moment, db + -wal + -shm are copied together, and
it is killed (its will marks the end of what it published). Each snapshot is then restored as a
power cut could leave it (devkit/powerloss.py: the WAL cut at a random frame boundary
after the point SQLite guarantees durable at the configured `synchronous`) and replayed by a
fresh agent on the same gateway, under new load. The reference receiver, holding what the
original published, then judges the replay: no seq with different content, no invalid or
out-of-order message, every missing seq explained by a gap, gap counts exact; the replayed
database passes integrity_check and was not quarantined.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from agent.buffer import Outbox
from agent.pipeline import Pipeline
from agent.receiver import Receiver
from devkit.powerloss import power_cut, snapshot, stop, wal_state
from tests.support.agentproc import AgentProcess, write_config
from tests.support.broker import Broker
from tests.support.mqtt import Msg, Subscriber
from tests.test_buffer import reading

ROUNDS = 4
REPLAYS = 2  # power cuts per snapshot
BUFFER = 'synchronous = "{}"\nsync_interval = "1s"'
SIM = """
[[devices]]
id = "sim-gnss"
driver = "sim"
family = "nmea"
interval = "3ms"
"""


def _readings(msgs: list[Msg]) -> list[tuple[str, int]]:
    out = []
    for m in msgs:
        if m.topic.endswith("/telemetry"):
            body = m.json()
            out += [(body["epoch"], r["seq"]) for r in body["readings"]]
    return out


def _status(msgs: list[Msg], reason: str) -> int:
    return sum(1 for m in msgs if m.topic.endswith("/status") and m.json().get("reason") == reason)


def _judge(original: list[Msg], replay: list[Msg]) -> dict[str, Any]:
    rx = Receiver(since_epoch_start=True)
    try:
        for m in original + replay:
            rx.ingest(m.topic, m.payload, m.retain)
        return rx.report()
    finally:
        rx.close()


def _since(sub: Subscriber, mark: int) -> list[Msg]:
    return sub.messages[mark:]  # a slice of a list another thread appends to: safe under the GIL


def _original(sub: Subscriber, work: Path, port: int, synchronous: str, rng: random.Random) -> list[Msg]:
    """Run an agent under load, snapshot it stopped at a random moment, kill it; what it published."""
    cfg = write_config(work / "agent.toml", broker_port=port, devices=SIM, buffer=BUFFER.format(synchronous))
    mark = len(sub.messages)
    agent = AgentProcess(cfg).start()
    try:
        target = rng.randint(200, 1500)
        sub.wait_for(lambda: len(_readings(_since(sub, mark))) >= target, 60, f"{target} readings from the original")
        # A random point under load, not a synchronisation: publishing follows each WAL sync
        # under NORMAL, so stopping right at the target would always stop just after one.
        time.sleep(rng.uniform(0, 1.5))
        assert agent.proc is not None
        stop(agent.proc.pid)
        snapshot(work / "buffer.db", work / "snap")
        agent.kill()
        # The will comes after everything the broker read from the dead connection.
        sub.wait_for(lambda: _status(_since(sub, mark), "lost") >= 1, 30, "the original's will")
    finally:
        agent.close()
    return _since(sub, mark)


def _replay(sub: Subscriber, rdir: Path, port: int, synchronous: str, epoch: str, top: int, what: str) -> list[Msg]:
    """A fresh agent on the restored files, under load until it published past the original; what it published."""
    cfg = write_config(rdir / "agent.toml", broker_port=port, devices=SIM, buffer=BUFFER.format(synchronous))
    mark = len(sub.messages)
    agent = AgentProcess(cfg).start()

    def went_past() -> bool:
        rs = _readings(_since(sub, mark))
        return any(e == epoch and s > top + 50 for e, s in rs) or sum(1 for e, _ in rs if e != epoch) > 50

    try:
        sub.wait_for(went_past, 60, f"{what}: the replay publishing past the original")
        assert agent.terminate() == 0
        sub.wait_for(lambda: _status(_since(sub, mark), "shutdown") >= 1, 30, "clean shutdown")
        assert "quarantined" not in agent.output(), f"{what}: {agent.output()[-2000:]}"
    finally:
        agent.close()
    return _since(sub, mark)


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
def test_power_loss_never_redelivers_a_seq_with_other_content(
    tmp_path: Path, broker: Broker, synchronous: str
) -> None:
    rng = random.Random(f"powerloss-{synchronous}")  # seeded: a failing round replays
    sub = Subscriber(broker.host, broker.port, "edge/gw-test/#")
    cuts: list[str] = []
    try:
        for rnd in range(ROUNDS):
            work = tmp_path / f"round{rnd}"
            work.mkdir()
            original = _original(sub, work, broker.port, synchronous, rng)
            published = _readings(original)
            epoch = published[0][0]
            top = max(s for e, s in published if e == epoch)
            for cut in range(REPLAYS):
                rdir = work / f"replay{cut}"
                kept, committed = power_cut(work / "snap" / "buffer.db", rdir / "buffer.db", synchronous, rng)
                what = (f"round {rnd} cut {cut}: WAL cut to {kept} of {committed} committed frames; "
                        f"the original published up to seq {top}")
                cuts.append(what)
                rep = _judge(original, _replay(sub, rdir, broker.port, synchronous, epoch, top, what))
                assert rep["conflicts"] == 0, f"{what}: {rep['conflicts']} seqs with other content: {rep['errors'][:3]}"
                assert rep["gap_conflicts"] == 0 and rep["invalid"] == 0 and rep["out_of_order"] == 0, (what, rep)
                assert rep["unexplained"] == 0 and rep["gap_balance"] == 0, (what, rep["epochs"])
                db = sqlite3.connect(rdir / "buffer.db")
                try:
                    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok", what
                finally:
                    db.close()
    finally:
        sub.close()
    print("\n".join(cuts))


async def test_normal_hands_out_rows_only_after_a_sync_at_most_every_sync_interval(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "b.db", synchronous="NORMAL")
    pipe = await Pipeline.open(ob, sync_interval=0.5)
    try:
        await pipe.durable()  # the sync at open (the epoch on disk before a birth names it)
        opened = ob.syncs
        await pipe.call(ob.commit, [reading(i) for i in range(50)])
        rows = await pipe.call(ob.fetch_for_send, 0, 100)
        assert len(rows) == 50 and not ob.durable
        st = wal_state(ob.path)
        assert st is not None and st.durable("NORMAL") < st.mx_frame, "committed, not yet on disk"
        t0 = time.monotonic()
        await pipe.durable()
        assert ob.durable and ob.syncs == opened + 1
        st = wal_state(ob.path)
        assert st is not None and st.durable("NORMAL") == st.mx_frame, "a power cut keeps every row handed out"
        await pipe.call(ob.commit, [reading(i) for i in range(50, 60)])
        await pipe.call(ob.fetch_for_send, 50, 100)
        await pipe.durable()
        assert time.monotonic() - t0 >= 0.5, "syncs at most every sync_interval"
        await pipe.call(ob.commit, [reading(i) for i in range(60, 70)])
        await pipe.call(ob.fetch_for_send, 60, 100)
        t1 = time.monotonic()
        await pipe.durable(urgent=True)  # a backlog draining: at once
        assert ob.durable and time.monotonic() - t1 < 0.5
    finally:
        await pipe.close()


async def test_full_never_waits_for_a_sync(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "b.db")
    pipe = await Pipeline.open(ob, sync_interval=30)
    try:
        for n in range(3):  # not only the first: each batch goes out at once
            await pipe.call(ob.commit, [reading(n)])
            await pipe.call(ob.fetch_for_send, n, 100)
            async with asyncio.timeout(1):
                await pipe.durable()
        assert ob.syncs == 0, "no checkpoint: every FULL commit already was on disk"
    finally:
        await pipe.close()


async def test_normal_clean_stop_syncs_at_once_and_leaves_nothing_to_send_again(
    tmp_path: Path, broker: Broker, counter_driver: None
) -> None:
    from agent.config import parse_config
    from agent.runtime import Agent
    from tests.support.wait import until

    cfg = parse_config({
        "gateway": {"id": "gw-stop"},
        "buffer": {"path": str(tmp_path / "b.db"), "commit_interval": 0.05, "synchronous": "NORMAL",
                   "sync_interval": "30s"},  # far longer than the stop's 1.5 s settle
        "uplink": {"port": broker.port, "backoff_initial": 0.05, "backoff_max": 0.5},
        "control": {"socket": str(tmp_path / "c.sock")},
        "devices": [{"id": "c", "driver": "counter", "interval": 0.005}],
    })
    agent = Agent(cfg)
    await agent.start()
    try:
        await until(lambda: agent.uplink.stats.readings_acked > 0, 60, "a first sync and delivery")
        await until(lambda: agent.pipeline.outbox.depth > 50, 30, "readings waiting for the next sync")
    finally:
        t0 = time.monotonic()
        await agent.stop()
    assert time.monotonic() - t0 < 5
    db = sqlite3.connect(tmp_path / "b.db")
    try:
        left = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
    finally:
        db.close()
    # The stop synced at once, so the settle got every PUBACK; the rest (if any) are acks the
    # final flush could not commit after the last PUBACK: at most one batch's worth.
    assert agent.uplink.stats.readings_acked == agent.pipeline.outbox.next_seq - 1
    assert left <= cfg.uplink.batch_max_readings
