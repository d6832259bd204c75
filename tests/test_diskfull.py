"""The disk refuses writes under a running agent: full, read-only, the file deleted or replaced.

Every SQLite write path meets the fault for real (buffer on a small tmpfs filled to the last
block, or on an ext4 image whose filesystem goes read-only on an error, as an SD card does):
the writer's commits (readings, acks, events), the uplink marking rows handed out (sent_upto)
and deleting acknowledged events, upkeep (max-age expiry, device events) and clock re-stamping.
The agent keeps running, delivers what is stored, keeps new readings in memory within
`queue_size`, says what is wrong in health/status (`buffer.writer`), and recovers when space
returns; the platform's accounting stays exact (no seq with other content, gaps add up).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import parse_config
from agent.receiver import Receiver
from agent.runtime import Agent
from devkit.powerloss import fill
from tests.support.broker import Broker, free_port, quiet_port
from tests.support.mqtt import Subscriber
from tests.support.wait import until


def _mount(args: list[str]) -> None:
    r = subprocess.run(["mount", *args], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount here (needs root): {r.stderr.decode().strip()}")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    _mount(["-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)])
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def ext4_fs(tmp_path: Path) -> Iterator[Path]:
    """An ext4 filesystem on a loop device that turns read-only at its first error."""
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 missing (e2fsprogs)")
    img, mnt = tmp_path / "card.img", tmp_path / "card"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(32 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", str(img)], check=True)
    _mount(["-o", "loop,errors=remount-ro", str(img), str(mnt)])
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def config(path: Path, port: int, **buffer: Any) -> Any:
    return parse_config({
        "gateway": {"id": "gw-full"},
        "control": {"socket": str(path.parent.parent / "control.sock")},
        "buffer": {"path": str(path), "commit_interval": 0.05, "max_bytes": "100MB", **buffer},
        "uplink": {"port": port, "backoff_initial": 0.05, "backoff_max": 0.2},
        "devices": [{"id": "c", "driver": "counter", "interval": 0.001}],
    })


def judge(sub: Subscriber) -> dict[str, Any]:
    rx = Receiver(since_epoch_start=True)
    try:
        for m in list(sub.messages):
            rx.ingest(m.topic, m.payload, m.retain)
        return rx.report()
    finally:
        rx.close()


async def verdict(sub: Subscriber) -> dict[str, Any]:
    """The reference receiver's report on everything `sub` got; no conflict, invalid or out-of-order."""
    rep = await asyncio.to_thread(judge, sub)
    assert rep["conflicts"] == 0 and rep["invalid"] == 0 and rep["out_of_order"] == 0, rep["errors"]
    return rep


async def shutdown(agent: Agent, sub: Subscriber | None, broker: Broker | None) -> None:
    await agent.stop()
    if sub is not None:
        sub.close()
    if broker is not None:
        broker.close()


async def writer_state(agent: Agent) -> str:
    return str((await agent.health("status"))["buffer"]["writer"])


def assert_alive(agent: Agent) -> None:
    assert not agent.stop_event.is_set(), f"the agent stopped: {agent.failure}"
    assert not any(t.done() for t in agent._tasks), "no core task died"


