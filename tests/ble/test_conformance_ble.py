"""Conformance of every registered BLE family, through the scripted BlueZ, the real bleak BlueZ backend
and an agent process, to Mosquitto. Advert families: the simulator's adverts into the real driver,
exactly what the family's decoder makes of each, in order. Polled families with a BLE variant: the real
driver polls the family's simulated device (its responder) over GATT; each reading is exactly what the
simulation's decoder makes of that poll's requests and replies. Notification streams (ble_nus): the
simulator's bytes in 20-byte notifications, exactly the decoder's values. A family gets these by registering."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agent.demo import _toml_value  # the demo writes its simulators' device keys the same way
from drivers.family import SimParams, resolve
from drivers.registry import registry
from tests.support.agentproc import AgentProcess
from tests.support.bluez import ScriptedBlueZ
from tests.support.broker import Broker
from tests.support.mqtt import Subscriber
from tests.support.wait import wait_until

REG = registry()
ADVERTS = sorted(d for d in REG.simulated() if REG.family_of(d).advert_decoder)
# polled drivers that also run over GATT (a `ble_notify`/`ble_write` pair) and have a simulated device
GATT_POLLED = sorted(d for d in REG.simulated() if REG.drivers[d].entry.responder
                     and getattr(REG.family_of(d).driver_class(d), "ble_notify", None))
# the rest that run over BLE: devices that stream notifications once subscribed (ble_nus)
GATT_STREAMS = sorted(d for d in REG.simulated() if REG.family_of(d).driver_class(d).transport == "ble"
                      and d not in ADVERTS and d not in GATT_POLLED)


def _sim_keys(driver: str) -> str:
    ref = REG.drivers[driver].entry.sim_device
    return "".join(f"{k} = {_toml_value(v)}\n" for k, v in (dict(resolve(ref)) if ref else {}).items())
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


def _connectable(ble_agent: Callable[..., AgentProcess], bz: ScriptedBlueZ, driver: str, service: str,
                 keys: str) -> AgentProcess:
    """An agent with one `driver` device at ADDRESS (and the simulator's keys), once its scanner hears it."""
    agent = ble_agent(f'[[devices]]\nid = "dut"\ndriver = "{driver}"\naddress = "{ADDRESS}"\n{keys}{_sim_keys(driver)}')
    agent.wait_log("BLE scanner running", timeout=20)
    wait_until(lambda: bz.advertise(ADDRESS, service_uuids=(service,)), 10, "the scanner hears the device")
    return agent


class _Recorder:
    """The simulated device's answers, logged: every (request, reply) the central's writes got."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.log: list[tuple[bytes, bytes]] = []

    def answer(self, data: bytes) -> bytes:
        reply: bytes = self.inner.answer(data)
        self.log.append((data, reply))
        return reply


@pytest.mark.parametrize("driver", GATT_POLLED)
def test_the_real_driver_polls_the_simulated_device_over_gatt(
    driver: str, bluez_factory: Callable[..., ScriptedBlueZ], ble_agent: Callable[..., AgentProcess],
    sub: Subscriber,
) -> None:
    fam = REG.family_of(driver)
    cls = fam.driver_class(driver)
    requests: tuple[bytes, ...] = cls.requests  # type: ignore[attr-defined]
    service = next(h.service_uuid for h in fam.scan_hints if h.driver == driver)
    rec = _Recorder(fam.responder(driver))
    bz = bluez_factory()
    p = bz.add_peripheral(ADDRESS, "simulated", gatt=True, mtu=23, service=service, responder=rec.answer)
    agent = _connectable(ble_agent, bz, driver, service, 'transport = "ble"\npoll_interval = "200ms"\ntimeout = "5s"\n')
    sub.wait_for(lambda: len(sub.readings()) >= N, 30, f"{N} readings over GATT")
    assert agent.terminate() == 0
    got = sub.readings()
    # the polls in the order the device answered them: each starts with the family's first request
    polls: list[bytes] = []
    for q, r in rec.log:
        if q == requests[0] or not polls:
            polls.append(b"")
        polls[-1] += q + r
    _, decoder = fam.simulation(driver, SimParams())
    want = [v for chunk in polls for v in decoder.feed(chunk) + decoder.flush()]
    assert [r["values"] for r in got] == want[: len(got)]
    assert dict(decoder.errors) == {}
    assert {(r["device"], r["driver"]) for r in got} == {("dut", driver)}
    assert set(p.written) == set(requests), "only the family's read requests are ever written"


@pytest.mark.parametrize("driver", GATT_STREAMS)
def test_simulated_notifications_over_gatt_into_the_real_driver(
    driver: str, bluez_factory: Callable[..., ScriptedBlueZ], ble_agent: Callable[..., AgentProcess],
    sub: Subscriber,
) -> None:
    """The simulator's stream as 20-byte notifications (ATT MTU 23) into the real driver: exactly the decoder's values."""
    fam = REG.family_of(driver)
    service = next(h.service_uuid for h in fam.scan_hints if h.driver == driver)
    chunks, decoder = fam.simulation(driver, SimParams())
    stream = b"".join(itertools.islice(chunks, N * 2))
    want = decoder.feed(stream)  # a CSV header, say, is a chunk without a reading
    assert len(want) >= N and dict(decoder.errors) == {}, want
    bz = bluez_factory()
    bz.add_peripheral(ADDRESS, "simulated", gatt=True, mtu=23, service=service)
    agent = _connectable(ble_agent, bz, driver, service, 'expected_interval = "60s"\n')
    wait_until(lambda: bz.notifying(ADDRESS), 20, "the driver subscribed to the notifications")
    for i in range(0, len(stream), 20):
        assert bz.notify(ADDRESS, stream[i:i + 20])
    sub.wait_for(lambda: len(sub.readings()) >= len(want), 20, f"{len(want)} readings over GATT")
    assert agent.terminate() == 0
    got = sub.readings()
    assert [r["values"] for r in got] == want
    assert {(r["device"], r["driver"]) for r in got} == {("dut", driver)}
