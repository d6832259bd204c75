"""Device drivers: one package per device family, each transport + pure protocol + simulator.

Layout of a family package ``drivers/<family>/``:
  protocol.py   bytes -> frames -> values; pure and synchronous, no I/O (fuzzed in tests)
  driver.py     wires a transport (drivers/transport/) to the protocol; a ``Driver`` subclass
  simulator.py  produces real wire bytes (for tests, the demo and the ``sim`` driver)

A driver may only touch ``drivers/base.py`` (its contract with the core), ``drivers/transport``
and its own package. Register it in ``_REGISTRY`` below.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from drivers.base import Driver

# driver name -> "module:Class"; imported lazily so BLE libraries load only when used.
_REGISTRY: dict[str, str] = {
    "nmea": "drivers.nmea.driver:NmeaDriver",
    "pms5003": "drivers.pms5003.driver:Pms5003Driver",
    "sds011": "drivers.sds011.driver:Sds011Driver",
    "modbus": "drivers.modbus.driver:ModbusDriver",
    "senseair_s8": "drivers.modbus.driver:SenseairS8Driver",
    "lines": "drivers.lines.driver:LinesDriver",
    "ruuvi": "drivers.ble.adverts:RuuviDriver",
    "bthome": "drivers.ble.adverts:BthomeDriver",
    "xiaomi": "drivers.ble.adverts:XiaomiDriver",
    "aranet4": "drivers.ble.adverts:Aranet4Driver",
    "ble_nus": "drivers.ble.nus:BleNusDriver",
    "sim": "drivers.sim:SimDriver",
}

KNOWN_DRIVERS = frozenset(_REGISTRY)


def driver_class(name: str) -> type[Driver]:
    """The Driver class registered under `name` (ImportError if not implemented yet)."""
    module, _, attr = _REGISTRY[name].partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ModuleNotFoundError, AttributeError) as e:
        raise ImportError(f"not available in this build ({e})") from e
    return cls  # type: ignore[no-any-return]
