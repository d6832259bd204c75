"""Device drivers: one package per device family, each transport + pure protocol + simulator.

Layout of a family package ``drivers/<family>/``:
  __init__.py   FAMILY = DriverFamily(...): names, classes, simulator, probe recogniser (plain data)
  protocol.py   bytes -> frames -> values; pure and synchronous, no I/O (fuzzed in tests)
  driver.py     wires a transport (drivers/transport/) to the protocol; a ``Driver`` subclass
  simulator.py  produces real wire bytes (for tests, the demo and the ``sim`` driver)

A driver may only touch ``drivers/base.py`` (its contract with the core), ``drivers/transport``,
``edge_common`` and its own package. The family is registered by one entry point in the group
``edge_agent.drivers`` (pyproject.toml); see docs/ARCHITECTURE.md, "Adding a driver family".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from drivers.family import DriverEntry, DriverFamily
from drivers.registry import registry

if TYPE_CHECKING:
    from drivers.base import Driver

# The `sim` driver is a family of its own (entry point `sim`): any registered simulator, no hardware.
SIM = DriverFamily(
    name="sim",
    title="simulated device of any family above, emitting real wire bytes",
    drivers=(DriverEntry("sim", "drivers.sim:SimDriver"),),
)


def __getattr__(name: str) -> frozenset[str]:
    if name == "KNOWN_DRIVERS":  # the project's own driver names (DESIGN.md's driver table); plugins aside
        return registry().builtin_names()
    raise AttributeError(f"module 'drivers' has no attribute {name!r}")


def driver_class(name: str) -> type[Driver]:
    """The Driver class registered under `name` (KeyError if unknown, ImportError if it cannot load)."""
    return registry().family_of(name).driver_class(name)
