"""BLE fixtures: a private system bus, a scripted bluetoothd, and agent processes pointed at them."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.agentproc import AgentProcess, write_config
from tests.support.bluez import DBusDaemon, ScriptedBlueZ
from tests.support.broker import Broker

ROOT = Path(__file__).resolve().parents[2]



@pytest.fixture
def dbus() -> Iterator[DBusDaemon]:
    d = DBusDaemon()
    yield d
    d.close()


@pytest.fixture
def bluez_factory(dbus: DBusDaemon) -> Iterator[Callable[..., ScriptedBlueZ]]:
    made: list[ScriptedBlueZ] = []

    def make(**kw: object) -> ScriptedBlueZ:
        b = ScriptedBlueZ(dbus.address, **kw)  # type: ignore[arg-type]
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


def agent_env(dbus: DBusDaemon) -> dict[str, str]:
    pp = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {"DBUS_SYSTEM_BUS_ADDRESS": dbus.address, "PYTHONPATH": pp}


@pytest.fixture
def ble_agent(tmp_path: Path, broker: Broker, dbus: DBusDaemon) -> Iterator[Callable[..., AgentProcess]]:
    """start(devices=..., ble=...) -> a running agent subprocess on the private bus."""
    procs: list[AgentProcess] = []

    def start(devices: str, ble: str = "", uplink: str = "") -> AgentProcess:
        extra = "[ble]\nrestart_delay = \"200ms\"\n" + ble
        cfg = write_config(tmp_path / "agent.toml", broker_port=broker.port, devices=devices, extra=extra,
                           uplink=uplink)
        a = AgentProcess(cfg, env=agent_env(dbus)).start()
        procs.append(a)
        return a

    yield start
    for a in procs:
        a.close()
