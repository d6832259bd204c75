"""End to end over ptys: the `vesc` (and `jbd_bms`) drivers polling simulated devices -> agent -> Mosquitto."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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
    dec = jsim.Merged(JbdProtocol())
    return [dec.feed(c)[0] for c in itertools.islice(jsim.exchanges(0.1), n)]


def in_order_subsequence(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> bool:
    it = iter(expected)
    return all(any(g == e for e in it) for g in got)


def device(sub: Subscriber, dev_id: str) -> list[dict[str, Any]]:
    return [r for r in sub.readings() if r["device"] == dev_id]


def test_vesc_serial_polls_decodes_and_survives_silence_and_replug(tmp_path: Path, broker: Broker,
                                                                   sub: Subscriber) -> None:
    ctl = PolledPty(tmp_path / "usb-VESC_STM32-if00", vsim.VescResponder(dt=0.1).answer)
    cfg = write_config(tmp_path / "agent.toml", broker_port=broker.port, devices=f"""
        [[devices]]
        id = "scooter-7-motor"
        driver = "vesc"
        port = "{ctl.port}"
        poll_interval = "100ms"
        timeout = "300ms"
        motor_poles = 30
        wheel_diameter = 0.254
        tags = {{ vehicle = "scooter-7" }}
        """)
    agent = AgentProcess(cfg)
    try:
        agent.start_and_wait_port("scooter-7-motor")
        sub.wait_for(lambda: len(device(sub, "scooter-7-motor")) >= 10, 30, "10 VESC readings")
        got = device(sub, "scooter-7-motor")
        # every poll answered in order: the readings are exactly the ride's replies, with speed and distance
        assert [r["values"] for r in got[:10]] == vesc_expected(10)
        assert got[0]["driver"] == "vesc" and got[0]["tags"] == {"vehicle": "scooter-7"}
        assert {"speed", "distance", "fault", "erpm", "input_voltage"} <= set(got[0]["values"])

        # silent controller: timeouts, then the link is reported disconnected; answers bring it back
        ctl.mute = True
        agent.wait_log("device scooter-7-motor: link disconnected no reply to 3 polls")
        ctl.mute = False
        agent.wait_log("device scooter-7-motor: link connected", count=2)

        # unplugged USB adapter: reopened with backoff, polling resumes
        n = len(device(sub, "scooter-7-motor"))
        ctl.unplug()
        agent.wait_log("scooter-7-motor: port lost")
        ctl.plug()
        agent.wait_log("scooter-7-motor: opened", count=2)
        sub.wait_for(lambda: len(device(sub, "scooter-7-motor")) >= n + 5, 30, "readings after replug")
        assert agent.terminate() == 0
    finally:
        agent.close()
        ctl.close()
    got = device(sub, "scooter-7-motor")
    # no duplicates, no reordering: an in-order subsequence of the ride (replies lost while muted or unplugged)
    assert in_order_subsequence([r["values"] for r in got], vesc_expected(2000))
    assert [r["seq"] for r in got] == sorted({r["seq"] for r in got})
    # the gateway only ever sent the read request
    written = bytes(ctl.written)
    assert written and written == GET_VALUES_REQUEST * (len(written) // len(GET_VALUES_REQUEST))


def test_jbd_bms_serial_polls_both_registers_and_survives_replug(tmp_path: Path, broker: Broker,
                                                                  sub: Subscriber) -> None:
    bms = PolledPty(tmp_path / "usb-1a86_USB_Serial-if00-port0", jsim.JbdResponder(dt=0.1).answer)
    cfg = write_config(tmp_path / "agent.toml", broker_port=broker.port, devices=f"""
        [[devices]]
        id = "cargo-3-bms"
        driver = "jbd_bms"
        port = "{bms.port}"
        poll_interval = "100ms"
        """)
    agent = AgentProcess(cfg)
    try:
        agent.start_and_wait_port("cargo-3-bms")
        sub.wait_for(lambda: len(device(sub, "cargo-3-bms")) >= 5, 30, "5 BMS readings")
        got = device(sub, "cargo-3-bms")
        assert [r["values"] for r in got[:5]] == jbd_expected(5)  # basic info and cells in one reading
        assert {"voltage", "state_of_charge", "cell_voltage_13", "cell_voltage_delta", "protection"} <= set(
            got[0]["values"])
        n = len(got)
        bms.unplug()
        agent.wait_log("cargo-3-bms: port lost")
        bms.plug()
        agent.wait_log("cargo-3-bms: opened", count=2)
        sub.wait_for(lambda: len(device(sub, "cargo-3-bms")) >= n + 3, 30, "readings after replug")
        assert agent.terminate() == 0
    finally:
        agent.close()
        bms.close()
    got = device(sub, "cargo-3-bms")
    expected = jbd_expected(2000)
    # a poll cut by the unplug may lack its cell reply: every reading is a poll's values, in order
    assert in_order_subsequence([r["values"] for r in got if "cell_voltage_1" in r["values"]], expected)
    assert [r["seq"] for r in got] == sorted({r["seq"] for r in got})
    written = bytes(bms.written)
    pair = BASIC_INFO_REQUEST + CELL_VOLTAGES_REQUEST
    assert written.startswith(pair) and written.replace(BASIC_INFO_REQUEST, b"").replace(
        CELL_VOLTAGES_REQUEST, b"") == b""  # nothing but the two read requests
