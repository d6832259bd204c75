"""NMEA 0183 GNSS receivers."""

from drivers.family import DriverEntry, DriverFamily, Recogniser

FAMILY = DriverFamily(
    name="nmea",
    title="GNSS receivers, NMEA 0183",
    drivers=(DriverEntry(
        "nmea", "drivers.nmea.driver:NmeaDriver",
        quantities=("latitude", "longitude", "altitude", "speed", "course", "satellites", "hdop", "fix"),
        simulator="drivers.nmea.simulator:simulation",
    ),),
    probe=(Recogniser("nmea", "nmea", "NMEA 0183 (GNSS receiver)", "drivers.nmea.protocol:NmeaProtocol"),),
)
