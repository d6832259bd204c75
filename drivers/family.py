"""`DriverFamily`: the one descriptor a family package declares (entry-point group `edge_agent.drivers`).

A descriptor is plain data; every code reference in it is a ``"module:attr"`` string imported on
first use, so reading the registry never imports a driver, bleak or a decoder.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from edge_common.model import Value

if TYPE_CHECKING:
    from drivers.base import Driver, StreamProtocol

Ref = str  # "package.module:attr" (or "package.module" for a module)
# BlueZ advertisement-monitor or-pattern: (start, AD type, content).
BlePattern = tuple[int, int, bytes]


def resolve(ref: Ref) -> Any:
    """The object a `Ref` names (imports its module); ImportError naming the ref when it is absent."""
    module, _, attr = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split(".") if attr else ():
            obj = getattr(obj, part)
    except Exception as e:  # a plugin's module may raise anything on import
        raise ImportError(f"{ref}: {type(e).__name__}: {e}") from e
    return obj


class Decoder(Protocol):
    """What the `sim` driver reads a simulation with: a `StreamProtocol` or anything shaped like one."""

    errors: Counter[str]
    frames: int

    def feed(self, data: Any) -> list[dict[str, Value]]: ...

    def flush(self) -> list[dict[str, Value]]: ...


@dataclass(frozen=True, slots=True)
class SimParams:
    """What a simulator may be told by the `sim` device's keys."""

    format: str = "json"  # line formats (lines, ble_nus)
    address: str = "C7:F5:2A:A1:B2:C3"  # BLE families: the simulated tag
    start: float | None = None  # first sample's time (None: now)


class Responder(Protocol):
    """A simulated device that is asked: fed what the driver wrote (any split), returns its reply bytes."""

    def answer(self, data: bytes) -> bytes: ...


class RequestResponder(ABC):
    """A Responder that takes the master's requests one by one off the bytes written so far."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def answer(self, data: bytes) -> bytes:
        self._buf += data
        out = b""
        while (reply := self.take(self._buf)) is not None:
            out += reply
        return out

    @abstractmethod
    def take(self, buf: bytearray) -> bytes | None:
        """Remove the next request (or garbage) from the start of `buf` and return the reply to it
        (b"" for none); None, leaving `buf` as it is, until more bytes are needed."""


class PerPoll:
    """A decoder of whole polls (one poll's requests and replies per chunk): one reading per chunk,
    the values of its replies merged as a polled driver merges them."""

    def __init__(self, inner: Decoder) -> None:
        self.inner = inner
        self.errors: Counter[str] = inner.errors
        self.frames = 0

    def feed(self, data: Any) -> list[dict[str, Value]]:
        merged: dict[str, Value] = {}
        for v in self.inner.feed(data):
            merged.update(v)
        self.frames = self.inner.frames
        return [merged] if merged else []

    def flush(self) -> list[dict[str, Value]]:
        return list(self.inner.flush())


# A simulator factory: (endless wire chunks or adverts, a fresh decoder for them).
Simulation = tuple[Iterator[Any], Decoder]
SimulatorFactory = Callable[[SimParams], Simulation]


@dataclass(frozen=True, slots=True)
class DriverEntry:
    """One driver name of a family."""

    name: str
    cls: Ref  # the `Driver` subclass
    quantities: tuple[str, ...] = ()  # what it emits (canonical names); empty: as configured/advertised
    simulator: Ref | None = None  # a SimulatorFactory: makes `sim` (family = name) and the conformance tests work
    sim_device: Ref | None = None  # a dict: device keys under which this driver reads its simulator (a field map)
    # () -> Responder: a device that answers requests; `sim` runs the real (polling) driver against it
    responder: Ref | None = None


@dataclass(frozen=True, slots=True)
class Recogniser:
    """How `probe serial` recognises the family's protocol in captured bytes."""

    protocol: str  # e.g. "nmea" (shown by probe)
    driver: str  # the driver it suggests
    title: str
    factory: Ref  # () -> StreamProtocol, fed the captured bytes
    # (driver, title) a family may refine the suggestion to, from the decoded samples (e.g. senseair_s8).
    refine: Ref | None = None
    # A text format that almost any text passes (JSON/CSV/key=value lines): tried only when no
    # checksummed protocol matched, and credible only when it decodes most lines.
    fallback: bool = False
    # (captured bytes) -> (title, decoder) | None: a second try when the first decoder found no frame
    # (e.g. CSV rows whose header was sent at boot).
    retry: Ref | None = None
    sim_format: str = "json"  # the SimParams.format of the family's simulation this recognises (conformance)


@dataclass(frozen=True, slots=True)
class ScanHint:
    """How `scan ble` names a connectable device (read over GATT) by the service it advertises."""

    service_uuid: str  # full 128-bit, lower case
    driver: str
    note: str
    name_contains: str | None = None  # also required in the advertised name (case-insensitive)


@dataclass(frozen=True, slots=True)
class DriverFamily:
    """Everything the product needs to know about one device family, without importing it."""

    name: str
    title: str
    drivers: tuple[DriverEntry, ...]
    probe: tuple[Recogniser, ...] = ()
    ble_patterns: tuple[BlePattern, ...] = ()  # adverts the passive BLE scanner must let through
    advert_decoder: Ref | None = None  # BLE advert families: module with matches/decode/encode
    scan_hints: tuple[ScanHint, ...] = ()  # connectable BLE devices `scan ble` can name

    def entry(self, driver: str) -> DriverEntry:
        for e in self.drivers:
            if e.name == driver:
                return e
        raise KeyError(driver)

    def driver_class(self, driver: str) -> type[Driver]:
        cls: type[Driver] = resolve(self.entry(driver).cls)
        return cls

    def simulation(self, driver: str, params: SimParams) -> Simulation:
        ref = self.entry(driver).simulator
        if ref is None:
            raise ValueError(f"driver {driver!r} has no simulator")
        factory: SimulatorFactory = resolve(ref)
        return factory(params)

    def responder(self, driver: str) -> Responder | None:
        """A fresh simulated device answering `driver`'s requests, or None (its simulator only talks)."""
        ref = self.entry(driver).responder
        if ref is None:
            return None
        made: Responder = resolve(ref)()
        return made

    def recognisers(self) -> list[tuple[Recogniser, Callable[[], StreamProtocol]]]:
        return [(r, resolve(r.factory)) for r in self.probe]
