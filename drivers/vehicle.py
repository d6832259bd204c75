"""The vehicle profile: one simulated EV seen at once by its GNSS receiver, VESC, JBD BMS and CAN bus.

`sim` devices that name the same `vehicle` share one ride (drivers/can/simulator.py `Ride`: a 13S
20 Ah pack, a motor, a town cycle of accelerate / cruise / regenerative braking / stop), stepped
on the loop clock: the GNSS speed is the ride's speed and its position moves along the route by
the distance driven; the VESC's eRPM gives that same speed through its geometry and its input
current is the pack current; the BMS's current is that current (negative = discharging) and its
remaining capacity falls by exactly its integral; the CAN bus carries the same state. Each
family's wire bytes come from its own encoder and are read back by its own decoder; the `sim` driver
runs each family's real driver on them (`responder`: the VESC and the BMS answer the polling driver's
requests from the ride; the GNSS and the bus talk, `source`).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator
from functools import cache
from typing import TYPE_CHECKING, Any

from drivers.can.protocol import SlcanBusProtocol, lines_of
from drivers.can.simulator import CAPACITY_AH, TICK, VEHICLE_DBC, Ride, RideState, snapshot
from drivers.family import Decoder, PerPoll, Responder

if TYPE_CHECKING:
    from drivers.jbd_bms.simulator import Pack

FAMILIES = ("nmea", "vesc", "jbd_bms", "can")
# Device keys under which a family's real driver reads the ride (beyond its DriverEntry.sim_device).
DEVICE_OPTIONS: dict[str, dict[str, Any]] = {"can": {"rename": {"VehicleSpeed": "speed"}}}


class SharedRide:
    """One vehicle's ride, advanced to the clock's time whenever a device samples it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.ride = Ride()
        self.t0 = clock()
        self.t = 0.0
        self.start_odometer = self.ride.odometer
        # what the motor controller integrates (it booted with the ride)
        self.ah = self.ah_charged = self.wh = self.wh_charged = 0.0
        self.tacho = self.tacho_abs = 0.0

    def now(self) -> RideState:
        target = self.clock() - self.t0
        while self.t + TICK <= target + 1e-9:
            self.ride.step(TICK)
            self.t += TICK
            s = self.ride.state()
            hours = TICK / 3600
            if s.pack_current >= 0:
                self.ah += s.pack_current * hours
                self.wh += s.pack_current * s.pack_voltage * hours
            else:
                self.ah_charged -= s.pack_current * hours
                self.wh_charged -= s.pack_current * s.pack_voltage * hours
            steps = erpm(s.speed) / 60 * TICK * 6  # 6 tachometer steps per electrical turn
            self.tacho += steps
            self.tacho_abs += abs(steps)
        return self.ride.state()

    @property
    def distance(self) -> float:
        return self.ride.odometer - self.start_odometer


_RIDES: dict[str, SharedRide] = {}


def shared_ride(vehicle: str) -> SharedRide:
    """The ride of the vehicle named `vehicle` (started by the first device that asks)."""
    if vehicle not in _RIDES:
        _RIDES[vehicle] = SharedRide()
    return _RIDES[vehicle]


@cache
def _erpm_per_mps() -> float:
    from drivers.vesc.simulator import GEOMETRY as G

    return 60 / (math.pi * G.wheel_diameter) * G.gear_ratio * G.motor_poles / 2


def erpm(speed: float) -> int:
    """The VESC's electrical RPM at `speed` m/s with the simulator's geometry."""
    return round(speed * _erpm_per_mps())


def route_point(distance: float) -> tuple[float, float, float]:
    """(latitude, longitude, course) `distance` metres along the GNSS simulator's route loop."""
    from drivers.nmea.simulator import ROUTE

    legs = []
    for (la1, lo1), (la2, lo2) in itertools.pairwise(ROUTE):
        dy = (la2 - la1) * 111_320.0
        dx = (lo2 - lo1) * 111_320.0 * math.cos(math.radians(la1))
        legs.append((la1, lo1, la2, lo2, math.hypot(dx, dy) or 1.0, (math.degrees(math.atan2(dx, dy)) + 360) % 360))
    d = distance % sum(leg[4] for leg in legs)
    for la1, lo1, la2, lo2, length, course in legs:
        if d <= length:
            f = d / length
            return la1 + (la2 - la1) * f, lo1 + (lo2 - lo1) * f, round(course, 1)
        d -= length
    la, lo = ROUTE[-1]
    return la, lo, round(legs[-1][5], 1)


