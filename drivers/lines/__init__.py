"""Generic line protocol: JSON lines, CSV and key=value (serial now, BLE NUS too)."""

from drivers.family import DriverEntry, DriverFamily, Recogniser

_R = "drivers.lines.recognise:"

FAMILY = DriverFamily(
    name="lines",
    title="custom boards: JSON lines / CSV / key=value, field map in config",
    drivers=(DriverEntry("lines", "drivers.lines.driver:LinesDriver", simulator="drivers.lines.simulator:simulation",
                         sim_device="drivers.lines.simulator:DEVICE_OPTIONS"),),
    # Almost any text is "lines": `probe serial` tries these only when no checksummed protocol matched.
    probe=(
        Recogniser("json_lines", "lines", "JSON lines", _R + "json_lines", fallback=True),
        Recogniser("kv_lines", "lines", "key=value lines", _R + "kv_lines", fallback=True, sim_format="kv"),
        Recogniser("csv_lines", "lines", "CSV lines", _R + "csv_lines", fallback=True, sim_format="csv",
                   retry=_R + "csv_without_header"),
    ),
)
