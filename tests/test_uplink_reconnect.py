"""Uplink.reconnect_now(): the reconnect backoff is reset and the session comes back at once."""

from __future__ import annotations

import time
from pathlib import Path

from agent.config import parse_config
from agent.runtime import Agent
from tests.support.broker import Broker, free_port
from tests.support.wait import until


async def test_reconnect_now_skips_a_long_backoff(tmp_path: Path, counter_driver: None) -> None:
    port = free_port()
    cfg = parse_config({
        "gateway": {"id": "gw-rc"},
        "buffer": {"path": str(tmp_path / "b.db"), "commit_interval": 0.05},
        # a first failure waits 30-60 s: without reconnect_now the broker below would not be reached in time
        "uplink": {"port": port, "backoff_initial": 60, "backoff_max": 60},
        "control": {"socket": str(tmp_path / "c.sock")},
        "devices": [{"id": "c", "driver": "counter", "interval": 0.05}],
    })
    agent = Agent(cfg)
    await agent.start()
    broker = None
    try:
        up = agent.uplink
        await until(lambda: up.stats.state == "backoff", 20, "the uplink in backoff")
        assert up.stats.backoff_until is not None and up.stats.backoff_until - time.time() > 20
        broker = Broker(port=port).start()
        t0 = time.monotonic()
        up.reconnect_now()
        await until(lambda: up.connected.is_set(), 15, "connected after reconnect_now")
        assert time.monotonic() - t0 < 15
        connects = up.stats.connects
        up.reconnect_now()  # while connected: the session is closed and opened again
        await until(lambda: up.stats.connects == connects + 1 and up.connected.is_set(), 15, "a new session")
        assert up.stats.reconnects == 1
        await until(lambda: up.stats.readings_acked > 0, 15, "readings delivered")
    finally:
        await agent.stop()
        if broker is not None:
            broker.close()
