"""A small EV's CAN bus (drivers/can/vehicle.dbc) as an slcan adapter (CANable-like) would send it.

`Ride` is the vehicle (a 13S pack, a hub motor, a ride profile: accelerate, cruise, regen-brake,
stop); `bus_frames` encodes its state with cantools at realistic rates (100 Hz motor, pack, pedals
and wheel speeds, 10 Hz temperatures and cells, 1 Hz odometer and an id not in the DBC: ~520
frames/s). `SlcanAdapter` answers the slcan commands on a pty's master side the way an adapter
does (`C`, `Sn`, `O`/`L`, `V`, `N`, `F`; BEL for what it refuses) and streams the bus once the
channel is open at the bus's bitrate.
"""

from __future__ import annotations

import math
import os
import select
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from drivers.can.protocol import SLCAN_BITRATES, SlcanBusProtocol, SlcanFrame, slcan_line

if TYPE_CHECKING:
    from cantools.database.can import Database, Message

    from drivers.family import SimParams, Simulation

VEHICLE_DBC = Path(__file__).with_name("vehicle.dbc")
TICK = 0.01  # s: the 100 Hz schedule of the fastest messages
UNKNOWN_ID = 0x5F0  # a vendor heartbeat the DBC does not describe (every real bus has some)
CAPACITY_AH = 20.0
CELLS = 13
MASS = 150.0  # kg, vehicle and rider
WHEEL_RADIUS = 0.25  # m
GEAR = 4.0  # motor turns per wheel turn
R_PACK = CELLS * 0.002  # ohm (2 mOhm a cell, as the BMS simulator's cells sag)
KT = 0.5  # Nm per A (motor torque constant at the wheel side of the gear)


def ocv(soc: float) -> float:
    """Open-circuit voltage of the 13S pack at `soc` percent (the cell curve of the JBD BMS simulator)."""
    x = max(0.0, min(100.0, soc)) / 100
    return CELLS * (3.3 + 0.9 * x - 0.15 * math.exp(-12 * x))


@dataclass(slots=True)
class RideState:
    """The vehicle at one instant."""

    t: float
    speed: float  # m/s
    accel: float  # m/s²
    pack_voltage: float
    pack_current: float  # A, positive = discharging
    soc: float  # %
    motor_current: float
    motor_torque: float
    motor_rpm: float
    throttle: float  # %
    brake: float  # %
    odometer: float  # m
    motor_temp: float
    inverter_temp: float
    cell_temp: float
    phase: str  # "stopped" | "accelerating" | "cruising" | "braking"


# (duration s, target speed m/s): a 65 s cycle through town
PROFILE = ((3.0, 0.0), (12.0, 7.0), (35.0, 7.0), (8.0, 0.0), (7.0, 0.0))


class Ride:
    """Deterministic ride: step(dt) advances the physics; state() is the current instant."""

    def __init__(self, soc: float = 85.0, temp: float = 22.0) -> None:
        self.t = 0.0
        self.speed = 0.0
        self.accel = 0.0
        self.soc = soc
        self.odometer = 1_234_500.0
        self.motor_temp = self.inverter_temp = self.cell_temp = temp
        self.pack_current = 0.5
        self.throttle = self.brake = 0.0
        self.phase = "stopped"

    def _target(self) -> tuple[float, str]:
        tc = self.t % sum(d for d, _ in PROFILE)
        start = 0.0
        prev = 0.0
        for dur, target in PROFILE:
            if tc < start + dur:
                frac = (tc - start) / dur
                v = prev + (target - prev) * frac
                phase = ("accelerating" if target > prev else "braking" if target < prev
                         else "cruising" if target > 0 else "stopped")
                return v, phase
            start += dur
            prev = target
        return 0.0, "stopped"

    def step(self, dt: float) -> None:
        _, self.phase = self._target()
        self.t += dt
        new_target, _ = self._target()
        self.accel = (new_target - self.speed) / dt if dt else 0.0
        self.accel = max(-2.0, min(2.0, self.accel))
        self.speed = max(0.0, self.speed + self.accel * dt)
        self.odometer += self.speed * dt
        force = MASS * self.accel + 0.5 * 1.2 * 0.6 * self.speed ** 2 + (0.015 * MASS * 9.81 if self.speed else 0)
        mech = force * self.speed
        elec = mech / 0.85 if mech > 0 else mech * 0.7  # regen recovers less than drive costs
        v = ocv(self.soc) - R_PACK * self.pack_current
        self.pack_current = elec / max(v, 1.0) + 0.5  # + the electronics' quiescent draw
        self.soc = max(0.0, min(100.0, self.soc - self.pack_current * dt / 3600 / CAPACITY_AH * 100))
        self.throttle = max(0.0, min(100.0, mech / 30)) if force > 0 else 0.0
        self.brake = max(0.0, min(100.0, -force / 3)) if force < 0 else 0.0
        heat = (self.pack_current ** 2) * 0.0005
        self.motor_temp += (heat * 4 - (self.motor_temp - 22.0) * 0.002) * dt
        self.inverter_temp += (heat * 2 - (self.inverter_temp - 22.0) * 0.003) * dt
        self.cell_temp += (heat - (self.cell_temp - 22.0) * 0.001) * dt

    def state(self) -> RideState:
        torque = (MASS * self.accel + 0.5 * 1.2 * 0.6 * self.speed ** 2) * WHEEL_RADIUS / GEAR
        rpm = self.speed / (2 * math.pi * WHEEL_RADIUS) * 60 * GEAR
        return RideState(
            t=self.t, speed=self.speed, accel=self.accel,
            pack_voltage=ocv(self.soc) - R_PACK * self.pack_current, pack_current=self.pack_current,
            soc=self.soc, motor_current=torque / KT, motor_torque=torque, motor_rpm=rpm,
            throttle=self.throttle, brake=self.brake, odometer=self.odometer, motor_temp=self.motor_temp,
            inverter_temp=self.inverter_temp, cell_temp=self.cell_temp, phase=self.phase,
        )


