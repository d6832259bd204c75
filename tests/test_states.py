"""Typed states: the enums the code sets are exactly the strings the wire contract and the CLI show."""

from __future__ import annotations

import json
from typing import get_args

from agent.contract import HealthDevice, HealthUplink
from agent.uplink import UplinkState, UplinkStats
from drivers.base import LinkState
from drivers.ble.scanner import ScannerState


def test_uplink_states_are_the_contracts() -> None:
    assert [s.value for s in UplinkState] == list(get_args(HealthUplink.model_fields["state"].annotation))
    assert UplinkStats().state is UplinkState.STARTING


def test_link_states_are_the_contracts() -> None:
    assert get_args(LinkState) == get_args(HealthDevice.model_fields["link"].annotation)


def test_states_keep_their_strings_on_the_wire_and_in_text() -> None:
    for state in (*UplinkState, *ScannerState):
        assert json.dumps({"state": state}) == json.dumps({"state": state.value})
        assert f"{state}" == str(state) == "%s" % state == state.value  # log lines use %s
        assert state == state.value
    assert ScannerState.WAITING_FOR_BLUETOOTHD == "waiting for bluetoothd"


def test_device_states_are_the_contracts_and_keep_their_strings() -> None:
    from agent.contract import DeviceEvent
    from agent.states import LINK_DISABLED, DeviceState

    assert set(get_args(DeviceEvent.model_fields["state"].annotation)) < set(DeviceState)
    assert [s.value for s in DeviceState] == ["starting", "online", "offline", "disabled"]
    assert LINK_DISABLED == "disabled" and LINK_DISABLED not in get_args(LinkState)
    assert json.dumps({DeviceState.DISABLED: DeviceState.OFFLINE}) == '{"disabled": "offline"}'
