"""The supervisor in-process: crash isolation, restart with backoff, SIGTERM-style stop flushes."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

from agent.config import parse_config
from agent.runtime import Agent
from tests.support.broker import Broker
from tests.support.mqtt import Subscriber
from tests.support.wait import until


def agent_config(tmp_path: Path, port: int, devices: list[dict[str, object]]):  # type: ignore[no-untyped-def]
    return parse_config({
        "gateway": {"id": "gw-rt"},
        "buffer": {"path": str(tmp_path / "b.db"), "commit_interval": 0.05},
        "uplink": {"port": port, "backoff_initial": 0.05, "backoff_max": 0.5},
        "control": {"socket": str(tmp_path / "c.sock")},
        "devices": devices,
    })


async def test_crashing_driver_is_restarted_and_never_stops_the_others(
    tmp_path: Path, broker: Broker, counter_driver: None
) -> None:
    cfg = agent_config(tmp_path, broker.port, [
        {"id": "good", "driver": "counter", "interval": 0.01},
        {"id": "bad", "driver": "counter", "interval": 0.01, "crash_after": 3},
    ])
    sub = Subscriber(broker.host, broker.port, "edge/gw-rt/telemetry")
    agent = Agent(cfg)
    await agent.start()
    try:
        bad = agent.devices["bad"].ctx
        await until(lambda: bad.restarts >= 2)
        good_before = agent.devices["good"].ctx.readings
        emitted = good_before + bad.readings  # both bad runs included; committed in this order
        await until(lambda: agent.devices["good"].ctx.readings > good_before + 20)
        await until(lambda: agent.uplink.stats.readings_acked >= max(30, emitted))
        assert bad.link in ("failed", "connected")
        assert "simulated driver bug" in agent.devices["bad"].last_error
    finally:
        await agent.stop()
    # Both runs' readings were acked by the broker before the stop; the platform may still be
    # receiving them.
    def bad_runs() -> set[int]:
        return {r["values"]["run"] for r in sub.readings() if r["device"] == "bad"}

    await asyncio.to_thread(sub.wait_for, lambda: len(bad_runs()) >= 2, 10, "the crashed driver came back")
    got = sub.readings()
    good = [r["values"]["n"] for r in got if r["device"] == "good"]
    assert good == list(range(len(good))), "the healthy device's stream is complete and in order"
    sub.close()


async def test_stop_flushes_memory_to_sqlite_without_broker(tmp_path: Path, counter_driver: None) -> None:
    from tests.support.broker import free_port

    cfg = agent_config(tmp_path, free_port(), [{"id": "c", "driver": "counter", "interval": 0.001}])
    cfg = cfg.model_copy(update={"buffer": cfg.buffer.model_copy(update={"commit_interval": 30.0})})
    agent = Agent(cfg)
    await agent.start()
    await until(lambda: agent.devices["c"].ctx.readings >= 50)
    ctx = agent.devices["c"].ctx
    await agent.stop()
    db = sqlite3.connect(tmp_path / "b.db")
    n, lo, hi = db.execute("SELECT count(*), min(seq), max(seq) FROM outbox").fetchone()
    assert n == ctx.readings >= 50, "every reading emitted before the stop is committed"
    assert (lo, hi) == (1, n)


async def test_the_views_of_the_narrow_core_are_snapshots(tmp_path: Path, counter_driver: None) -> None:
    """What agent/ports.py hands out never changes under its holder, and changing it never reaches the agent."""
    import dataclasses

    import pytest

    from tests.support.broker import free_port

    agent = Agent(agent_config(tmp_path, free_port(), [{"id": "c", "driver": "counter", "interval": 0.01}]))
    await agent.start()
    try:
        ctx = agent.devices["c"].ctx
        await until(lambda: ctx.readings >= 5, 30, "readings")
        dev, pipe, up = agent.device_snapshot("c"), agent.pipeline_snapshot(), agent.uplink_snapshot()
        assert dev is not None and pipe is not None and up is not None
        n, accepted = dev.readings, pipe.accepted
        await until(lambda: ctx.readings > n + 5 and agent.pipeline.accepted > accepted, 30, "more readings")
        assert (dev.readings, pipe.accepted) == (n, accepted)  # taken, not live
        assert agent.device_snapshots()[0].readings > n
        with pytest.raises(dataclasses.FrozenInstanceError):
            dev.readings = 0  # type: ignore[misc]
        up.reconnects = -1
        assert agent.uplink.stats.reconnects >= 0  # a copy: the holder's edits stay with it
        assert agent.running_devices() == ("c",) and agent.device_snapshot("nope") is None
    finally:
        await agent.stop()


async def test_status_does_not_restart_the_cpu_window_of_health(tmp_path: Path, counter_driver: None) -> None:
    from tests.support.broker import free_port

    agent = Agent(agent_config(tmp_path, free_port(), [{"id": "c", "driver": "counter", "interval": 1.0}]))
    await agent.start()
    try:
        await agent.health()  # what P/health publishes: its CPU window starts here
        window = agent.health_reporter.meters["health"][1]._last
        for _ in range(3):
            assert "cpu_percent" in (await agent.health("status"))["process"]  # a technician's `status`
        assert agent.health_reporter.meters["health"][1]._last == window
        await agent.health()
        assert agent.health_reporter.meters["health"][1]._last != window
    finally:
        await agent.stop()


async def test_buffer_page_size_applies_to_a_new_file_only(tmp_path: Path, counter_driver: None) -> None:
    from tests.support.broker import free_port

    def page_size() -> int:
        with sqlite3.connect(tmp_path / "b.db") as db:
            return int(db.execute("PRAGMA page_size").fetchone()[0])

    for size, expected in ((1024, 1024), (8192, 1024)):  # the second start finds the file
        cfg = agent_config(tmp_path, free_port(), [{"id": "c", "driver": "counter", "interval": 1.0}])
        cfg = cfg.model_copy(update={"buffer": cfg.buffer.model_copy(update={"page_size": size})})
        agent = Agent(cfg)
        await agent.start()
        await agent.stop()
        assert page_size() == expected


async def test_buffer_locked_by_another_process_waits_in_memory_and_loses_nothing(
    tmp_path: Path, counter_driver: None
) -> None:
    from tests.support.broker import free_port

    agent = Agent(agent_config(tmp_path, free_port(), [{"id": "c", "driver": "counter", "interval": 0.05}]))
    await agent.start()
    pipe = agent.pipeline
    assert pipe is not None
    try:
        await until(lambda: pipe.accepted >= 3)
        lock = sqlite3.connect(tmp_path / "b.db", isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # e.g. a technician's sqlite3 shell, longer than the busy timeout
        try:
            await until(lambda: pipe.locked, 20)  # the commit gave up after 5 s; the agent lives on
            held = pipe.queued
            await until(lambda: pipe.queued > held)  # still reading into memory
            assert (await agent.health("status"))["buffer"]["writer"] == "locked"
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        await until(lambda: not pipe.locked and pipe.queued < held, 20)
        assert (await agent.health("status"))["buffer"]["writer"] == "ok"
        assert not any(t.done() for t in agent._tasks), "no core task died"
    finally:
        await agent.stop()
    db = sqlite3.connect(tmp_path / "b.db")
    n, lo, hi = db.execute("SELECT count(*), min(seq), max(seq) FROM outbox").fetchone()
    assert (lo, hi) == (1, n), "no hole"
    values = [json.loads(p)["values"]["n"] for (p,) in db.execute("SELECT payload FROM outbox ORDER BY seq")]
    assert values == list(range(n)), "every emitted reading, in order: none lost to the lock"


def _gate_commits(monkeypatch, pipe):  # type: ignore[no-untyped-def]
    """Hold the next commit of readings on the buffer thread until `release` is set."""
    import threading

    entered, release, committed = threading.Event(), threading.Event(), threading.Event()
    job = pipe._commit_job

    def gated(batch, acks, events=None):  # type: ignore[no-untyped-def]
        if batch and not entered.is_set():
            entered.set()
            release.wait(30)
            res = job(batch, acks, events)
            committed.set()
            return res
        return job(batch, acks, events)

    monkeypatch.setattr(pipe, "_commit_job", gated)
    return entered, release, committed


async def test_a_flush_waits_for_the_writers_commit_under_way(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from agent.buffer import Outbox
    from agent.model import Reading
    from agent.pipeline import Pipeline

    pipe = await Pipeline.open(Outbox(tmp_path / "b.db"), commit_interval=0.02)
    entered, release, _ = _gate_commits(monkeypatch, pipe)
    writer = asyncio.create_task(pipe.run_writer())
    try:
        for n in range(10):
            pipe.submit(Reading(device="d", driver="sim", values={"n": n}))
        assert await asyncio.to_thread(entered.wait, 30), "the writer's commit is under way"
        assert pipe.queued == 10 and not pipe._queue, "taken from the queue, not committed"
        flush = asyncio.create_task(pipe.flush())
        await asyncio.sleep(0)  # the flush starts while the writer's commit is held
        release.set()
        await flush
        # Without waiting for it, flush() found the queue empty and returned while the ten were
        # still uncommitted (the stop then settled on a next_seq without them).
        assert pipe.accepted == 10 and pipe.outbox.next_seq == 11 and pipe.queued == 0
    finally:
        release.set()
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        await pipe.close()


async def test_stop_during_a_commit_delivers_it_before_exiting(tmp_path: Path, broker: Broker, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A SIGTERM while the writer commits: the stop settles on those readings too (none left to resend)."""
    from agent.model import Reading

    agent = Agent(agent_config(tmp_path, broker.port, []))
    sub = Subscriber(broker.host, broker.port, "edge/gw-rt/telemetry")
    await agent.start()
    pipe = agent.pipeline
    entered, release, committed = _gate_commits(monkeypatch, pipe)
    settle = agent.uplink.settle
    settled: list[tuple[bool, bool]] = []

    async def observed_settle() -> bool:
        ok = await settle()
        settled.append((ok, committed.is_set()))
        return ok

    monkeypatch.setattr(agent.uplink, "settle", observed_settle)
    stop: asyncio.Task[None] | None = None
    try:
        await until(agent.uplink.connected.is_set, 30, "the uplink connected")
        for n in range(10):
            pipe.submit(Reading(device="d", driver="sim", values={"n": n}))
        assert await asyncio.to_thread(entered.wait, 30), "the writer's commit is under way"
        stop = asyncio.create_task(agent.stop())
        await until(pipe.hurry.is_set, 30, "the stop's final flush")
        release.set()
        await stop
    finally:
        release.set()
        if stop is None:
            await agent.stop()
    # Before: the stop's flush found the queue empty, the settle compared the acks with a next_seq
    # that lacked the ten, said "every accepted reading is acknowledged", and they stayed behind.
    assert settled == [(True, True)], "the settle waited for the commit under way and its PUBACK"
    db = sqlite3.connect(tmp_path / "b.db")
    assert db.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0, "nothing left to send again"
    await asyncio.to_thread(sub.wait_for, lambda: len(sub.readings()) >= 10, 10, "the ten readings")
    assert [r["values"]["n"] for r in sub.readings()] == list(range(10))
    sub.close()
