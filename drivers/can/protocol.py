"""CAN: DBC-driven decoding of frames to quantities, per-signal rate limits, slcan line syntax.

Pure and synchronous. `CanDecoder.decode(frame, now)` turns one frame (a python-can `Message` or
an `SlcanFrame`) into the values to forward (cantools decodes the DBC signals; names become snake_case quantities, units
are mapped to the canonical ones, choices become their names). `parse_slcan` / `SlcanSniffer`
/ `SlcanReader` read the slcan (Lawicel) ASCII lines an adapter sends.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from drivers.base import StreamProtocol
from edge_common.device import Duration as AnyDuration
from edge_common.errors import DriverError

if TYPE_CHECKING:
    from cantools.database.can import Database, Message

Value = float | int | str | bool
Duration = Annotated[AnyDuration, Field(le=86400)]
QUANTITY = r"^[a-z][a-z0-9_]{0,63}$"

# slcan "Sn" bitrates (python-can's slcan interface and the CANable firmware share this table).
SLCAN_BITRATES = (10000, 20000, 50000, 100000, 125000, 250000, 500000, 750000, 1000000, 83300)

# DBC unit (lower case) -> (canonical unit, scale, offset): value = raw * scale + offset.
# Only units that mean the same quantity as a canonical one; others pass through as the DBC states.
UNITS: dict[str, tuple[str, float, float]] = {
    **{u: ("V", 1.0, 0.0) for u in ("v", "volt", "volts")},
    "mv": ("V", 0.001, 0.0),
    **{u: ("A", 1.0, 0.0) for u in ("a", "amp", "amps", "ampere")},
    "ma": ("A", 0.001, 0.0),
    **{u: ("°C", 1.0, 0.0) for u in ("°c", "degc", "deg c", "deg_c", "℃", "c", "celsius")},
    **{u: ("°C", 1.0, -273.15) for u in ("k", "degk", "kelvin")},
    **{u: ("m/s", 1 / 3.6, 0.0) for u in ("km/h", "kph", "kmh")},
    "m/s": ("m/s", 1.0, 0.0),
    **{u: ("%", 1.0, 0.0) for u in ("%", "percent", "pct")},
    "w": ("W", 1.0, 0.0),
    "kw": ("W", 1000.0, 0.0),
    "km": ("m", 1000.0, 0.0),
    "m": ("m", 1.0, 0.0),
}


def canonical_unit(unit: str | None) -> tuple[str | None, float, float]:
    """(canonical unit, scale, offset) for a DBC unit string; unknown units pass through unscaled."""
    if not unit:
        return None, 1.0, 0.0
    return UNITS.get(unit.strip().lower(), (unit, 1.0, 0.0))


def snake_case(name: str) -> str:
    """A DBC signal name as a quantity: PackVoltage -> pack_voltage, BMS_PackSOC -> bms_pack_soc."""
    s = re.sub(r"[^0-9A-Za-z]+", "_", name)
    s = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", s)
    s = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", s)
    s = re.sub(r"_+", "_", s.lower()).strip("_")
    if not s:
        return "signal"
    return ("s_" + s if s[0].isdigit() else s)[:64]


def _decimals(x: float) -> int:
    """Decimal places of `x` as written (0.01 -> 2, 0.5 -> 1, 1 -> 0)."""
    if not math.isfinite(x):
        return 0
    exp = Decimal(repr(float(x))).as_tuple().exponent
    return max(0, -exp) if isinstance(exp, int) else 0


# -- configuration -------------------------------------------------------------------------------
class SignalOptions(BaseModel):
    """Per-signal overrides of the device's rate limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_interval: Duration | None = None
    deadband: float | None = Field(default=None, ge=0)
    max_interval: Duration | None = None