def _gnss(ride: SharedRide) -> Iterator[bytes]:
    from drivers.nmea.protocol import KNOT
    from drivers.nmea.simulator import Fix, epoch_bytes

    n = 0
    while True:
        s = ride.now()
        lat, lon, course = route_point(ride.distance)
        speed = round(round(s.speed / KNOT, 3) * KNOT, 4)
        yield epoch_bytes(Fix(math.floor(time.time()), lat, lon, round(12.0 + 3 * math.sin(n / 20), 1), speed,
                              course, 9, 0.9))
        n += 1


def _vesc_replies(ride: SharedRide) -> Iterator[bytes]:
    from drivers.vesc.protocol import encode_values

    while True:
        s = ride.now()
        e = erpm(s.speed)
        duty = max(-1.0, min(1.0, e / (s.pack_voltage * 190)))
        yield encode_values({
            "temperature_fet": round(s.inverter_temp, 1), "temperature_motor": round(s.motor_temp, 1),
            "motor_current": round(s.motor_current, 2), "input_current": round(s.pack_current, 2),
            "duty": round(duty, 3), "erpm": e, "input_voltage": round(s.pack_voltage, 1),
            "amp_hours": round(ride.ah, 4), "amp_hours_charged": round(ride.ah_charged, 4),
            "watt_hours": round(ride.wh, 4), "watt_hours_charged": round(ride.wh_charged, 4),
            "tachometer": round(ride.tacho), "tachometer_abs": round(ride.tacho_abs), "fault": "NONE",
        })


def _vesc(ride: SharedRide) -> Iterator[bytes]:
    from drivers.vesc.protocol import GET_VALUES_REQUEST

    return (GET_VALUES_REQUEST + reply for reply in _vesc_replies(ride))


def _ride_pack(ride: SharedRide) -> Pack:
    """The BMS's pack on the ride: its charge is the ride's, its current the ride's pack current."""
    from drivers.jbd_bms.simulator import Pack

    class RidePack(Pack):
        def step(self, current: float | None = None) -> tuple[bytes, bytes]:
            s = ride.now()
            self.remaining = s.soc / 100 * CAPACITY_AH
            return super().step(current=-s.pack_current)  # the BMS counts discharge negative

    return RidePack()


def _bms(ride: SharedRide) -> Iterator[bytes]:
    from drivers.jbd_bms.protocol import BASIC_INFO_REQUEST, CELL_VOLTAGES_REQUEST

    pack = _ride_pack(ride)
    while True:
        basic, cells = pack.step()
        yield BASIC_INFO_REQUEST + basic + CELL_VOLTAGES_REQUEST + cells


def responder(family: str, vehicle: str, ride: SharedRide | None = None) -> Responder | None:
    """The vehicle's device of `family` answering its polling driver from the shared ride (None: it talks)."""
    r = ride or shared_ride(vehicle)
    if family == "vesc":
        from drivers.vesc.simulator import VescResponder

        return VescResponder(reply_frames=_vesc_replies(r))
    if family == "jbd_bms":
        from drivers.jbd_bms.simulator import JbdResponder

        return JbdResponder(pack=_ride_pack(r))
    return None


def _bus(ride: SharedRide) -> Iterator[bytes]:
    while True:
        yield lines_of(snapshot(ride.now()))


def source(family: str, vehicle: str, ride: SharedRide | None = None) -> tuple[Iterator[Any], Decoder]:
    """(wire chunks, a fresh decoder) of `family` on the vehicle's shared ride; one sample per chunk."""
    r = ride or shared_ride(vehicle)
    if family == "nmea":
        from drivers.nmea.protocol import NmeaProtocol

        return _gnss(r), NmeaProtocol()
    if family == "vesc":
        from drivers.vesc.protocol import VescProtocol
        from drivers.vesc.simulator import GEOMETRY

        return _vesc(r), VescProtocol(GEOMETRY)
    if family == "jbd_bms":
        from drivers.jbd_bms.protocol import JbdProtocol

        return _bms(r), PerPoll(JbdProtocol())
    if family == "can":
        return _bus(r), SlcanBusProtocol(VEHICLE_DBC, DEVICE_OPTIONS["can"])
    raise ValueError(f"family {family!r} has no vehicle profile (only {', '.join(FAMILIES)})")
