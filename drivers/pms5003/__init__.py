"""Plantower PMS5003/PMS7003 particulate sensors (32-byte frames)."""

from drivers.family import DriverEntry, DriverFamily, Recogniser

FAMILY = DriverFamily(
    name="pms5003",
    title="Plantower PMS5003/7003 32-byte frames",
    drivers=(DriverEntry("pms5003", "drivers.pms5003.driver:Pms5003Driver", quantities=("pm1_0", "pm2_5", "pm10"),
                         simulator="drivers.pms5003.simulator:simulation"),),
    probe=(Recogniser("pms5003", "pms5003", "Plantower PMS5003/7003 (32-byte frames)",
                      "drivers.pms5003.protocol:Pms5003Protocol"),),
)
