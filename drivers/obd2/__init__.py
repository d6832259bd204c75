"""OBD-II: an ELM327 adapter polled for mode 01 PIDs (speed, rpm, coolant, module voltage, EV pack life)."""

from drivers.family import DriverEntry, DriverFamily

FAMILY = DriverFamily(
    name="obd2",
    title="OBD-II through an ELM327 adapter (mode 01 PIDs, read only)",
    drivers=(DriverEntry("obd2", "drivers.obd2.driver:Obd2Driver",
                         quantities=("speed", "rpm", "coolant_temperature", "module_voltage", "pack_remaining_life"),
                         simulator="drivers.obd2.simulator:simulation", responder="drivers.obd2.simulator:Elm327"),),
)
