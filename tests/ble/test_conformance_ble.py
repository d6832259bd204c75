"""Conformance of every registered BLE advert family: its simulator's adverts through the scripted BlueZ,
the real bleak BlueZ backend and the shared scanner into the real driver of an agent process, to
Mosquitto: exactly what the family's decoder makes of each advert, in order. A family gets it by registering."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from drivers.family import SimParams
from drivers.registry import registry
from tests.support.agentproc import AgentProcess
from tests.support.bluez import ScriptedBlueZ
from tests.support.broker import Broker
from tests.support.mqtt import Subscriber
from tests.support.wait import wait_until

REG = registry()
ADVERTS = sorted(d for d in REG.simulated() if REG.family_of(d).advert_decoder)
ADDRESS = "C7:F5:2A:A1:B2:C3"
N = 5


@pytest.fixture
def sub(broker: Broker) -> Iterator[Subscriber]:
    s = Subscriber(broker.host, broker.port, "edge/gw-test/#")
    yield s
    s.close()


@pytest.mark.parametrize("driver", ADVERTS)
def test_simulated_adverts_through_bluez_into_the_real_driver(
    driver: str, bluez_factory: Callable[..., ScriptedBlueZ], ble_agent: Callable[..., AgentProcess],
    sub: Subscriber,
) -> None:
    chunks, decoder = REG.family_of(driver).simulation(driver, SimParams(address=ADDRESS))
    adverts = list(itertools.islice(chunks, N))
    want: list[dict[str, Any]] = [v for a in adverts for v in decoder.feed(a)]
    assert len(want) == N and all(a != b for a, b in itertools.pairwise(want)), want  # each one news
    bz = bluez_factory()
    agent = ble_agent(f'[[devices]]\nid = "dut"\ndriver = "{driver}"\naddress = "{ADDRESS}"\n'
                      'expected_interval = "60s"\n')
    agent.wait_log("BLE scanner running", timeout=20)
    wait_until(lambda: bz.discovering or bool(bz.active_monitors()), 10, "scanner registered with BlueZ")
    for i, adv in enumerate(adverts):
        assert bz.advertise(ADDRESS, name=adv.name, rssi=adv.rssi, manufacturer_data=adv.manufacturer_data,
                            service_data=adv.service_data, service_uuids=tuple(adv.service_uuids))
        # one advertising event at a time: the next only once this one is delivered (no coalescing)
        sub.wait_for(lambda i=i: len(sub.readings()) > i, 20, f"reading {i + 1} of {N}")  # type: ignore[misc]
    got = sub.readings()
    assert [r["values"] for r in got] == want
    assert {(r["device"], r["driver"]) for r in got} == {("dut", driver)}
    assert agent.terminate() == 0