class CanOptions(BaseModel):
    """Keys of a `can` device."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    interface: Literal["slcan", "socketcan"] = "slcan"
    channel: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,15}$")  # socketcan: can0
    bitrate: int = 500000  # slcan only; a socketcan bitrate is set with `ip link`
    dbc: Path
    messages: list[int | str] | None = None  # names or frame ids; None = every message in the DBC
    min_interval: Duration = 1.0
    deadband: float = Field(default=0.0, ge=0)
    max_interval: Duration = 60.0
    signals: dict[str, SignalOptions] = Field(default_factory=dict)
    rename: dict[str, Annotated[str, Field(pattern=QUANTITY)]] = Field(default_factory=dict)
    listen_only: bool = True
    open_delay: Duration = Field(default=2.0, le=30)

    @field_validator("bitrate")
    @classmethod
    def _bitrate(cls, v: int) -> int:
        if v not in SLCAN_BITRATES:
            raise ValueError(f"{v} is not an slcan bitrate (one of {', '.join(map(str, sorted(SLCAN_BITRATES)))})")
        return v


class DbcError(DriverError, ValueError):
    """A DBC that cannot be used; `key` names the option at fault (relative to the device)."""

    def __init__(self, key: str, msg: str) -> None:
        super().__init__(msg)
        self.key = key


@lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int, size: int) -> Database:
    import cantools

    db = cantools.database.load_file(path, database_format="dbc", strict=True)
    return db  # type: ignore[return-value]


def load_dbc(path: Path) -> Database:
    """The parsed DBC at `path` (cached while the file is unchanged); DbcError("dbc", why) if unusable."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DbcError("dbc", f"file not found: {path}") from None
    except OSError as e:
        raise DbcError("dbc", f"cannot read {path}: {e.strerror}") from None
    try:
        db = _load(str(path), st.st_mtime_ns, st.st_size)
    except Exception as e:  # cantools raises parser, encoding and consistency errors of many types
        raise DbcError("dbc", f"not a usable DBC file ({path}): {type(e).__name__}: {e}".strip()) from None
    if not db.messages:
        raise DbcError("dbc", f"no messages in {path}")
    return db


# -- rate limiting -------------------------------------------------------------------------------
@dataclass(slots=True)
class _Signal:
    """One forwarded signal: its quantity, unit conversion and rate-limit state."""

    name: str
    quantity: str
    scale: float
    offset: float
    ndigits: int | None
    min_interval: float
    deadband: float
    max_interval: float
    last_t: float = -math.inf
    last_v: Value | None = None

    def convert(self, v: Any) -> Value:
        if isinstance(v, int | float) and not isinstance(v, bool):
            x: float | int = v
            if self.scale != 1.0 or self.offset != 0.0:
                x = x * self.scale + self.offset
            if self.ndigits is not None and isinstance(x, float):
                x = round(x, self.ndigits)
            return x
        return str(v)  # a choice: cantools' NamedSignalValue -> its name

    def admit(self, v: Value, now: float) -> bool:
        """Forward `v` now? min_interval apart; past it, when moved by more than deadband or max_interval passed."""
        dt = now - self.last_t
        if dt < self.min_interval:
            return False
        if self.deadband > 0 and self.last_v is not None and dt < self.max_interval:
            last = self.last_v
            if isinstance(v, int | float) and isinstance(last, int | float):
                if abs(v - last) <= self.deadband:
                    return False
            elif v == last:
                return False
        self.last_t, self.last_v = now, v
        return True


@dataclass(slots=True)
class _Plan:
    message: Message
    signals: list[_Signal] = field(default_factory=list)
    due: float = -math.inf  # no signal can be forwarded before this: the frame need not be decoded

    def update_due(self) -> None:
        self.due = min(s.last_t + s.min_interval for s in self.signals)


BUS_OFF = 0x40  # socketcan error class CAN_ERR_BUSOFF in an error frame's id


class Frame(Protocol):
    """What the decoder reads of a frame: python-can's `Message` and `SlcanFrame` both are one."""

    @property
    def arbitration_id(self) -> int: ...
    @property
    def is_extended_id(self) -> bool: ...
    @property
    def is_remote_frame(self) -> bool: ...
    @property
    def is_error_frame(self) -> bool: ...
    @property
    def dlc(self) -> int: ...
    @property
    def data(self) -> bytes | bytearray: ...


class CanDecoder:
    """Frames -> forwarded values for one DBC and one device's options; errors counted in `errors`."""

    def __init__(self, db: Database, options: CanOptions) -> None:
        self.errors: Counter[str] = Counter()
        self.frames = 0
        self.plans: dict[tuple[int, bool], _Plan] = build_plans(db, options)
        # DBC messages left out by `messages`: known, so skipped without counting
        self.skipped = {(m.frame_id, m.is_extended_frame) for m in db.messages} - set(self.plans)

    def decode(self, frame: Frame, now: float) -> dict[str, Value]:
        """The values of `frame` to forward now (empty when none is due or the frame is not decodable)."""
        if frame.is_error_frame:
            self.errors["bus_off" if frame.arbitration_id & BUS_OFF else "bus_error"] += 1
            return {}
        if frame.is_remote_frame:
            return {}
        key = (frame.arbitration_id, frame.is_extended_id)
        plan = self.plans.get(key)
        if plan is None:
            if key not in self.skipped:
                self.errors["unknown_id"] += 1
            return {}
        data = frame.data
        if len(data) < plan.message.length or len(data) < frame.dlc:
            self.errors["dlc"] += 1
            return {}
        self.frames += 1
        if now < plan.due:
            return {}  # at 100 Hz with min_interval 1 s, 99 of 100 frames end here
        try:
            decoded = plan.message.decode(bytes(data), decode_choices=True, scaling=True)
        except Exception:  # cantools DecodeError and friends on a frame the DBC cannot explain
            self.errors["malformed"] += 1
            return {}
        out: dict[str, Value] = {}
        assert isinstance(decoded, Mapping)
        for s in plan.signals:
            raw = decoded.get(s.name)
            if raw is None:
                continue  # a multiplexed signal of another mux value
            v = s.convert(raw)
            if s.admit(v, now):
                out[s.quantity] = v
        plan.update_due()
        return out


