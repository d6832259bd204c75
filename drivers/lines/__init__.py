"""Generic line protocol: JSON lines, CSV and key=value (serial now, BLE NUS too)."""

from drivers.family import DriverEntry, DriverFamily

# `probe serial` tries the line formats itself, after every checksummed protocol (drivers/probe.py).
FAMILY = DriverFamily(
    name="lines",
    title="custom boards: JSON lines / CSV / key=value, field map in config",
    drivers=(DriverEntry("lines", "drivers.lines.driver:LinesDriver", simulator="drivers.lines.simulator:simulation",
                         sim_device="drivers.lines.simulator:DEVICE_OPTIONS"),),
)
