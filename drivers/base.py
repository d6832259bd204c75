"""The contract between drivers and the core: Driver, DeviceContext, StreamProtocol."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from edge_common.model import Reading, Value

if TYPE_CHECKING:
    from edge_common.device import DeviceConfig

LinkState = Literal["starting", "connected", "disconnected", "failed"]


class NoOptions(BaseModel):
    """A driver without driver-specific keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceContext:
    """A driver's only window to the core: emit readings, report link state and errors."""

    def __init__(
        self,
        device: DeviceConfig,
        sink: Callable[[Reading], None],
        clock_state: Callable[[], Literal["synced", "unsynced"]] = lambda: "synced",
        services: Mapping[str, Any] | None = None,
    ) -> None:
        self.device = device
        self._sink = sink
        self._clock_state = clock_state
        self.services: Mapping[str, Any] = services or {}
        self.link: LinkState = "starting"
        self.link_detail = ""
        self.link_changed = time.time()
        self.readings = 0
        self.errors: Counter[str] = Counter()
        self.last_reading: float | None = None  # wall clock
        self.last_reading_mono: float | None = None
        self.last_values: Mapping[str, Value] = {}
        self.restarts = 0
        self.on_link_change: Callable[[DeviceContext], None] | None = None
        self.on_reading: Callable[[DeviceContext], None] | None = None  # set by the supervisor while offline
        # A reading's time when the driver gives none (a replay sets the capture's recorded times).
        self.now: Callable[[], float] = time.time
        # Injected transport (the `sim` driver's simulator); None: the driver opens its own.
        self.open_transport: Callable[[], Awaitable[Any]] | None = None  # -> drivers.transport.ByteTransport

    def emit(self, values: Mapping[str, Value], ts: float | None = None, driver: str | None = None) -> None:
        """Hand one decoded sample to the pipeline (never blocks)."""
        if not values:
            return
        now = time.time()
        r = Reading(
            device=self.device.id,
            driver=driver or self.device.driver,
            values=dict(values),
            ts=ts if ts is not None else (now if self.now is time.time else self.now()),
            clock=self._clock_state(),
            tags=self.device.tags,
        )
        self.readings += 1
        self.last_reading = now
        self.last_reading_mono = time.monotonic()
        self.last_values = r.values
        self._sink(r)
        if self.on_reading is not None:
            self.on_reading(self)

    def deliver(self, values: list[dict[str, Value]], errors: Counter[str], seen: Counter[str]) -> None:
        """Emit a decoder's values and count its errors new since `seen` (brought up to date in place)."""
        for v in values:
            self.emit(v)
        if errors != seen:
            for k, n in (errors - seen).items():
                self.count_error(k, n)
            seen.clear()
            seen.update(errors)

    def count_error(self, kind: str, n: int = 1) -> None:
        """Count a recoverable problem (bad checksum, timeout, ...)."""
        if n:
            self.errors[kind] += n

    def set_link(self, state: LinkState, detail: str = "") -> None:
        """Report the transport's state (connected, disconnected, ...)."""
        if state != self.link or detail != self.link_detail:
            changed = state != self.link
            self.link, self.link_detail = state, detail
            if changed:
                self.link_changed = time.time()
                if self.on_link_change is not None:
                    self.on_link_change(self)


class Driver(ABC):
    """Base of every driver; `run` runs until cancelled and may raise (the supervisor restarts it)."""

    name: ClassVar[str]
    transport: ClassVar[Literal["serial", "ble", "none"]]
    Options: ClassVar[type[BaseModel]] = NoOptions
    # Used for liveness when the device config gives no expected_interval.
    default_expected_interval: ClassVar[float] = 60.0
    # Reads through a byte transport that a capture can stand in for (`replay`).
    supports_replay: ClassVar[bool] = False
    # Reads the device context's `open_transport` when one is injected (the `sim` driver's simulator).
    injected_transport: ClassVar[bool] = False
    # Driver keys holding file paths: relative ones resolve against the config file's folder.
    path_options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, device: DeviceConfig, ctx: DeviceContext) -> None:
        self.device = device
        self.ctx = ctx
        self.options: Any = self.Options.model_validate(device.options)

    @classmethod
    def device_model(cls, cache: dict[Any, Any] | None = None) -> type[DeviceConfig]:
        """The pydantic model of this driver's device table (what `config check` and `config schema` use)."""
        from drivers.devices import device_model

        return device_model(cls, cache)

    @classmethod
    def check_config(cls, device: DeviceConfig) -> list[tuple[str, str]]:
        """Problems as (key relative to the device, message); empty when valid."""
        from drivers.devices import problems

        return problems(cls, {**device.model_dump(include=device.model_fields_set), **device.options})

    @classmethod
    def transport_problems(cls, device: DeviceConfig) -> list[tuple[str, str]]:
        """Transport keys missing or not used (`device` is the table as written, unvalidated)."""
        problems: list[tuple[str, str]] = []
        transport = cls.device_transport(device)
        given = device.model_fields_set
        if "replay" in given and not (cls.supports_replay and transport == "serial"):
            problems.append(("replay", f"driver {device.driver!r} cannot replay a capture (serial stream drivers can)"))
        if transport == "serial" and not device.port and device.replay is None:
            problems.append(("port", f"required by driver {device.driver!r}"))
        if transport == "ble" and not device.address and cls.requires_address():
            problems.append(("address", f"required by driver {device.driver!r}"))
        # A key of the other transport is a mistake (a copied block, the wrong driver): say so.
        if transport == "serial" and "address" in given:
            problems.append(("address", f"not used by serial driver {device.driver!r} (it reads `port`)"))
        for key in ("port", "baud", "parity", "stopbits", "bytesize"):
            if transport != "serial" and key in given:
                problems.append((key, f"not used by BLE driver {device.driver!r} (it listens for `address`)"
                                 if transport == "ble" else f"not used by driver {device.driver!r}"))
        return problems

    @classmethod
    def check_device(cls, device: DeviceConfig) -> list[tuple[str, str]]:
        """Problems beyond the device model's (run once it validated), e.g. a DBC file that does not load."""
        return []

    @classmethod
    def schema_rules(cls) -> dict[str, Any]:
        """JSON Schema the device table must also satisfy (what `transport_problems` checks, for editors).

        Empty: the schema requires `port` of a serial-only driver; a driver with rules states its own.
        """
        return {}

    @classmethod
    def transports(cls) -> tuple[Literal["serial", "ble", "none"], ...]:
        """Every transport a device of this driver may use: its table takes their keys."""
        return (cls.transport,)

    @classmethod
    def requires_address(cls) -> bool:
        return True

    @classmethod
    def device_transport(cls, device: DeviceConfig) -> Literal["serial", "ble", "none"]:
        """The transport this device uses (drivers speaking both choose by the device's `transport` key)."""
        return cls.transport

    @property
    def expected_interval(self) -> float:
        return self.device.expected_interval or self.default_expected_interval

    @abstractmethod
    async def run(self) -> None:
        """Read from the device and emit readings until cancelled."""