def _message_of(db: Database, ref: int | str) -> Message | None:
    if isinstance(ref, int) or re.fullmatch(r"(0[xX][0-9A-Fa-f]+|[0-9]+)", ref):
        fid = ref if isinstance(ref, int) else int(ref, 0)
        return next((m for m in db.messages if m.frame_id == fid), None)
    return next((m for m in db.messages if m.name == ref), None)


def build_plans(db: Database, o: CanOptions) -> dict[tuple[int, bool], _Plan]:
    """(frame id, extended) -> what to decode and forward; DbcError naming the option at fault."""
    if o.messages is None:
        chosen = list(db.messages)
    else:
        chosen = []
        for i, ref in enumerate(o.messages):
            m = _message_of(db, ref)
            if m is None:
                shown = f"0x{ref:X}" if isinstance(ref, int) else repr(ref)
                raise DbcError(f"messages[{i}]", f"no message {shown} in the DBC")
            if m not in chosen:
                chosen.append(m)
    known = {s.name for m in chosen for s in m.signals}
    for key, what in (("signals", o.signals), ("rename", o.rename)):
        for name in what:
            if name not in known:
                raise DbcError(f"{key}.{name}", "no such signal in the forwarded messages")
    entries = [(m, s, o.rename.get(s.name) or snake_case(s.name)) for m in chosen for s in m.signals]
    counts = Counter(q for _, _, q in entries)
    plans: dict[tuple[int, bool], _Plan] = {}
    taken: dict[str, str] = {}
    for m, s, q in entries:
        if counts[q] > 1 and s.name not in o.rename:  # e.g. a `Counter` signal in every message
            q = f"{snake_case(m.name)}_{q}"[:64]
        if q in taken:
            raise DbcError(f"rename.{s.name}", f"quantity {q!r} is also {taken[q]}; rename one of them")
        taken[q] = f"{m.name}.{s.name}"
        _, scale, offset = canonical_unit(s.unit)
        base = max(_decimals(s.scale), _decimals(s.offset))
        ndigits: int | None = None  # float signals and odd scales (1/3) stay as decoded
        if not s.is_float and base <= 9:
            # scaled integers carry float noise (52.300000000000004): round to the DBC's resolution,
            # with 4 more places after a unit conversion (mV -> V, km/h -> m/s)
            ndigits = max(base + (4 if scale != 1.0 else 0), _decimals(offset))
        so = o.signals.get(s.name, SignalOptions())
        sig = _Signal(
            name=s.name, quantity=q, scale=scale, offset=offset, ndigits=ndigits,
            min_interval=so.min_interval if so.min_interval is not None else o.min_interval,
            deadband=so.deadband if so.deadband is not None else o.deadband,
            max_interval=so.max_interval if so.max_interval is not None else o.max_interval,
        )
        plans.setdefault((m.frame_id, m.is_extended_frame), _Plan(m)).signals.append(sig)
    return plans


def units_of(plans: Mapping[tuple[int, bool], _Plan]) -> dict[str, str]:
    """quantity -> unit it is published in (for docs and `config show`-like listings)."""
    out: dict[str, str] = {}
    for p in plans.values():
        for s in p.signals:
            sig = p.message.get_signal_by_name(s.name)
            unit = canonical_unit(sig.unit)[0]
            if unit and not sig.choices:
                out[s.quantity] = unit
    return out


# -- slcan (Lawicel) lines -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SlcanFrame:
    """One frame of an slcan line."""

    arbitration_id: int
    data: bytes
    is_extended_id: bool = False
    is_remote_frame: bool = False
    is_fd: bool = False
    bitrate_switch: bool = False
    dlc: int = 0
    is_error_frame: bool = False  # slcan carries none


FD_LENGTHS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64)
_KIND = {  # first letter -> (extended id, remote, fd, bitrate switch)
    "t": (False, False, False, False), "T": (True, False, False, False), "x": (True, False, False, False),
    "r": (False, True, False, False), "R": (True, True, False, False),
    "d": (False, False, True, False), "D": (True, False, True, False),
    "b": (False, False, True, True), "B": (True, False, True, True),
}
_LETTER = {v: k for k, v in reversed(list(_KIND.items()))}  # "T", not CANdapter's "x"
_HEX = frozenset("0123456789abcdefABCDEF")