@pytest.mark.parametrize("moment", ["outage", "drain"])
async def test_disk_full_on_every_write_path_keeps_delivering_and_recovers(
    tmp_path: Path, small_fs: Path, counter_driver: None, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, moment: str,
) -> None:
    caplog.set_level(logging.INFO)
    rng = random.Random(f"diskfull-{moment}")
    synced = tmp_path / "clock-synced"
    monkeypatch.setenv("EDGE_AGENT_CLOCK", f"file:{synced}")  # unsynced until the flag appears
    port = quiet_port()  # the broker starts later, on the port the agent knows
    agent = Agent(config(small_fs / "b.db", port, min_free_disk="64KB"))
    await agent.start()
    pipe, ob = agent.pipeline, agent.pipeline.outbox
    ob.full_retry = 0.3
    broker: Broker | None = None
    sub: Subscriber | None = None
    filler: Path | None = None
    try:
        await until(lambda: ob.depth > 3000, 60, "a backlog during the outage")
        if moment == "drain":
            broker = Broker(port=port).start()
            sub = Subscriber(broker.host, broker.port, "edge/gw-full/#")
            seen = ob.protect_upto
            await until(lambda: ob.protect_upto > seen + rng.randint(200, 2000), 60, "the drain under way")
            # As the agent leaves it after meeting a full disk: a WAL without slack, so the next
            # writes need new blocks (with slack, a drain's small writes reuse the WAL and never fail).
            await pipe.call(ob.db.execute, "PRAGMA wal_checkpoint(TRUNCATE)")
        filler = fill(small_fs)
        await until(lambda: pipe.disk_full, 60, "the writer meeting the full disk")
        stored = ob.depth
        assert await writer_state(agent) == "disk_full"
        # Upkeep, device events and clock re-stamping meet the full disk too.
        await pipe.expire()
        await agent.pipeline.add_event("device", {"device": "c", "driver": "counter", "state": "offline",
                                                  "link": "connected", "detail": "written while the disk was full"})
        synced.touch()
        await until(lambda: "re-stamping buffered readings failed" in caplog.text, 30, "a re-stamp attempt")
        held = pipe.queued
        await until(lambda: pipe.queued > held, 20, "readings waiting in memory")
        assert pipe.queued <= pipe.queue_size
        if broker is None:
            broker = Broker(port=port).start()
            sub = Subscriber(broker.host, broker.port, "edge/gw-full/#")
        assert sub is not None
        # What is stored goes out while the disk is still full (acks cannot be deleted yet).
        await until(lambda: agent.uplink.stats.readings_acked >= stored, 60, "the stored readings delivered")
        assert await writer_state(agent) == "disk_full", "the disk is still full"
        assert_alive(agent)
        filler.unlink()
        filler = None
        await until(lambda: not pipe.disk_full, 60, "writing again after space came back")
        await until(lambda: "buffered readings re-stamped" in caplog.text, 30, "the re-stamp retried")
        await agent.remove_device("c")
        await pipe.flush()
        await until(lambda: ob.depth == 0 and ob.stats().events_pending == 0, 60, "drained")
        await until(lambda: agent.uplink.stats.inflight == 0, 30, "no publish in flight")
        assert_alive(agent)
        next_seq = ob.next_seq
    finally:
        if filler is not None:
            filler.unlink()
        await shutdown(agent, sub, broker)
    assert sub is not None
    events = [m.json() for m in sub.on("/events")]
    assert any(e["type"] == "device" and e.get("detail") == "written while the disk was full" for e in events)
    rep = await verdict(sub)
    (per,) = rep["epochs"]
    assert per["last_seq"] == next_seq - 1
    assert per["unexplained"] == 0 and per["gap_balance"] == 0, per
    if moment == "outage":
        assert per["gap_readings"] > 0, "the full disk dropped readings per on_full, reported as gaps"
    check = sqlite3.connect(f"file:{small_fs / 'b.db'}?mode=ro", uri=True)
    assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    check.close()


def _fs_error(mnt: Path) -> None:
    """Make the kernel see an ext4 error on `mnt`: with errors=remount-ro it turns read-only at once."""
    dev = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(mnt)], capture_output=True, text=True).stdout.strip()
    knob = Path("/sys/fs/ext4") / Path(dev).name / "trigger_fs_error"
    if not knob.exists():
        pytest.skip(f"{knob} missing: the kernel cannot inject an ext4 error here")
    knob.write_text("edge-agent test: simulated card failure\n")


async def test_read_only_filesystem_keeps_delivering_and_says_so(
    ext4_fs: Path, counter_driver: None
) -> None:
    from agent.cli.status import render_status

    port = quiet_port()
    agent = Agent(config(ext4_fs / "b.db", port, queue_size=2000))
    await agent.start()
    pipe, ob = agent.pipeline, agent.pipeline.outbox
    broker: Broker | None = None
    sub: Subscriber | None = None
    try:
        await until(lambda: ob.depth > 2000, 60, "a backlog during the outage")
        _fs_error(ext4_fs)
        await until(lambda: pipe.writer == "read_only", 30, "the writer meeting the read-only filesystem")
        stored = ob.depth
        await until(lambda: pipe.queued >= pipe.queue_size, 30, "the in-memory queue filling up")
        await until(lambda: pipe.overflow > 0, 30, "readings refused beyond queue_size")
        assert pipe.queued == pipe.queue_size, "memory stays within the queue bound"
        assert agent.control is not None
        status = await agent.control.status()
        assert status["buffer"]["writer"] == "read_only"
        assert "READ-ONLY FILESYSTEM" in render_status(status)
        await pipe.expire()
        await pipe.add_event("device", {"device": "c", "driver": "counter", "state": "offline",
                                        "link": "connected", "detail": "read-only card"})
        broker = Broker(port=port).start()
        sub = Subscriber(broker.host, broker.port, "edge/gw-full/#")
        # Delivery of what is stored goes on: reading a read-only filesystem works.
        await until(lambda: agent.uplink.stats.readings_acked >= stored, 60, "the stored readings delivered")
        assert_alive(agent)
        assert pipe.writer == "read_only"
    finally:
        await shutdown(agent, sub, broker)
    assert sub is not None
    rep = await verdict(sub)
    assert rep["received"] >= stored
    assert rep["unexplained"] == 0, rep["epochs"]


