"""End to end over ptys: the `vesc` (and `jbd_bms`) drivers polling simulated devices -> agent -> Mosquitto."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from drivers.family import PerPoll
from drivers.jbd_bms import simulator as jsim
from drivers.jbd_bms.protocol import BASIC_INFO_REQUEST, CELL_VOLTAGES_REQUEST, JbdProtocol
from drivers.vesc import simulator as vsim
from drivers.vesc.protocol import GET_VALUES_REQUEST, VescProtocol
from tests.support.agentproc import AgentProcess, write_config
from tests.support.broker import Broker
from tests.support.mqtt import Subscriber
from tests.support.polled import PolledPty


@pytest.fixture
def sub(broker: Broker) -> Iterator[Subscriber]:
    s = Subscriber(broker.host, broker.port, "edge/gw-test/#")
    yield s
    s.close()


def vesc_expected(n: int) -> list[dict[str, Any]]:
    """The first `n` replies of the simulated ride, decoded as the agent must decode them."""
    p = VescProtocol(vsim.GEOMETRY)
    return [p.feed(r)[0] for r in itertools.islice(vsim.replies(0.1), n)]


def jbd_expected(n: int) -> list[dict[str, Any]]:
    """The first `n` polls of the simulated pack, both replies merged as the driver merges them."""
    dec = PerPoll(JbdProtocol())
    return [dec.feed(c)[0] for c in itertools.islice(jsim.exchanges(0.1), n)]


def in_order_subsequence(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> bool:
    it = iter(expected)
    return all(any(g == e for e in it) for g in got)


def device(sub: Subscriber, dev_id: str) -> list[dict[str, Any]]:
    return [r for r in sub.readings() if r["device"] == dev_id]


def only_requests(written: bytes, requests: tuple[bytes, ...]) -> bool:
    """The gateway wrote nothing but these read requests, starting with one whole poll."""
    rest = written
    for r in requests:
        rest = rest.replace(r, b"")
    return written.startswith(b"".join(requests)) and rest == b""


@dataclass(frozen=True)
class Vehicle:
    """One polled vehicle device on a pty, and what its end-to-end run must show."""

    dev: str
    driver: str
    link: str  # the adapter's /dev/serial/by-id name
    responder: Callable[[], Callable[[bytes], bytes]]
    keys: str  # device keys besides id, driver and port
    expected: Callable[[int], list[dict[str, Any]]]
    first: int  # readings that must equal the simulation's first polls exactly
    quantities: frozenset[str]
    requests: tuple[bytes, ...]
    complete: str | None  # a poll cut by the unplug may lack a reply: compare only readings with this
    tags: dict[str, str]
    mute: bool  # also check a silent device (timeouts, link disconnected, back)
    after: int  # readings to wait for after the replug


VEHICLES = [
    Vehicle("scooter-7-motor", "vesc", "usb-VESC_STM32-if00", lambda: vsim.VescResponder(dt=0.1).answer,
            'poll_interval = "100ms"\ntimeout = "300ms"\nmotor_poles = 30\nwheel_diameter = 0.254\n'
            'tags = { vehicle = "scooter-7" }', vesc_expected, 10,
            frozenset({"speed", "distance", "fault", "erpm", "input_voltage"}), (GET_VALUES_REQUEST,), None, {"vehicle": "scooter-7"},
            True, 5),
    Vehicle("cargo-3-bms", "jbd_bms", "usb-1a86_USB_Serial-if00-port0", lambda: jsim.JbdResponder(dt=0.1).answer,
            'poll_interval = "100ms"', jbd_expected, 5,  # basic info and cells in one reading
            frozenset({"voltage", "state_of_charge", "cell_voltage_13", "cell_voltage_delta", "protection"}),
            (BASIC_INFO_REQUEST, CELL_VOLTAGES_REQUEST), "cell_voltage_1", {}, False, 3),
]


@pytest.mark.parametrize("v", VEHICLES, ids=[v.dev for v in VEHICLES])
def test_serial_polls_decode_and_survive_silence_and_replug(tmp_path: Path, broker: Broker, sub: Subscriber,
                                                           v: Vehicle) -> None:
    ctl = PolledPty(tmp_path / v.link, v.responder())
    keys = "\n".join(f"        {k}" for k in v.keys.splitlines())
    cfg = write_config(tmp_path / "agent.toml", broker_port=broker.port, devices=f"""
        [[devices]]
        id = "{v.dev}"
        driver = "{v.driver}"
        port = "{ctl.port}"
{keys}
        """)
    agent = AgentProcess(cfg)
    try:
        agent.start_and_wait_port(v.dev)
        sub.wait_for(lambda: len(device(sub, v.dev)) >= v.first, 30, f"{v.first} readings")
        got = device(sub, v.dev)
        # every poll answered in order: the readings are exactly the simulation's replies
        assert [r["values"] for r in got[:v.first]] == v.expected(v.first)
        assert got[0]["driver"] == v.driver and v.quantities <= set(got[0]["values"])
        assert got[0].get("tags", {}) == v.tags
        if v.mute:  # silent device: timeouts, then the link is reported disconnected; answers bring it back
            ctl.mute = True
            agent.wait_log(f"device {v.dev}: link disconnected no reply to 3 polls")
            ctl.mute = False
            agent.wait_log(f"device {v.dev}: link connected", count=2)

        # unplugged USB adapter: reopened with backoff, polling resumes
        n = len(device(sub, v.dev))
        ctl.unplug()
        agent.wait_log(f"{v.dev}: port lost")
        ctl.plug()
        agent.wait_log(f"{v.dev}: opened", count=2)
        sub.wait_for(lambda: len(device(sub, v.dev)) >= n + v.after, 30, "readings after replug")
        assert agent.terminate() == 0
    finally:
        agent.close()
        ctl.close()
    got = device(sub, v.dev)
    # no duplicates, no reordering: an in-order subsequence of the simulation (replies lost while muted or unplugged)
    assert in_order_subsequence([r["values"] for r in got if v.complete is None or v.complete in r["values"]],
                                v.expected(2000))
    assert [r["seq"] for r in got] == sorted({r["seq"] for r in got})
    assert only_requests(bytes(ctl.written), v.requests)
