"""The driver registry, filled from the entry-point group `edge_agent.drivers`.

The project's own families are entry points of the `edge-agent` distribution (pyproject.toml);
a third party declares its `DriverFamily` the same way in its own package. A plugin that fails to
load, is not a `DriverFamily`, or claims a driver name already taken is left out and recorded in
`problems` (with the plugin's name and distribution): the built-in families always load, and a
device naming such a driver gets a config error that names the plugin.
"""

from __future__ import annotations

import importlib
import logging
import re
import tomllib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.family import BlePattern, DriverEntry, DriverFamily, resolve
from edge_common import installed

log = logging.getLogger(__name__)

GROUP = "edge_agent.drivers"
DISTRIBUTION = "edge-agent"


@dataclass(frozen=True, slots=True)
class Registered:
    """One driver name and where it comes from."""

    entry: DriverEntry
    family: DriverFamily
    plugin: str  # the entry point's name
    dist: str  # the distribution that declares it ("edge-agent" for the built-ins)

    @property
    def builtin(self) -> bool:
        return self.dist == DISTRIBUTION


@dataclass(slots=True)
class Registry:
    """Families by name, drivers by name, and the plugins that could not be taken."""

    families: dict[str, DriverFamily] = field(default_factory=dict)
    drivers: dict[str, Registered] = field(default_factory=dict)
    # plugin (entry point) name -> why it was left out, naming the plugin and its distribution
    problems: dict[str, str] = field(default_factory=dict)
    # driver names some left-out plugin declared (so a device using one is told why)
    withheld: dict[str, str] = field(default_factory=dict)
    version: int = 0  # bumped by every change (views that cache compare it)

    def add(self, family: DriverFamily, plugin: str | None = None, dist: str = DISTRIBUTION) -> None:
        """Register a family; ValueError (nothing registered) if a name is taken."""
        plugin = plugin or family.name
        if family.name in self.families:
            raise ValueError(f"family {family.name!r} is already registered")
        for e in family.drivers:
            if e.name in self.drivers:
                other = self.drivers[e.name]
                raise ValueError(f"driver {e.name!r} is already provided by {_origin(other.plugin, other.dist)}")
        self.families[family.name] = family
        for e in family.drivers:
            self.drivers[e.name] = Registered(e, family, plugin, dist)
        self.version += 1

    def remove(self, family_name: str) -> None:
        """Unregister a family (tests)."""
        fam = self.families.pop(family_name)
        for e in fam.drivers:
            self.drivers.pop(e.name, None)
        self.version += 1

    def load(self, plugin: str, dist: str, load: Callable[[], object]) -> None:
        """Register what an entry point names; a failure becomes a problem naming the plugin."""
        fam: object = None
        try:
            fam = load()
            if not isinstance(fam, DriverFamily):
                raise TypeError(f"it names a {type(fam).__name__}, not a drivers.family.DriverFamily")
            self.add(fam, plugin, dist)
        except Exception as e:  # a third party's import may raise anything; it must not stop the others
            why = str(e) if isinstance(e, ValueError | TypeError) else f"{type(e).__name__}: {e}"
            self.problems[plugin] = f"{_origin(plugin, dist)} is not used: {why}"
            for d in fam.drivers if isinstance(fam, DriverFamily) else ():
                self.withheld.setdefault(d.name, plugin)
            self.withheld.setdefault(plugin, plugin)
            log.warning("%s", self.problems[plugin])

    # -- views --------------------------------------------------------------------------
    def names(self) -> frozenset[str]:
        """Every usable driver name."""
        return frozenset(self.drivers)

    def builtin_names(self) -> frozenset[str]:
        """The driver names of the project's own families (the driver table of DESIGN.md)."""
        return frozenset(n for n, r in self.drivers.items() if r.builtin)

    def family_of(self, driver: str) -> DriverFamily:
        return self.drivers[driver].family

    def why_missing(self, driver: str) -> str | None:
        """Why `driver` is not available when a left-out plugin declared it, else None."""
        plugin = self.withheld.get(driver)
        return self.problems.get(plugin) if plugin and driver not in self.drivers else None

    def simulated(self) -> list[str]:
        """Driver names the `sim` driver can simulate, in registration order."""
        return [n for n, r in self.drivers.items() if r.entry.simulator]

    def advert_families(self) -> Iterator[DriverFamily]:
        return (f for f in self.families.values() if f.advert_decoder)

    def ble_patterns(self, family: str) -> tuple[BlePattern, ...]:
        fam = self.families.get(family)
        return fam.ble_patterns if fam else ()

    def advert_decoder(self, family: str) -> Any:
        ref = self.families[family].advert_decoder
        if ref is None:
            raise KeyError(family)
        return resolve(ref)


def _origin(plugin: str, dist: str) -> str:
    return "built-in family " + repr(plugin) if dist == DISTRIBUTION else f"driver plugin {plugin!r} (from {dist})"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True, slots=True)
class EntryPoint:
    """An entry point `module:attr` of GROUP (read from the cache in edge_common/installed.py, not
    importlib.metadata, whose modules the resident agent would keep: ~1.3 MiB)."""

    name: str
    value: str

    def load(self) -> object:
        """The object named, as importlib.metadata.EntryPoint.load does (extras ignored)."""
        module, _, attr = self.value.partition("[")[0].partition(":")
        obj: object = importlib.import_module(module.strip())
        for part in filter(None, attr.strip().split(".")):
            obj = getattr(obj, part)
        return obj


def _source_tree_entry_points() -> list[EntryPoint] | None:
    """The own entry points from pyproject.toml when running from a checkout (editable install).

    An editable install's metadata is a snapshot of the pyproject.toml it was installed from; the
    checkout is authoritative, so a family added by a pull is found without reinstalling.
    """
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return None
    project = data.get("project", {})
    if _canonical(str(project.get("name", ""))) != DISTRIBUTION:
        return None
    table = project.get("entry-points", {}).get(GROUP, {})
    return [EntryPoint(name, value) for name, value in table.items()]


def _discover() -> Iterable[tuple[str, str, EntryPoint]]:
    own = _source_tree_entry_points()
    others: list[tuple[str, str, EntryPoint]] = []
    installed_own: list[EntryPoint] = []
    for name, value, dist_name in installed.entry_points(GROUP):
        ep, dist = EntryPoint(name, value), dist_name or "unknown distribution"
        if _canonical(dist) == DISTRIBUTION:
            installed_own.append(ep)
        else:
            others.append((ep.name, dist, ep))
    for ep in own if own is not None else installed_own:
        yield ep.name, DISTRIBUTION, ep
    yield from sorted(others, key=lambda t: (t[0], t[1]))


def build() -> Registry:
    """A registry of every family the entry points declare (built-ins first)."""
    reg = Registry()
    seen: set[str] = set()
    for name, dist, ep in _discover():
        if name in seen and dist == DISTRIBUTION:
            continue  # the same built-in listed by the checkout and by stale metadata
        seen.add(name)
        reg.load(name, dist, ep.load)
    return reg


_registry: Registry | None = None


def registry() -> Registry:
    """The process's registry (built on first use)."""
    global _registry
    if _registry is None:
        _registry = build()
    return _registry
