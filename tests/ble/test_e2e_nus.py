"""End to end: NUS notifications from the scripted BlueZ -> bleak client -> lines -> agent -> Mosquitto."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest

from tests.support.agentproc import AgentProcess
from tests.support.bluez import NUS_SERVICE, ScriptedBlueZ
from tests.support.broker import Broker
from tests.support.mqtt import Subscriber
from tests.support.wait import wait_until

BMS = "F0:0D:12:34:56:78"
DEVICE = f"""
[[devices]]
id = "bus-12-bms"
driver = "ble_nus"
address = "{BMS}"
expected_interval = "60s"
format = "json"
unknown_fields = "keep"
tags = {{ vehicle = "bus-12" }}
"""


def line(i: int) -> bytes:
    return json.dumps({"soc": 80 - i, "voltage": round(51.2 + i / 100, 2), "current": -12.5, "n": i}).encode() + b"\n"


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


@pytest.fixture
def sub(broker: Broker) -> Iterator[Subscriber]:
    s = Subscriber(broker.host, broker.port, "edge/gw-test/#")
    yield s
    s.close()


def test_nus_stream_mtu_split_lines_and_reconnect(
    bluez_factory: Callable[..., ScriptedBlueZ], ble_agent: Callable[..., AgentProcess], sub: Subscriber
) -> None:
    bz = bluez_factory()
    p = bz.add_peripheral(BMS, "BMS-12", gatt=True, mtu=23)
    agent = ble_agent(DEVICE)
    agent.wait_log("BLE scanner running", timeout=20)
    wait_until(lambda: bz.advertise(BMS, service_uuids=(NUS_SERVICE,)), 10, "scanner hears the peripheral")
    wait_until(lambda: bz.notifying(BMS), 20, "agent subscribed to NUS TX")
    agent.wait_log("NUS stream from", timeout=10)

    # 20 lines, each split over 20-byte notifications (ATT MTU 23), several lines per chunk boundary.
    stream = b"".join(line(i) for i in range(20))
    for c in chunks(stream, 20):
        assert bz.notify(BMS, c)
    sub.wait_for(lambda: len(sub.readings()) >= 20, 20, "20 lines")
    got = sub.readings()
    assert [r["values"] for r in got] == [json.loads(line(i)) for i in range(20)]
    assert all(r["driver"] == "ble_nus" and r["tags"] == {"vehicle": "bus-12"} for r in got)

    # The link drops mid-line: that partial line is lost, the stream resumes after reconnecting.
    assert bz.notify(BMS, line(20)[:15])
    bz.drop_link(BMS)
    agent.wait_log("link to", timeout=10)
    wait_until(lambda: bz.notifying(BMS), 30, "agent re-subscribed after the drop")
    assert p.connects == 2
    stream = b"".join(line(i) for i in range(21, 31))
    for c in chunks(stream, 20):
        assert bz.notify(BMS, c)
    sub.wait_for(lambda: len(sub.readings()) >= 30, 20, "30 lines")
    got = sub.readings()
    assert [r["values"]["n"] for r in got] == list(range(20)) + list(range(21, 31))
    assert [r["seq"] for r in got] == list(range(1, 31))
    assert agent.terminate() == 0


def test_nus_reconnects_after_bluetoothd_restart(
    bluez_factory: Callable[..., ScriptedBlueZ], ble_agent: Callable[..., AgentProcess], sub: Subscriber
) -> None:
    bz = bluez_factory()
    bz.add_peripheral(BMS, "BMS-12", gatt=True)
    agent = ble_agent(DEVICE)
    agent.wait_log("BLE scanner running", timeout=20)
    wait_until(lambda: bz.advertise(BMS, service_uuids=(NUS_SERVICE,)), 10, "scanner hears the peripheral")
    wait_until(lambda: bz.notifying(BMS), 20, "subscribed")
    assert bz.notify(BMS, line(0))
    sub.wait_for(lambda: len(sub.readings()) == 1, 20, "first line")
    bz.restart()
    agent.wait_log("bluetoothd is back on the bus")
    # The new daemon knows no devices until the peripheral advertises again.
    wait_until(lambda: bz.advertise(BMS, service_uuids=(NUS_SERVICE,)) and bz.notifying(BMS), 30,
               "re-subscribed on the new daemon")
    assert bz.notify(BMS, line(1) + line(2))
    sub.wait_for(lambda: len(sub.readings()) == 3, 20, "lines after the restart")
    assert [r["values"]["n"] for r in sub.readings()] == [0, 1, 2]
    assert agent.terminate() == 0
