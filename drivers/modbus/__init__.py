"""Modbus RTU master with a register map in config, and device presets (Senseair S8, SCD30)."""

from drivers.family import DriverEntry, DriverFamily, Recogniser

FAMILY = DriverFamily(
    name="modbus",
    title="Modbus RTU slaves (register map in config) and presets",
    drivers=(
        # the simulated slave is a Senseair S8 for both
        DriverEntry("modbus", "drivers.modbus.driver:ModbusDriver", simulator="drivers.modbus.simulator:simulation",
                    sim_device="drivers.modbus.simulator:S8_AS_MODBUS",
                    responder="drivers.modbus.simulator:S8Responder"),
        DriverEntry("senseair_s8", "drivers.modbus.driver:SenseairS8Driver", quantities=("co2",),
                    simulator="drivers.modbus.simulator:simulation", responder="drivers.modbus.simulator:S8Responder"),
    ),
    probe=(Recogniser("modbus", "modbus", "Modbus RTU (requests/replies on the bus)",
                      "drivers.modbus.protocol:RtuSniffer", refine="drivers.modbus.protocol:probe_refine"),),
)
