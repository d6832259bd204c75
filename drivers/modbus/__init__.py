"""Modbus RTU master with a register map in config, and device presets (Senseair S8, SCD30)."""