def _clip(v: float, lo: float, hi: float) -> float:
    return max(lo, min(hi, v))


def signals(s: RideState) -> dict[str, dict[str, float | str]]:
    """DBC message name -> signal values describing the ride state `s`."""
    kmh = s.speed * 3.6
    state = "DRIVE" if s.motor_current > 0.5 else "REGEN" if s.motor_current < -0.5 else "READY"
    angle = s.motor_rpm / 60 * 2 * math.pi * s.t * 7  # 7 pole pairs
    amp = _clip(abs(s.motor_current) * 1.2, 0, 590)
    cell = s.pack_voltage / CELLS * 1000
    return {
        "MCU_Motor": {"MotorSpeed": round(s.motor_rpm), "MotorTorque": _clip(s.motor_torque, -300, 300),
                      "MotorCurrent": _clip(s.motor_current, -400, 400), "VehicleSpeed": _clip(kmh, 0, 120)},
        "MCU_Temps": {"MotorTemp": round(s.motor_temp), "InverterTemp": round(s.inverter_temp),
                      "MCU_State": state, "FaultCode": 0},
        "MCU_Phase": {f"PhaseCurrent{p}": round(amp * math.sin(angle + k * 2 * math.pi / 3), 1)
                      for k, p in enumerate("UVW")},
        "BMS_Pack": {"PackVoltage": s.pack_voltage, "PackCurrent": _clip(s.pack_current, -300, 300),
                     "StateOfCharge": round(s.soc * 2) / 2,
                     "BMS_State": "DISCHARGING" if s.pack_current > 1 else "CHARGING" if s.pack_current < -1
                     else "IDLE"},
        "BMS_Cells": {"CellVoltageMin": round(cell - 8), "CellVoltageMax": round(cell + 6),
                      "CellTempMin": round(s.cell_temp - 1), "CellTempMax": round(s.cell_temp + 1)},
        "VCU_Pedals": {"Throttle": s.throttle, "Brake": s.brake, "Gear": "D" if s.phase != "stopped" else "N"},
        "ABS_WheelSpeeds": {f"WheelSpeed{w}": _clip(kmh * f, 0, 120)
                            for w, f in (("FL", 1.0), ("FR", 1.002), ("RL", 0.999), ("RR", 1.001))},
        "VCU_Odometer": {"Odometer": s.odometer / 1000},
    }


# message -> period in ticks of 10 ms
RATES = {"MCU_Motor": 1, "MCU_Phase": 1, "BMS_Pack": 1, "VCU_Pedals": 1, "ABS_WheelSpeeds": 1,
         "MCU_Temps": 10, "BMS_Cells": 10, "VCU_Odometer": 100}


def load_vehicle_dbc() -> Database:
    from drivers.can.protocol import load_dbc

    return load_dbc(VEHICLE_DBC)


