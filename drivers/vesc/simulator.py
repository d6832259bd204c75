"""VESC simulator: a controller answering COMM_GET_VALUES polls with a ride profile, as real wire bytes.

One ride every 60 s: accelerate (0-10 s), cruise (10-35 s), brake with regeneration (35-42 s),
stand still (42-60 s) with an over-temperature fault at 50-52 s. Amp hours, watt hours and
the tachometer integrate what the motor did; the pack voltage sags under load. The geometry
is a 10-inch scooter hub motor (`GEOMETRY`): cruise is about 25 km/h.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from drivers.family import SimParams, Simulation
from drivers.vesc.protocol import GET_VALUES_REQUEST, Geometry, Values, VescProtocol, encode_values

GEOMETRY = Geometry(motor_poles=30, gear_ratio=1.0, wheel_diameter=0.254)
# The simulated scooter as a `vesc` device reads it (speed and distance from its geometry).
SIM_DEVICE = {"motor_poles": GEOMETRY.motor_poles, "gear_ratio": GEOMETRY.gear_ratio,
              "wheel_diameter": GEOMETRY.wheel_diameter}
CRUISE_ERPM = 7800
RIDE = 60  # s


class Ride:
    """The controller's state, stepped once per poll (`dt` seconds apart)."""

    def __init__(self, dt: float = 1.0, t0: float = 0.0) -> None:
        self.dt = dt
        self.t = t0
        self.ah = self.ah_charged = self.wh = self.wh_charged = 0.0
        self.tacho = 0.0
        self.tacho_abs = 0.0

    def phase(self) -> str:
        s = self.t % RIDE
        if s < 10:
            return "accelerate"
        if s < 35:
            return "cruise"
        if s < 42:
            return "brake"
        return "fault" if 50 <= s < 52 else "stand"

    def step(self) -> Values:
        """The values the controller reports now, then advance by `dt`."""
        s, phase = self.t % RIDE, self.phase()
        if phase == "accelerate":
            erpm, i_motor = CRUISE_ERPM * s / 10, 30.0
        elif phase == "cruise":
            erpm, i_motor = CRUISE_ERPM + 150 * math.sin(s), 9.0 + 2 * math.sin(s / 3)
        elif phase == "brake":
            erpm, i_motor = CRUISE_ERPM * (42 - s) / 7, -18.0
        else:
            erpm, i_motor = 0.0, 0.0
        volts = 50.4 - 0.004 * self.ah * 100 - 0.05 * i_motor
        duty = max(-1.0, min(1.0, erpm / (volts * 190)))
        i_in = i_motor * abs(duty)
        fet = 32.0 + abs(i_motor) / 2 + (50.0 if phase == "fault" else 0.0)
        values: Values = {
            "temperature_fet": round(fet, 1), "temperature_motor": round(30.0 + abs(i_motor) / 3, 1),
            "motor_current": round(i_motor, 2), "input_current": round(i_in, 2), "duty": round(duty, 3),
            "erpm": round(erpm), "input_voltage": round(volts, 1),
            "amp_hours": round(self.ah, 4), "amp_hours_charged": round(self.ah_charged, 4),
            "watt_hours": round(self.wh, 4), "watt_hours_charged": round(self.wh_charged, 4),
            "tachometer": round(self.tacho), "tachometer_abs": round(self.tacho_abs),
            "fault": "OVER_TEMP_FET" if phase == "fault" else "NONE",
        }
        hours = self.dt / 3600
        if i_in >= 0:
            self.ah += i_in * hours
            self.wh += i_in * volts * hours
        else:
            self.ah_charged -= i_in * hours
            self.wh_charged -= i_in * volts * hours
        steps = erpm / 60 * self.dt * 6  # 6 tachometer steps per electrical turn
        self.tacho += steps
        self.tacho_abs += abs(steps)
        self.t += self.dt
        return values


def replies(dt: float = 1.0) -> Iterator[bytes]:
    """Endless GET_VALUES reply frames, one per poll."""
    ride = Ride(dt)
    while True:
        yield encode_values(ride.step())


def exchange_bytes(dt: float = 1.0) -> Iterator[bytes]:
    """Endless (request + reply) as they pass on the line, one poll each."""
    return (GET_VALUES_REQUEST + r for r in replies(dt))


class VescResponder:
    """The controller's UART: feed what the master wrote, get the reply bytes (one per GET_VALUES request)."""

    def __init__(self, dt: float = 1.0, reply_frames: Iterator[bytes] | None = None) -> None:
        self._requests = VescProtocol()
        self._replies = reply_frames or replies(dt)
        self.polls = 0

    def answer(self, data: bytes) -> bytes:
        before = self._requests.requests
        self._requests.feed(data)
        n = self._requests.requests - before
        self.polls += n
        return b"".join(next(self._replies) for _ in range(n))


def simulation(p: SimParams) -> Simulation:
    """The `sim` driver's source: one poll's request and reply per chunk, decoded with the ride's geometry."""
    return exchange_bytes(), VescProtocol(GEOMETRY)