def parse_slcan(line: str) -> SlcanFrame | None:
    """The frame of one slcan line (without its CR), None when it is not a well-formed frame line.

    Stricter than python-can's reader: the id, DLC and every data digit must be hex of the exact
    length (a timestamp of 4 hex digits may follow, as adapters with `Z1` send).
    """
    if not line or line[0] not in _KIND:
        return None
    ext, remote, fd, brs = _KIND[line[0]]
    n = 8 if ext else 3
    head = line[1:n + 2]
    if len(head) != n + 1 or not _HEX.issuperset(head):
        return None
    fid = int(head[:n], 16)
    if fid > (0x1FFFFFFF if ext else 0x7FF):
        return None
    code = int(head[n], 16)
    if not fd and code > 8:
        return None
    length = FD_LENGTHS[code]
    body = line[n + 2:]
    want = 0 if remote else 2 * length
    if len(body) not in (want, want + 4) or not _HEX.issuperset(body):
        return None
    data = bytes.fromhex(body[:want])
    return SlcanFrame(fid, data, ext, remote, fd, brs, length)


def slcan_line(f: SlcanFrame) -> bytes:
    """The slcan line (with CR) an adapter sends for `f`."""
    letter = _LETTER[(f.is_extended_id, f.is_remote_frame, f.is_fd, f.bitrate_switch)]
    ident = f"{f.arbitration_id:08X}" if f.is_extended_id else f"{f.arbitration_id:03X}"
    length = f.dlc if f.is_remote_frame else len(f.data)
    code = FD_LENGTHS.index(length) if f.is_fd else length
    return f"{letter}{ident}{code:X}{'' if f.is_remote_frame else f.data.hex().upper()}\r".encode()


class SlcanReader:
    """The frames in an slcan adapter's byte stream; replies to commands skipped, the rest counted in `errors`."""

    max_line = 160  # the longest line: an extended FD frame of 64 bytes with a timestamp

    def __init__(self, errors: Counter[str] | None = None) -> None:
        self.errors: Counter[str] = Counter() if errors is None else errors
        self._buf = b""

    def feed(self, data: bytes) -> list[SlcanFrame]:
        *lines, rest = (self._buf + data).replace(b"\a", b"\r").split(b"\r")  # BEL: a refused command
        if len(rest) > self.max_line:
            self.errors["overflow"] += 1
            rest = b""
        self._buf = rest
        out: list[SlcanFrame] = []
        for raw in lines:
            if not raw:
                continue  # an OK (CR) or error (BEL) reply to a command
            try:
                text = raw.decode("ascii")
            except UnicodeDecodeError:
                self.errors["noise"] += 1
                continue
            f = parse_slcan(text)
            if f is not None:
                out.append(f)
            elif text[0] not in "VvNFzZ":  # not a reply to version/serial/status/transmit
                self.errors["malformed"] += 1
        return out


class SlcanSniffer(StreamProtocol):
    """slcan traffic on a serial line (for `probe serial`): each frame's id and bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.reader = SlcanReader(self.errors)
        self.ids: Counter[int] = Counter()

    def feed(self, data: bytes) -> list[dict[str, Value]]:
        out: list[dict[str, Value]] = []
        for f in self.reader.feed(data):
            self.frames += 1
            self.ids[f.arbitration_id] += 1
            out.append({"id": f"0x{f.arbitration_id:X}", "dlc": f.dlc, "data": f.data.hex(),
                        **({"extended": True} if f.is_extended_id else {}),
                        **({"remote": True} if f.is_remote_frame else {})})
        return out


class SlcanBusProtocol(StreamProtocol):
    """slcan lines decoded with a DBC (the `sim` driver's in-process bus); each fed chunk is one second of bus."""

    def __init__(self, dbc: Path, options: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.decoder = CanDecoder(load_dbc(dbc), CanOptions.model_validate({"dbc": dbc, **(options or {})}))
        self.errors = self.decoder.errors
        self.reader = SlcanReader(self.errors)
        self.now = 0.0

    def feed(self, data: bytes) -> list[dict[str, Value]]:
        out = [v for f in self.reader.feed(data) if (v := self.decoder.decode(f, self.now))]
        self.frames = self.decoder.frames
        self.now += 1.0
        return out

def lines_of(frames: Iterable[SlcanFrame]) -> bytes:
    """The slcan bytes of several frames."""
    return b"".join(slcan_line(f) for f in frames)
