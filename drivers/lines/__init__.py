"""Generic line protocol: JSON lines, CSV and key=value (serial now, BLE NUS too)."""
