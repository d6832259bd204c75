"""BLE drivers: passive advertisement decoders, the shared scanner and GATT streams."""
