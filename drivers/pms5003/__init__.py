"""Plantower PMS5003/PMS7003 particulate sensors (32-byte frames)."""
