"""NMEA 0183 GNSS receivers."""
