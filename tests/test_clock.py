"""Clock synchronisation: detection and the correction of still-buffered unsynced readings."""

from __future__ import annotations

import itertools
import json
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from agent.buffer import ROW_OVERHEAD, Outbox
from agent.clock import ClockMonitor, correct_buffered, corrected
from agent.model import Reading, encode_reading, format_ts
from agent.pipeline import Pipeline
from drivers.nmea.simulator import epoch_bytes, fixes
from tests.support.agentproc import AgentProcess, nmea_device, write_config
from tests.support.broker import free_port
from tests.support.pty import PtyDevice

WRONG = -400 * 86400.0  # the Pi booted 400 days in the past (no RTC)


def unsynced(i: int, mono: float) -> Reading:
    return Reading(
        device="a101-co2",
        driver="senseair_s8",
        values={"co2": 400 + i},
        ts=mono + time.time() - time.monotonic() + WRONG,
        clock="unsynced",
        mono=mono,
    )


def table(db: Path) -> list[tuple[int, float, int, str]]:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT seq, ts, clock, payload FROM outbox ORDER BY seq").fetchall()
    finally:
        con.close()


async def test_correction_rewrites_only_never_fetched_rows(tmp_path: Path) -> None:
    pipe = await Pipeline.open(Outbox(tmp_path / "b.db"))
    try:
        m0 = time.monotonic() - 100
        await pipe.call(pipe.outbox.commit, [unsynced(i, m0 + i) for i in range(6)])
        fetched = await pipe.call(pipe.outbox.fetch, 0, 2)  # seqs 1-2 handed to the uplink
        pipe.outbox.protect_upto = 0  # a disconnect resets this; 1-2 must stay frozen anyway
        before = {seq: payload for seq, _, _, payload in table(tmp_path / "b.db")}
        pipe.submit(unsynced(6, m0 + 6))  # still in memory
        offset = time.time() - time.monotonic()
        res = await correct_buffered(pipe, offset)
        assert (res.rewritten, res.frozen) == (4, 2)
        await pipe.flush()
        got = table(tmp_path / "b.db")
        assert [g[0] for g in got] == list(range(1, 8))
        for seq, ts, clock, payload in got:
            mono = m0 + seq - 1
            if (
                seq <= 6
            ):  # seq 7 was corrected in memory and accepted after the sync: accept time is now
                # One accept time per commit (segment): the latest corrected time of seqs 1-6.
                assert ts == pytest.approx(m0 + 5 + offset, abs=1e-6), (
                    "accept time corrected on every row (max_age)"
                )
            if seq <= 2:
                assert payload == before[seq] == dict(fetched)[seq], (
                    "possibly published: byte-identical"
                )
                assert clock == 0 and json.loads(payload)["clock"] == "unsynced"
            else:
                want = Reading(
                    device="a101-co2",
                    driver="senseair_s8",
                    values={"co2": 400 + seq - 1},
                    ts=mono + offset,
                    clock="synced",
                    mono=mono,
                )
                assert payload == encode_reading(seq, want)
                assert clock == 1 and json.loads(payload)["ts"] == format_ts(mono + offset)
        con = sqlite3.connect(tmp_path / "b.db")
        n, size = con.execute("SELECT count(*), sum(length(payload)) FROM outbox").fetchone()
        con.close()
        assert pipe.outbox.bytes == size + ROW_OVERHEAD * n
    finally:
        await pipe.close()


