"""Nova Fitness SDS011 particulate sensor (10-byte frames)."""

from drivers.family import DriverEntry, DriverFamily, Recogniser

FAMILY = DriverFamily(
    name="sds011",
    title="Nova SDS011 10-byte frames",
    drivers=(DriverEntry("sds011", "drivers.sds011.driver:Sds011Driver", quantities=("pm2_5", "pm10"),
                         simulator="drivers.sds011.simulator:simulation"),),
    probe=(Recogniser("sds011", "sds011", "Nova SDS011 (10-byte frames)", "drivers.sds011.protocol:Sds011Protocol"),),
)