async def test_buffer_file_deleted_or_replaced_under_a_running_agent_is_restored(
    tmp_path: Path, broker: Broker, counter_driver: None
) -> None:
    db = tmp_path / "buf" / "b.db"
    sub = Subscriber(broker.host, broker.port, "edge/gw-full/#")
    agent = Agent(config(db, broker.port))
    await agent.start()
    ob = agent.pipeline.outbox
    epoch = ob.epoch
    try:
        await until(lambda: agent.uplink.stats.readings_acked > 500, 30, "delivery")
        for suffix in ("", "-wal", "-shm"):  # `rm buffer.db*` by a technician
            os.unlink(f"{db}{suffix}")
        await until(lambda: db.exists(), 10, "the file restored")
        top = ob.next_seq
        await until(lambda: ob.next_seq > top + 500, 30, "accepting into the restored file")
        other = tmp_path / "other.db"
        sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
        os.replace(other, db)  # another file moved over it
        await until(lambda: list(db.parent.glob("b.db.replaced-*")), 10, "the foreign file kept aside")
        top = ob.next_seq
        await until(lambda: ob.next_seq > top + 500, 30, "accepting into the restored file")
        assert_alive(agent)
        assert ob.epoch == epoch
    finally:
        await agent.stop()
    (aside,) = db.parent.glob("b.db.replaced-*")
    assert sqlite3.connect(aside).execute("SELECT name FROM sqlite_master").fetchall() == [("t",)]
    # A restart finds everything: same epoch, the seqs go on, nothing lost.
    check = sqlite3.connect(db)
    meta = dict(check.execute("SELECT key, value FROM meta").fetchall())
    left = check.execute("SELECT count(*) FROM outbox").fetchone()[0]
    check.close()
    assert meta["epoch"] == epoch
    agent = Agent(config(db, broker.port))
    await agent.start()
    try:
        assert agent.pipeline.outbox.epoch == epoch and agent.pipeline.outbox.next_seq >= top + 500
        await agent.remove_device("c")
        await agent.pipeline.flush()
        await until(lambda: agent.pipeline.outbox.depth == 0, 30, "drained after the restart")
        next_seq = agent.pipeline.outbox.next_seq
    finally:
        await agent.stop()
        sub.close()
    (per,) = (await verdict(sub))["epochs"]
    assert per["last_seq"] == next_seq - 1 and per["missing"] == 0, (per, left)


async def test_wal_deleted_under_a_running_agent_is_checkpointed_and_reopened(
    tmp_path: Path, counter_driver: None
) -> None:
    db = tmp_path / "buf" / "b.db"
    agent = Agent(config(db, free_port()))  # no broker: everything stays in the buffer
    await agent.start()
    ob = agent.pipeline.outbox
    try:
        await until(lambda: ob.depth > 500, 30, "a backlog")
        for suffix in ("-wal", "-shm"):
            os.unlink(f"{db}{suffix}")
        await until(lambda: Path(f"{db}-wal").exists(), 10, "a new WAL beside the database")
        top = ob.next_seq
        await until(lambda: ob.next_seq > top + 300, 30, "committing into the new WAL")
        await agent.pipeline.flush()
        committed = ob.next_seq - 1
        # What a kill -9 or power cut now would leave: the files in the directory.
        crash = tmp_path / "crash"
        crash.mkdir()
        for suffix in ("", "-wal"):
            shutil.copyfile(f"{db}{suffix}", crash / f"b.db{suffix}")
        assert_alive(agent)
    finally:
        await agent.stop()
    check = sqlite3.connect(crash / "b.db")
    try:
        assert check.execute("SELECT max(seq) FROM outbox").fetchone()[0] >= committed
    finally:
        check.close()
