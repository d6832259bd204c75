"""Reload planning: what changes live, what waits for a restart (keeps its running value)."""

from __future__ import annotations

from pathlib import Path

from agent.config import AgentConfig, parse_config
from agent.reload import plan


def cfg(tmp: Path, **over: object) -> AgentConfig:
    data: dict[str, object] = {
        "gateway": {"id": "gw-1"},
        "buffer": {"path": "b.db", "max_bytes": "1MB"},
        "devices": [
            {"id": "a", "driver": "nmea", "port": "/dev/ttyUSB0"},
            {"id": "b", "driver": "nmea", "port": "/dev/ttyUSB1"},
            {"id": "c", "driver": "nmea", "port": "/dev/ttyUSB2"},
        ],
    }
    data.update(over)
    return parse_config(data, source=tmp / "agent.toml")


def test_plan_devices_and_live_keys(tmp_path: Path) -> None:
    old = cfg(tmp_path)
    new = cfg(
        tmp_path,
        buffer={"path": "other.db", "max_bytes": "2MB", "queue_size": 500},
        gateway={"id": "gw-2"},
        log_level="debug",
        devices=[
            {"id": "a", "driver": "nmea", "port": "/dev/ttyUSB0"},  # unchanged
            {"id": "b", "driver": "nmea", "port": "/dev/ttyUSB1", "baud": 4800},  # changed
            {"id": "c", "driver": "nmea", "port": "/dev/ttyUSB2", "enabled": False},  # disabled
            {"id": "d", "driver": "nmea", "port": "/dev/ttyUSB3"},  # new
        ],
    )
    p = plan(old, new, running={"a", "b", "c"})
    assert (p.remove, p.add, p.restart) == (("c",), ("d",), ("b",))
    assert p.buffer == ("max_bytes",) and p.log_level and not p.uplink
    assert p.needs_restart == ("buffer.path", "buffer.queue_size", "gateway.id")
    eff = p.config
    assert eff.buffer.path == old.buffer.path and eff.buffer.queue_size == old.buffer.queue_size
    assert eff.gateway.id == "gw-1" and eff.buffer.max_bytes == 2_000_000
    assert p.summary() == "removed c; added d; restarted b; buffer max_bytes; log_level"


def test_plan_uplink_and_nothing(tmp_path: Path) -> None:
    old = cfg(tmp_path)
    assert plan(old, cfg(tmp_path), running={"a", "b", "c"}).empty
    p = plan(
        old, cfg(tmp_path, uplink={"host": "mqtt.example", "port": 8883}), running={"a", "b", "c"}
    )
    assert p.uplink and p.summary() == "uplink restarted"
