"""End to end over BLE: `vesc` (NUS) and `jbd_bms` (FF00) polled through the scripted BlueZ -> agent -> Mosquitto."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True)
class BleVehicle:
    """One polled vehicle device behind the scripted BlueZ, and what its end-to-end run must show."""

    dev: str
    driver: str
    address: str
    name: str
    service: str
    responder: Callable[[], Callable[[bytes], bytes]]
    keys: str  # device keys besides id, driver, transport and address
    expected: Callable[[int], list[dict[str, Any]]]
    requests: tuple[bytes, ...]
    complete: str | None  # a poll cut by the drop may lack a reply: compare only readings with this
    after: int  # readings to wait for after reconnecting


VEHICLES = [
    # 74-byte replies arrive in 20-byte notifications and are reassembled
    BleVehicle("scooter-7-motor", "vesc", VESC, "VESC BLE UART", NUS_SERVICE,
               lambda: vsim.VescResponder(dt=0.1).answer,
               'poll_interval = "100ms"\nmotor_poles = 30\nwheel_diameter = 0.254', vesc_expected,
               (GET_VALUES_REQUEST,), None, 5),
    # 34-byte basic info and 33-byte cell replies each arrive as two notifications (20 + rest)
    BleVehicle("cargo-3-bms", "jbd_bms", JBD, "xiaoxiang BMS", JBD_SERVICE, lambda: jsim.JbdResponder(dt=0.1).answer,
               'poll_interval = "100ms"', jbd_expected, (BASIC_INFO_REQUEST, CELL_VOLTAGES_REQUEST),
               "cell_voltage_1", 3),
]


@pytest.mark.parametrize("v", VEHICLES, ids=[v.dev for v in VEHICLES])
def test_polled_over_ble_reassembles_split_replies_and_reconnects(
    bluez_factory: Callable[..., ScriptedBlueZ], ble_agent: Callable[..., AgentProcess], sub: Subscriber,
    v: BleVehicle,
) -> None:
    bz = bluez_factory()
    p = bz.add_peripheral(v.address, v.name, gatt=True, mtu=23, service=v.service, responder=v.responder())
    keys = "\n".join(f"        {k}" for k in v.keys.splitlines())
    agent = ble_agent(f"""
        [[devices]]
        id = "{v.dev}"
        driver = "{v.driver}"
        transport = "ble"
        address = "{v.address}"
{keys}
        """)
    agent.wait_log("BLE scanner running", timeout=30)
    wait_until(lambda: bz.advertise(v.address, service_uuids=(v.service,)), 30, "the scanner hears the device")
    agent.wait_log("GATT link to", timeout=30)
    sub.wait_for(lambda: len(sub.readings()) >= 5, 30, "5 readings over BLE")
    assert [r["values"] for r in sub.readings()[:5]] == v.expected(5)

    bz.drop_link(v.address)
    agent.wait_log("link to", timeout=30)
    wait_until(lambda: bz.notifying(v.address), 30, "re-subscribed after the drop")
    n = len(sub.readings())
    sub.wait_for(lambda: len(sub.readings()) >= n + v.after, 30, "readings after reconnecting")
    assert p.connects == 2
    assert agent.terminate() == 0
    got = sub.readings()
    assert in_order_subsequence([r["values"] for r in got if v.complete is None or v.complete in r["values"]],
                                v.expected(1000))
    assert [r["seq"] for r in got] == list(range(1, len(got) + 1))
    # only the read requests were ever written to the device
    assert set(p.written) == set(v.requests)