def bus_frames(ride: Ride | None = None, db: Database | None = None,
               foreign: bool = True) -> Iterator[tuple[float, list[SlcanFrame]]]:
    """(bus time s, the frames of that 10 ms tick), endlessly, as the vehicle's ECUs send them.

    `foreign`: also the 1 Hz heartbeat of an id the DBC does not describe (as real buses have).
    """
    ride = ride or Ride()
    db = db or load_vehicle_dbc()
    msgs = {name: db.get_message_by_name(name) for name in RATES}
    n = 0
    while True:
        ride.step(TICK)
        due = [name for name, every in RATES.items() if n % every == 0]
        frames = snapshot(ride.state(), db, due, msgs)
        if foreign and n % 100 == 50:
            frames.append(SlcanFrame(UNKNOWN_ID, bytes([n // 100 & 0xFF, 0, 0, 0]), dlc=4))
        yield n * TICK, frames
        n += 1


def snapshot(state: RideState, db: Database | None = None, names: list[str] | None = None,
             msgs: dict[str, Message] | None = None) -> list[SlcanFrame]:
    """One frame of each of `names` (default: every message) carrying the ride state `state`."""
    db = db or load_vehicle_dbc()
    vals = signals(state)
    out = []
    for name in names if names is not None else list(RATES):
        m = msgs[name] if msgs is not None else db.get_message_by_name(name)
        out.append(SlcanFrame(m.frame_id, bytes(m.encode(vals[name], scaling=True, strict=False)), dlc=m.length))
    return out


def bus_seconds(ride: Ride | None = None, foreign: bool = True) -> Iterator[bytes]:
    """The bus as slcan bytes, one second (100 ticks) per chunk."""
    from drivers.can.protocol import lines_of

    ticks = bus_frames(ride, foreign=foreign)
    while True:
        yield b"".join(lines_of(next(ticks)[1]) for _ in range(100))


# The keys under which the real driver reads the simulator (conformance tests, `sim`).
SIM_DEVICE = {"dbc": str(VEHICLE_DBC), "open_delay": 0}


def simulation(p: SimParams) -> Simulation:
    """The `sim` driver's source: one second of the demo EV's bus per chunk, decoded with its DBC at 1 s."""
    return bus_seconds(foreign=False), SlcanBusProtocol(VEHICLE_DBC)


class SlcanAdapter:
    """An slcan USB-CAN adapter on the master side of a pty, attached to a simulated bus.

    Commands are answered as a CANable/Lawicel adapter does: CR for OK, BEL for a refusal (unknown
    command, `O` without a bitrate, `Sn` while open). Frames flow only while the channel is open at
    the bus's bitrate; `transmitted` counts frames the host asked it to send (the agent must send
    none). `bus_off()` silences the bus until the host re-opens the channel, as a controller without
    automatic bus-off recovery does.
    """

    def __init__(self, master_fd: int, bitrate: int = 500000, frames: Iterator[tuple[float, list[SlcanFrame]]]
                 | None = None, realtime: bool = True, listen_only_command: bool = True) -> None:
        self.fd = master_fd
        self.bus_bitrate = bitrate
        self.frames = frames if frames is not None else bus_frames()
        self.realtime = realtime
        self.listen_only_command = listen_only_command  # False: a firmware without `L` (stock CANable 2.0)
        self.bitrate: int | None = None
        self.open_mode: str | None = None  # "O" normal or "L" listen-only
        self.commands: list[str] = []
        self.transmitted = 0
        self.sent_frames = 0
        self.off = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slcan-sim", daemon=True)
        self._rx = bytearray()

    def start(self) -> SlcanAdapter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def bus_off(self) -> None:
        self.off = True

    def _answer(self, cmd: str) -> bytes:
        self.commands.append(cmd)
        op = cmd[:1]
        if op == "C":
            ok = self.open_mode is not None
            self.open_mode = None
            return b"\r" if ok else b"\a"
        if op == "S" and len(cmd) == 2 and cmd[1].isdigit() and int(cmd[1]) < len(SLCAN_BITRATES):
            if self.open_mode is not None:
                return b"\a"
            self.bitrate = SLCAN_BITRATES[int(cmd[1])]  # the table is in Sn order
            return b"\r"
        if op in ("O", "L") and len(cmd) == 1:
            if self.open_mode is not None or self.bitrate is None or (op == "L" and not self.listen_only_command):
                return b"\a"
            self.open_mode = op
            self.off = False  # re-initialising the controller ends bus-off
            return b"\r"
        if op == "V":
            return b"V1013\r"
        if op == "N":
            return b"NSIM1\r"
        if op == "F":
            return b"F00\r" if self.open_mode else b"\a"
        if op in ("t", "T", "r", "R", "d", "D", "b", "B"):
            if self.open_mode != "O":
                return b"\a"
            self.transmitted += 1
            return b"Z\r" if op.isupper() else b"z\r"
        return b"\a"  # unknown (python-can's empty data-bitrate command among them)

    def _streaming(self) -> bool:
        return self.open_mode is not None and self.bitrate == self.bus_bitrate and not self.off

    def _run(self) -> None:
        t0 = time.monotonic()
        bus_t0: float | None = None
        bus_off: float | None = None  # bus time of the first tick since the channel opened
        pending: tuple[float, list[SlcanFrame]] | None = None
        try:
            while not self._stop.is_set():
                r, _, _ = select.select([self.fd], [], [], TICK / 2)
                if r:
                    data = os.read(self.fd, 4096)
                    if not data:
                        return
                    self._rx += data
                    while (i := self._rx.find(b"\r")) >= 0:
                        cmd = self._rx[:i].decode("ascii", "replace")
                        del self._rx[:i + 1]
                        os.write(self.fd, self._answer(cmd))
                if not self._streaming():
                    bus_t0 = None
                    continue
                elapsed = time.monotonic() - t0
                if bus_t0 is None:
                    bus_t0, bus_off = elapsed, None
                out = bytearray()
                while len(out) < 8192:
                    if pending is None:
                        pending = next(self.frames)
                    bt, frames = pending
                    if bus_off is None:
                        bus_off = bt
                    if self.realtime and bt - bus_off > elapsed - bus_t0:
                        break
                    out += b"".join(slcan_line(f) for f in frames)
                    self.sent_frames += len(frames)
                    pending = None
                if out:
                    os.write(self.fd, out)
        except OSError:
            return  # unplugged: the pty is gone
