"""End to end over BLE: `vesc` (NUS) and `jbd_bms` (FF00) polled through the scripted BlueZ -> agent -> Mosquitto."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from drivers.jbd_bms import simulator as jsim
from drivers.jbd_bms.protocol import BASIC_INFO_REQUEST, CELL_VOLTAGES_REQUEST
from drivers.vesc import simulator as vsim
from drivers.vesc.protocol import GET_VALUES_REQUEST
from tests.support.agentproc import AgentProcess
from tests.support.bluez import JBD_SERVICE, NUS_SERVICE, ScriptedBlueZ
from tests.support.broker import Broker
from tests.support.mqtt import Subscriber
from tests.support.wait import wait_until
from tests.test_e2e_vehicle import in_order_subsequence, jbd_expected, vesc_expected

VESC = "E4:5F:01:AA:BB:01"
JBD = "A4:C1:37:00:11:22"


@pytest.fixture
def sub(broker: Broker) -> Iterator[Subscriber]:
    s = Subscriber(broker.host, broker.port, "edge/gw-test/#")
    yield s
    s.close()


def test_vesc_over_nus_polls_and_reconnects(
    bluez_factory: Callable[..., ScriptedBlueZ], ble_agent: Callable[..., AgentProcess], sub: Subscriber
) -> None:
    bz = bluez_factory()
    ride = vsim.VescResponder(dt=0.1)
    p = bz.add_peripheral(VESC, "VESC BLE UART", gatt=True, mtu=23, responder=ride.answer)
    agent = ble_agent(f"""
        [[devices]]
        id = "scooter-7-motor"
        driver = "vesc"
        transport = "ble"
        address = "{VESC}"
        poll_interval = "100ms"
        motor_poles = 30
        wheel_diameter = 0.254
        """)
    agent.wait_log("BLE scanner running", timeout=20)
    wait_until(lambda: bz.advertise(VESC, service_uuids=(NUS_SERVICE,)), 10, "scanner hears the controller")
    agent.wait_log("GATT link to", timeout=20)
    # 74-byte replies arrive in 20-byte notifications and are reassembled
    sub.wait_for(lambda: len(sub.readings()) >= 5, 20, "5 readings over BLE")
    assert [r["values"] for r in sub.readings()[:5]] == vesc_expected(5)

    bz.drop_link(VESC)
    agent.wait_log("link to", timeout=10)
    wait_until(lambda: bz.notifying(VESC), 30, "re-subscribed after the drop")
    n = len(sub.readings())
    sub.wait_for(lambda: len(sub.readings()) >= n + 5, 20, "readings after reconnecting")
    assert p.connects == 2
    assert agent.terminate() == 0
    got = sub.readings()
    assert in_order_subsequence([r["values"] for r in got], vesc_expected(1000))
    assert [r["seq"] for r in got] == list(range(1, len(got) + 1))
    # only the read request was ever written to the controller
    assert p.written and set(p.written) == {GET_VALUES_REQUEST}


def test_jbd_bms_over_ff00_reassembles_split_replies_and_reconnects(
    bluez_factory: Callable[..., ScriptedBlueZ], ble_agent: Callable[..., AgentProcess], sub: Subscriber
) -> None:
    bz = bluez_factory()
    p = bz.add_peripheral(JBD, "xiaoxiang BMS", gatt=True, mtu=23, service=JBD_SERVICE,
                          responder=jsim.JbdResponder(dt=0.1).answer)
    agent = ble_agent(f"""
        [[devices]]
        id = "cargo-3-bms"
        driver = "jbd_bms"
        transport = "ble"
        address = "{JBD}"
        poll_interval = "100ms"
        """)
    agent.wait_log("BLE scanner running", timeout=20)
    wait_until(lambda: bz.advertise(JBD, service_uuids=(JBD_SERVICE,)), 10, "scanner hears the BMS")
    agent.wait_log("GATT link to", timeout=20)
    # 34-byte basic info and 33-byte cell replies each arrive as two notifications (20 + rest)
    sub.wait_for(lambda: len(sub.readings()) >= 5, 20, "5 BMS readings over BLE")
    assert [r["values"] for r in sub.readings()[:5]] == jbd_expected(5)
    bz.drop_link(JBD)
    agent.wait_log("link to", timeout=10)
    wait_until(lambda: bz.notifying(JBD), 30, "re-subscribed after the drop")
    n = len(sub.readings())
    sub.wait_for(lambda: len(sub.readings()) >= n + 3, 20, "readings after reconnecting")
    assert p.connects == 2
    assert agent.terminate() == 0
    got = sub.readings()
    assert in_order_subsequence([r["values"] for r in got if "cell_voltage_1" in r["values"]], jbd_expected(1000))
    assert set(p.written) == {BASIC_INFO_REQUEST, CELL_VOLTAGES_REQUEST}
