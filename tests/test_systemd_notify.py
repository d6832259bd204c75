"""The agent under a (fake) service manager: READY, STATUS, progress-gated WATCHDOG, STOPPING,
SIGHUP reload and SIGTERM flush, all seen from a real NOTIFY_SOCKET datagram socket."""

from __future__ import annotations

import itertools
import signal
import sqlite3
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.nmea.simulator import epoch_bytes, fixes
from tests.support.agentproc import AgentProcess, nmea_device, write_config
from tests.support.broker import Broker, free_port
from tests.support.cli import run_cli
from tests.support.mqtt import Subscriber, wait_until
from tests.support.pty import PtyDevice
from tests.support.sdnotify import NotifyListener

START = 1_790_000_000.0


def rows(db: Path) -> list[tuple[int, str]]:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT seq, device FROM outbox ORDER BY seq").fetchall()
    finally:
        con.close()


def readings(cfg: Path) -> int | None:
    """Readings the running agent's van-gnss has emitted so far (control socket)."""
    r = run_cli("status", "--config", cfg, "--json")
    return r.json()["devices"]["van-gnss"]["readings"] if r.code in (0, 3, 4) else None


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifyListener]:
    n = NotifyListener(tmp_path / "notify.sock")
    yield n
    n.close()


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    made: list[AgentProcess] = []
    yield made
    for a in made:
        a.close()


def start(agents: list[AgentProcess], cfg: Path, env: dict[str, str]) -> AgentProcess:
    a = AgentProcess(cfg, env={"EDGE_AGENT_CLOCK": "synced", **env})
    agents.append(a)
    return a.start()


def test_ready_status_and_periodic_watchdog(
    tmp_path: Path,
    listener: NotifyListener,
    agents: list[AgentProcess],
    pty_factory: type[PtyDevice],
) -> None:
    dev = pty_factory()
    cfg = write_config(tmp_path / "agent.toml", broker_port=free_port(), devices=nmea_device(dev.port))
    agent = start(agents, cfg, listener.env(watchdog_usec=400_000))
    listener.wait_for(lambda: listener.with_key("READY", "1"), 20, "READY=1")
    t_ready, ready = listener.with_key("READY", "1")[0]
    assert (tmp_path / "buffer.db").exists(), "READY only once the buffer is open"
    assert ready["STATUS"].startswith("0/1 devices online, buffer 0 readings, uplink ")
    assert (
        listener.with_key("WATCHDOG") == [] or listener.with_key("WATCHDOG")[0][0] >= t_ready - 0.5
    )
    listener.wait_for(lambda: listener.pings_since(t_ready) >= 5, 10, "5 watchdog pings")
    times = [t for t, _ in listener.with_key("WATCHDOG", "1")]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # The period the agent keeps (a loaded machine may delay one ping: the scheduler's, not the agent's)
    assert 0.1 < statistics.median(gaps) < 0.4, f"pings every WATCHDOG_USEC/2 (0.2 s): {gaps}"
    for f in itertools.islice(fixes(start=START), 3):
        dev.write(epoch_bytes(f))
    listener.wait_for(
        lambda: any("1/1 devices online" in m.get("STATUS", "") for _, m in listener.snapshot()),
        20,
        "STATUS with the device online",
    )
    agent.signal(signal.SIGTERM)
    assert agent.wait(15) == 0
    msgs = [m for _, m in listener.snapshot()]
    stop_at = next(i for i, m in enumerate(msgs) if m.get("STOPPING") == "1")
    assert "READY" not in str(msgs[stop_at + 1 :])
    assert [s for _, s in rows(tmp_path / "buffer.db")] == ["van-gnss"] * 3


