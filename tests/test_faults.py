"""Fault injection: disk full, broker bounced under load, SIGKILL under load, corrupt database."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.runtime import Agent
from devkit.powerloss import fill
from drivers.nmea.simulator import epoch_bytes, fixes
from tests.support.agentproc import AgentProcess, nmea_device, write_config
from tests.support.broker import Broker, free_port
from tests.support.mqtt import Subscriber
from tests.support.pty import PtyDevice
from tests.support.wait import until


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)




def account(sub: Subscriber, gateway_epoch: str) -> tuple[set[int], int, list[dict[str, object]]]:
    seen: dict[int, dict[str, object]] = {}
    for r in sub.readings():
        prev = seen.setdefault(r["seq"], r)
        assert prev == r, "redelivery must be identical"
    # A gap event may be redelivered like any QoS 1 message: the platform dedupes it on
    # (epoch, from_seq), and a redelivered one must be identical.
    gaps: dict[tuple[str, int], dict[str, object]] = {}
    for m in sub.on("/events"):
        g = m.json()
        if g["type"] == "gap":
            assert gaps.setdefault((g["epoch"], g["from_seq"]), g) == g
    assert all(g["epoch"] == gateway_epoch for g in gaps.values())
    return set(seen), sum(int(g["count"]) for g in gaps.values()), list(gaps.values())  # type: ignore[call-overload]


async def test_disk_full_drops_per_policy_reports_gap_and_recovers(
    tmp_path: Path, small_fs: Path, counter_driver: None
) -> None:
    filler = small_fs / "filler"
    filler.write_bytes(b"\0" * 5_000_000)  # the card is nearly full from the start
    port = free_port()
    cfg = parse_config({
        "gateway": {"id": "gw-full"},
        "control": {"socket": str(tmp_path / "control.sock")},  # not the system path: a second agent would refuse
        "buffer": {"path": str(small_fs / "b.db"), "commit_interval": 0.02, "max_bytes": "100MB",
                   "min_free_disk": "512KB"},
        "uplink": {"port": port, "backoff_initial": 0.05, "backoff_max": 0.2},
        "devices": [{"id": "c", "driver": "counter", "interval": 0.0005}],
    })
    agent = Agent(cfg)
    await agent.start()
    ob = agent.pipeline.outbox
    ob.full_retry = 0.3
    try:
        await until(lambda: ob.dropped.get("buffer_full", 0) > 0, 60, "drops on a nearly full disk")
        capped_at = ob.bytes
        assert agent.pipeline.outbox.depth > 0
        assert not agent.stop_event.is_set(), "the agent keeps running on a full disk"
        filler.unlink()  # space comes back
        await until(lambda: ob.bytes > capped_at + 100_000, 60, "buffer growing again after space returned")
        await agent.remove_device("c")
        await agent.pipeline.flush()
        # the disk can be full again by now: flush then keeps readings in memory and the writer
        # commits them (with the next seqs) at its retry, so next_seq is read once none are left
        # (queued drops when the writer takes a batch; busy_since clears once that commit is done)
        await until(lambda: agent.pipeline.queued == 0 and agent.pipeline.busy_since is None, 60,
                    "readings held in memory committed")
        next_seq = ob.next_seq
        epoch = ob.epoch
        check = sqlite3.connect(f"file:{small_fs / 'b.db'}?mode=ro", uri=True)
        assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        check.close()
        broker = Broker(port=port).start()
        sub = Subscriber(broker.host, broker.port, "edge/gw-full/#")
        try:
            await until(lambda: ob.depth == 0 and agent.uplink.stats.events_published >= 1, 60, "drain")
            await until(lambda: agent.uplink.stats.inflight == 0 and agent.uplink.stats.readings_acked
                        >= len({r["seq"] for r in sub.readings()}), 30, "all acknowledged messages received")
            seqs, gap_total, _ = await asyncio.to_thread(account, sub, epoch)
        finally:
            sub.close()
            broker.close()
        assert gap_total > 0
        assert max(seqs) < next_seq
        assert len(seqs) + gap_total == next_seq - 1, "gaps account exactly for every seq never delivered"
    finally:
        await agent.stop()


def _pump(dev: PtyDevice, stop: threading.Event, written: list[int], rate: float = 300.0) -> None:
    it = fixes(start=1_790_000_000)
    while not stop.is_set():
        try:
            dev.write(epoch_bytes(next(it)))
        except OSError:
            return
        written[0] += 1
        time.sleep(1 / rate)


def test_broker_bounced_repeatedly_under_load_loses_nothing(tmp_path: Path, pty_factory) -> None:  # type: ignore[no-untyped-def]
    # A durable broker and a durable platform session: whatever the broker acknowledged survives.
    broker = Broker(persistent=True).start()
    dev = pty_factory()
    cfg = write_config(tmp_path / "agent.toml", broker_port=broker.port, devices=nmea_device(dev.port, "gnss", tags="", expected_interval=""))
    sub = Subscriber(broker.host, broker.port, "edge/gw-test/telemetry", persistent=True)
    agent = AgentProcess(cfg).start_and_wait_port("gnss")
    stop, written = threading.Event(), [0]
    pump = threading.Thread(target=_pump, args=(dev, stop, written), daemon=True)
    pump.start()
    try:
        for _ in range(4):
            sub.wait_for(lambda: len(sub.readings()) > 0, 20, "traffic")
            time.sleep(random.uniform(0.2, 0.6))  # load runs while the broker is up; not a synchronisation
            broker.stop()
            time.sleep(random.uniform(0.3, 1.0))  # outage length
            broker.start()
        stop.set()
        pump.join(5)
        total = written[0]
        try:
            sub.wait_for(lambda: len({r["seq"] for r in sub.readings()}) >= total, 60, f"all {total} readings")
        except AssertionError:
            got = {r["seq"] for r in sub.readings()}
            missing = sorted(set(range(1, total + 1)) - got)
            raise AssertionError(f"missing {len(missing)}: {missing[:5]}..{missing[-5:]}; max got {max(got)}") from None
        by_seq: dict[int, dict[str, object]] = {}
        for r in sub.readings():
            assert by_seq.setdefault(r["seq"], r) == r
        assert sorted(by_seq) == list(range(1, total + 1)), "0 lost, 0 holes"
        assert agent.terminate() == 0
    finally:
        stop.set()
        agent.close()
        sub.close()
        broker.close()


def test_sigkill_ten_times_under_load_keeps_seq_and_epoch(tmp_path: Path, broker: Broker, pty_factory) -> None:  # type: ignore[no-untyped-def]
    dev = pty_factory()
    cfg = write_config(tmp_path / "agent.toml", broker_port=broker.port, devices=nmea_device(dev.port, "gnss", tags="", expected_interval=""))
    sub = Subscriber(broker.host, broker.port, "edge/gw-test/#")
    agent = AgentProcess(cfg)
    stop, written = threading.Event(), [0]
    pump = threading.Thread(target=_pump, args=(dev, stop, written), daemon=True)
    pump.start()
    try:
        for i in range(10):
            connects = agent.output().count("uplink: connected to")
            agent.start_and_wait_port("gnss", count=i + 1)
            # Connected (the broker holds its will) before the kill: the port may open first.
            agent.wait_log("uplink: connected to", count=connects + 1)
            time.sleep(random.uniform(0.1, 0.8))  # a random point under load
            agent.kill()
        stop.set()
        pump.join(5)
        db = sqlite3.connect(tmp_path / "buffer.db")
        meta_next = int(db.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()[0])
        top = max(meta_next - 1, db.execute("SELECT max(seq) FROM outbox").fetchone()[0] or 0)
        assert top > 0
        db.close()
        agent.start_and_wait_port("gnss", count=11)
        sub.wait_for(lambda: len({r["seq"] for r in sub.readings()}) >= top, 60, f"{top} readings")
        seqs = sorted({r["seq"] for r in sub.readings()})
        assert seqs == list(range(1, len(seqs) + 1)), "no seq holes across 10 kills"
        assert len({m.json()["epoch"] for m in sub.on("/telemetry")}) == 1, "epoch stable"
        wills = [m.json() for m in sub.on("/status") if m.json()["state"] == "offline"]
        assert len(wills) >= 10, "the last will announced every kill"
        assert agent.terminate() == 0
    finally:
        stop.set()
        agent.close()
        sub.close()


def test_corrupt_database_at_start_is_quarantined_and_reported(tmp_path: Path, broker: Broker) -> None:
    (tmp_path / "buffer.db").write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 64)
    cfg = write_config(tmp_path / "agent.toml", broker_port=broker.port)
    sub = Subscriber(broker.host, broker.port, "edge/gw-test/#")
    agent = AgentProcess(cfg).start()
    try:
        sub.wait_for(lambda: any(m.json()["type"] == "buffer_quarantined" for m in sub.on("/events")), 30, "event")
        ev = next(m.json() for m in sub.on("/events") if m.json()["type"] == "buffer_quarantined")
        kept = Path(ev["quarantined_as"])
        assert kept.exists() and kept.parent == tmp_path
        assert kept.read_bytes().startswith(b"SQLite format 3\x00")
        assert agent.proc is not None and agent.proc.poll() is None, "the agent runs on"
        db = sqlite3.connect(tmp_path / "buffer.db")
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert agent.terminate() == 0
    finally:
        agent.close()
        sub.close()
    with contextlib.suppress(Exception):
        json.dumps(ev)
    assert os.path.exists(tmp_path / "buffer.db")


def _buffer_at(tmp_path: Path, db: Path) -> Path:
    cfg = write_config(tmp_path / "agent.toml", broker_port=free_port())
    cfg.write_text(cfg.read_text().replace('path = "buffer.db"', f'path = "{db}"'))
    return cfg


def _refused_at_start(agent: AgentProcess, says: str) -> None:
    """The agent exits 73 (EX_CANTCREAT) with `says` in one line, no traceback."""
    assert agent.start().wait(60) == 73
    out = agent.output()
    assert says in out, out
    assert "Traceback" not in out


def test_full_disk_at_start_exits_73_naming_the_buffer_and_the_cause(tmp_path: Path, small_fs: Path) -> None:
    """A buffer that cannot be created at start: exit 73 (EX_CANTCREAT) saying where and why; starts once freed."""
    filler = fill(small_fs)  # not one block left
    db = small_fs / "b.db"
    agent = AgentProcess(_buffer_at(tmp_path, db))
    try:
        _refused_at_start(agent, f"edge-agent: cannot open the buffer {db}: the disk is full (0 bytes free in {small_fs})")
        filler.unlink()
        agent.start()
        agent.wait_log(f"buffer {db}: epoch ", timeout=60)
        assert agent.terminate(30) == 0
    finally:
        agent.close()


@pytest.mark.parametrize("sub", ["", "state/"])
def test_read_only_disk_at_start_exits_73_naming_the_buffer_and_the_cause(
    tmp_path: Path, small_fs: Path, sub: str
) -> None:
    """The buffer (or the folder it goes in) on a read-only filesystem: exit 73, the read-only mount named."""
    r = subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], capture_output=True)
    assert r.returncode == 0, r.stderr
    db = small_fs / f"{sub}b.db"
    agent = AgentProcess(_buffer_at(tmp_path, db))
    try:
        _refused_at_start(agent, f"edge-agent: cannot open the buffer {db}: {small_fs} is on a read-only filesystem")
    finally:
        agent.close()