async def test_in_flight_and_previous_run_rows_are_frozen(tmp_path: Path) -> None:
    m0 = time.monotonic() - 50
    pipe = await Pipeline.open(Outbox(tmp_path / "b.db"))
    await pipe.call(pipe.outbox.commit, [unsynced(i, m0 + i) for i in range(3)])
    await pipe.close()
    old = table(tmp_path / "b.db")
    pipe = await Pipeline.open(
        Outbox(tmp_path / "b.db")
    )  # a restarted agent: may have published 1-3
    try:
        assert pipe.outbox.opened_seq == 4
        await pipe.call(pipe.outbox.commit, [unsynced(i, m0 + i) for i in range(3, 6)])
        pipe.outbox.protect_upto = 4  # seq 4 in flight
        res = await correct_buffered(pipe, time.time() - time.monotonic())
        assert (res.rewritten, res.frozen) == (2, 1)
        got = table(tmp_path / "b.db")
        assert got[:3] == old, (
            "rows of an earlier process are left alone (their mono may be another boot's)"
        )
        assert [c for _, _, c, _ in got] == [0, 0, 0, 0, 1, 1]
    finally:
        await pipe.close()


def test_corrected_reading_and_already_synced() -> None:
    r = unsynced(0, 1000.0)
    c = corrected(r, 5000.0)
    assert (c.ts, c.clock, c.mono, c.values) == (6000.0, "synced", 1000.0, r.values)
    s = Reading(device="d", driver="nmea", values={"x": 1}, ts=1.0, clock="synced", mono=2.0)
    assert corrected(s, 5000.0) is s


def test_detection_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    flag = tmp_path / "synchronized"
    monkeypatch.setenv("EDGE_AGENT_CLOCK", f"file:{flag}")
    mon = ClockMonitor(recheck=3600)
    assert mon.state() == "unsynced"
    flag.touch()
    assert mon.state() == "unsynced", "cached until refresh"
    assert mon.refresh() == "synced" and mon.state() == "synced"
    monkeypatch.setenv("EDGE_AGENT_CLOCK", "unsynced")
    assert mon.refresh() == "unsynced"


def test_agent_corrects_buffered_readings_when_the_clock_syncs(
    tmp_path: Path, pty_factory: type[PtyDevice]
) -> None:
    """Real process: unsynced readings wait (no broker), the sync flag appears: re-stamped."""
    dev = pty_factory()
    flag = tmp_path / "synchronized"
    cfg = write_config(
        tmp_path / "agent.toml",
        broker_port=free_port(),
        devices=nmea_device(dev.port, tags="", expected_interval=""),
    )
    agent = AgentProcess(cfg, env={"EDGE_AGENT_CLOCK": f"file:{flag}"})
    try:
        agent.start_and_wait_port()
        fs = fixes(start=1_790_000_000.0)
        for f in itertools.islice(fs, 4):
            dev.write(epoch_bytes(f))
        deadline = time.monotonic() + 20
        while len(table(tmp_path / "buffer.db")) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        before = table(tmp_path / "buffer.db")
        assert [(s, c) for s, _, c, _ in before] == [(1, 0), (2, 0), (3, 0), (4, 0)]
        flag.touch()  # what systemd-timesyncd does once synchronised
        agent.wait_log("clock synchronised")
        assert "4 buffered readings re-stamped, 0 already handed to the uplink" in agent.output()
        after = table(tmp_path / "buffer.db")
        for (_, _, _, p0), (_, _, c1, p1) in zip(before, after, strict=True):
            r0, r1 = json.loads(p0), json.loads(p1)
            assert (r0["clock"], r1["clock"], c1) == ("unsynced", "synced", 1)
            assert {k: v for k, v in r0.items() if k not in ("ts", "clock")} == {
                k: v for k, v in r1.items() if k not in ("ts", "clock")
            }
            # No real jump happened here, so the monotonic-derived time equals the original.
            assert (
                abs(
                    time.mktime(time.strptime(r1["ts"][:19], "%Y-%m-%dT%H:%M:%S"))
                    - time.mktime(time.strptime(r0["ts"][:19], "%Y-%m-%dT%H:%M:%S"))
                )
                <= 1
            )
        dev.write(epoch_bytes(next(fs)))  # after the sync: synced from the start
        deadline = time.monotonic() + 20
        while len(table(tmp_path / "buffer.db")) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [c for _, _, c, _ in table(tmp_path / "buffer.db")] == [1] * 5
        agent.signal(signal.SIGTERM)
        assert agent.wait(15) == 0
    finally:
        agent.close()