def test_wedged_writer_stops_pinging_and_recovers(
    tmp_path: Path,
    listener: NotifyListener,
    agents: list[AgentProcess],
    pty_factory: type[PtyDevice],
) -> None:
    """A commit blocked by an EXCLUSIVE lock another process holds on the buffer: no pings."""
    dev = pty_factory()
    cfg = write_config(tmp_path / "agent.toml", broker_port=free_port(), devices=nmea_device(dev.port))
    agent = start(agents, cfg, listener.env(watchdog_usec=600_000))
    agent.wait_log("van-gnss: opened")
    listener.wait_for(lambda: len(listener.with_key("WATCHDOG", "1")) >= 3, 20, "pings")
    lock = sqlite3.connect(tmp_path / "buffer.db", isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        dev.write(epoch_bytes(next(iter(fixes(start=START)))))
        # SQLite's busy timeout is 5 s; the agent reports the stall after 1 s
        # (WatchdogSec/2, at least 1 s).
        listener.wait_for(
            lambda: any(
                m.get("STATUS", "").startswith("STALLED: buffer commit stuck")
                for _, m in listener.snapshot()
            ),
            3.5,
            "STALLED status",
        )
        t_stall = listener.with_key("STATUS")[-1][0]
        time.sleep(1.2)  # observation window (3 ping periods): nothing may arrive
        assert listener.pings_since(t_stall) == 0
        assert agent.proc is not None and agent.proc.poll() is None
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    t_free = time.monotonic()
    listener.wait_for(lambda: listener.pings_since(t_free) >= 2, 10, "pings again once unwedged")
    assert "watchdog: buffer commit stuck" in agent.output()
    agent.signal(signal.SIGTERM)
    assert agent.wait(15) == 0
    assert len(rows(tmp_path / "buffer.db")) == 1, "the reading committed once the lock went away"


def test_sigterm_flushes_memory_to_sqlite(
    tmp_path: Path,
    listener: NotifyListener,
    agents: list[AgentProcess],
    pty_factory: type[PtyDevice],
) -> None:
    dev = pty_factory()
    cfg = write_config(tmp_path / "agent.toml", broker_port=free_port(), devices=nmea_device(dev.port))
    cfg.write_text(cfg.read_text().replace('commit_interval = "100ms"', 'commit_interval = "60s"'))
    agent = start(agents, cfg, listener.env(watchdog_usec=2_000_000))
    agent.wait_log("van-gnss: opened")
    for f in itertools.islice(fixes(start=START), 7):
        dev.write(epoch_bytes(f))
    listener.wait_for(
        lambda: any("1/1 devices online" in m.get("STATUS", "") for _, m in listener.snapshot()),
        20,
        "device online",
    )
    # Online comes with the first fix; all 7 must be decoded (in memory) before the SIGTERM.
    wait_until(lambda: readings(cfg) == 7, 20, "7 fixes decoded")
    assert rows(tmp_path / "buffer.db") == [], "still in memory (commit_interval 60 s)"
    t0 = time.monotonic()
    agent.signal(signal.SIGTERM)
    assert agent.wait(15) == 0
    assert time.monotonic() - t0 < 10, "within TimeoutStopSec"
    assert listener.with_key("STOPPING", "1")
    assert [seq for seq, _ in rows(tmp_path / "buffer.db")] == list(range(1, 8))


def test_sighup_reload_applies_devices_and_uplink_keeps_buffer(
    tmp_path: Path,
    listener: NotifyListener,
    agents: list[AgentProcess],
    pty_factory: type[PtyDevice],
    broker: Broker,
) -> None:
    a, b = pty_factory(), pty_factory()
    path = tmp_path / "agent.toml"
    sub = Subscriber(broker.host, broker.port, "#")
    try:
        write_config(path, broker_port=broker.port, devices=nmea_device(a.port, "dev-a"))
        agent = start(agents, path, listener.env())
        agent.wait_log("dev-a: opened")
        fs = iter(fixes(start=START))
        for f in itertools.islice(fs, 3):
            a.write(epoch_bytes(f))
        sub.wait_for(lambda: len(sub.readings()) >= 3, 20, "3 readings from dev-a")
        epoch = sub.on("edge/gw-test/telemetry")[0].json()["epoch"]

        # 1. devices: dev-a removed, dev-b added; uplink: a new topic prefix (session restarted).
        write_config(
            path,
            broker_port=broker.port,
            devices=nmea_device(b.port, "dev-b"),
            uplink='topic_prefix = "city/gw-test"',
        )
        t_hup = time.monotonic()
        agent.signal(signal.SIGHUP)
        listener.wait_for(
            lambda: [1 for t, m in listener.with_key("READY", "1") if t > t_hup],
            20,
            "READY after reload",
        )
        reloading = [m for t, m in listener.with_key("RELOADING", "1") if t > t_hup]
        assert len(reloading) == 1 and int(reloading[0]["MONOTONIC_USEC"]) > 0
        agent.wait_log("reload: applied: removed dev-a; added dev-b; uplink restarted")
        agent.wait_log("dev-b: opened")
        for f in itertools.islice(fs, 4):
            b.write(epoch_bytes(f))
        sub.wait_for(
            lambda: len({r["seq"] for r in sub.readings()}) >= 7, 20, "4 readings from dev-b"
        )
        got = {r["seq"]: r for r in sub.readings()}  # a seq unacked at the restart may come twice
        assert {
            r["seq"] for m in sub.on("city/gw-test/telemetry") for r in m.json()["readings"]
        } >= {4, 5, 6, 7}
        assert sorted(got) == list(range(1, 8)), "one buffer, seq continues across the reload"
        assert [got[s]["device"] for s in range(1, 8)] == ["dev-a"] * 3 + ["dev-b"] * 4
        assert {m.json()["epoch"] for m in sub.on("/telemetry")} == {epoch}
        sub.wait_for(
            lambda: (
                bool(sub.on("edge/gw-test/status"))
                and sub.on("edge/gw-test/status")[-1].json()["state"] == "offline"
            ),
            10,
            "old prefix marked offline",
        )

        # 2. an invalid file is rejected as a whole; dev-b keeps running.
        path.write_text(path.read_text().replace('driver = "nmea"', 'driver = "nope"'))
        t_hup = time.monotonic()
        agent.signal(signal.SIGHUP)
        listener.wait_for(
            lambda: [1 for t, m in listener.with_key("READY", "1") if t > t_hup],
            20,
            "READY after rejected reload",
        )
        ready = [m for t, m in listener.with_key("READY", "1") if t > t_hup][-1]
        assert ready["STATUS"].startswith("reload rejected; running the previous configuration")
        agent.wait_log(
            "keeping the running configuration: devices[0].driver: unknown driver 'nope'"
        )
        for f in itertools.islice(fs, 2):
            b.write(epoch_bytes(f))
        sub.wait_for(
            lambda: len({r["seq"] for r in sub.readings()}) >= 9, 20, "dev-b still delivering"
        )
        agent.signal(signal.SIGTERM)
        assert agent.wait(15) == 0
    finally:
        sub.close()
