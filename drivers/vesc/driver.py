"""`vesc` driver: polls COMM_GET_VALUES from a VESC-based motor controller (UART or BLE NUS).

Serial: the controller's UART (COMM port, 115200 8N1 by default, 3.3 V levels). BLE:
``transport = "ble"`` and ``address``: a VESC BLE module or VESC Express bridging the same
packets over the Nordic UART Service. Speed and distance need `motor_poles` and
`wheel_diameter` (and `gear_ratio` when the motor drives the wheel through a reduction).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, Field, model_validator

from drivers.base import StreamProtocol
from drivers.polled import PolledDriver, PollOptions
from drivers.transport.gatt import NUS_RX, NUS_TX
from drivers.vesc.protocol import GET_VALUES_REQUEST, Geometry, VescProtocol

if TYPE_CHECKING:
    from typing import Self


class VescOptions(PollOptions):
    """Keys of a `vesc` device."""

    motor_poles: int | None = Field(default=None, ge=2, le=200, multiple_of=2)
    gear_ratio: float = Field(default=1.0, gt=0, le=1000)
    wheel_diameter: float | None = Field(default=None, gt=0, le=10, description="m")

    @model_validator(mode="after")
    def _geometry(self) -> Self:
        if (self.motor_poles is None) != (self.wheel_diameter is None):
            missing = "motor_poles" if self.motor_poles is None else "wheel_diameter"
            raise ValueError(f"speed and distance need both motor_poles and wheel_diameter ({missing} missing)")
        if "gear_ratio" in self.model_fields_set and self.motor_poles is None:
            raise ValueError("gear_ratio needs motor_poles and wheel_diameter")
        return self

    def geometry(self) -> Geometry | None:
        if self.motor_poles is None or self.wheel_diameter is None:
            return None
        return Geometry(self.motor_poles, self.gear_ratio, self.wheel_diameter)


class VescDriver(PolledDriver):
    name = "vesc"
    default_baud = 115200
    default_expected_interval = 10.0
    Options: ClassVar[type[BaseModel]] = VescOptions
    requests = (GET_VALUES_REQUEST,)
    ble_family = "vesc"  # its descriptor carries the NUS or-pattern
    ble_notify = NUS_TX
    ble_write = NUS_RX

    def make_protocol(self) -> StreamProtocol:
        return VescProtocol(self.options.geometry())
