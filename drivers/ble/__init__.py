"""BLE drivers: shared scanner service (scanner.py), advert drivers (adverts.py), NUS (nus.py).

Pure advertisement decoders live in ``drivers.ble.decoders``. Importing this package must stay
cheap: bleak is imported only by the modules that use it.
"""