class StreamProtocol(ABC):
    """Incremental byte-stream decoder: feed bytes, get decoded value dicts; pure, no I/O.

    Errors are counted in `errors` (e.g. "checksum", "noise", "truncated") and skipped.
    """

    def __init__(self) -> None:
        self.errors: Counter[str] = Counter()
        self.frames = 0

    @abstractmethod
    def feed(self, data: bytes) -> list[dict[str, Value]]:
        """Consume bytes; return the values of every complete valid frame, in order."""

    def flush(self) -> list[dict[str, Value]]:
        """Values held back waiting for more input (called when the line goes quiet)."""
        return []

    @property
    def pending(self) -> bool:
        """Whether `flush` may return values: a driver's idle-flush timer is armed only then.

        True unless a protocol knows better, so a driver with `idle_flush` flushes once after
        each quiet period; an idle line arms no timer either way (data must come first).
        """
        return True


class BufferedProtocol(StreamProtocol):
    """A StreamProtocol over a byte buffer: `parse` consumes the complete frames at the start of `_buf`."""

    def __init__(self) -> None:
        super().__init__()
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Value]]:
        self._buf += data
        return self.parse(final=False)

    def flush(self) -> list[dict[str, Value]]:
        """The line went quiet: a frame still incomplete is dropped and what follows it parsed."""
        return self.parse(final=True)

    @property
    def pending(self) -> bool:
        return bool(self._buf)

    @abstractmethod
    def parse(self, final: bool) -> list[dict[str, Value]]:
        """Values of the complete frames in `_buf` (removing them); with `final`, resync past a cut frame."""


class FramedProtocol(BufferedProtocol):
    """Frames of: a start byte, a header holding the length, a body, a 16-bit big-endian checksum, END.

    Subclasses give the header and checksum; the resync is shared: bytes before a start byte are
    "noise", a bad length or end byte "malformed", then "checksum", a frame cut short "truncated"
    (dropped by `flush`); after each of those one byte is dropped and the search starts again.
    """

    starts: bytes  # the bytes a frame may start with
    end: int

    @abstractmethod
    def header_len(self, first: int) -> int:
        """Bytes needed (from the start byte on) to know the frame's length."""

    @abstractmethod
    def frame_len(self, buf: bytearray, head: int) -> int | None:
        """The whole frame's length from its header, or None when the length is invalid."""

    @abstractmethod
    def checksum(self, frame: bytes, head: int) -> int:
        """The checksum the frame must carry in its two bytes before END."""

    @abstractmethod
    def on_frame(self, frame: bytes, head: int, out: list[dict[str, Value]]) -> None:
        """A frame that passed every check: count it, append its values to `out`."""

    def parse(self, final: bool) -> list[dict[str, Value]]:
        out: list[dict[str, Value]] = []
        buf, starts, end, errors = self._buf, self.starts, self.end, self.errors
        while buf:
            if buf[0] not in starts:
                errors["noise"] += 1
                del buf[:min((i for i in map(buf.find, starts) if i >= 0), default=len(buf))]
                continue
            head = self.header_len(buf[0])
            if len(buf) < head:
                if final:
                    errors["truncated"] += 1
                    buf.clear()
                break
            total = self.frame_len(buf, head)
            if total is None:
                errors["malformed"] += 1
                del buf[:1]
                continue
            if len(buf) < total:
                if final:
                    errors["truncated"] += 1
                    del buf[:1]
                    continue
                break
            if buf[total - 1] != end:
                errors["malformed"] += 1
                del buf[:1]
                continue
            frame = bytes(buf[:total])
            if self.checksum(frame, head) != frame[-3] << 8 | frame[-2]:
                errors["checksum"] += 1
                del buf[:1]
                continue
            del buf[:total]
            self.on_frame(frame, head, out)
        return out
