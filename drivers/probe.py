"""Protocol recognition for `edge-agent probe serial`: which supported protocol is in these bytes?

Pure: the CLI reads the port and hands the bytes here. Every registered family's recogniser sees
the same bytes; checksummed protocols (NMEA, PMS5003, SDS011, Modbus RTU, ...) are trusted first,
the `fallback` ones (the line formats: JSON, key=value, CSV) only when none of them matched, since
almost any text is "lines".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from drivers.base import StreamProtocol
from drivers.family import Recogniser, resolve


@dataclass(slots=True)
class Candidate:
    """How well one protocol explains the bytes."""

    protocol: str  # a family recogniser's (nmea, pms5003, sds011, modbus, ...) or json_lines | kv_lines | csv_lines
    driver: str
    title: str
    frames: int
    errors: dict[str, int]
    samples: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def as_dict(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "driver": self.driver, "title": self.title,
                "frames": self.frames, "errors": dict(self.errors), "samples": self.samples,
                "note": self.note}


def _decoders(fallback: bool) -> list[tuple[Recogniser, Callable[[], StreamProtocol]]]:
    """The registered families' recognisers (checksummed, or the fallback text formats), in registration order."""
    from drivers.registry import registry

    return [(r, make) for fam in registry().families.values() for r, make in fam.recognisers()
            if r.fallback == fallback]


def _refiners() -> dict[str, Callable[[list[dict[str, Any]]], tuple[str, str] | None]]:
    from drivers.registry import registry

    return {r.protocol: resolve(r.refine) for fam in registry().families.values() for r in fam.probe if r.refine}


def _run(name: str, driver: str, title: str, proto: StreamProtocol, data: bytes, samples: int) -> Candidate:
    got: list[dict[str, Any]] = []
    # Feed in modest chunks, as a serial port would deliver them.
    for i in range(0, len(data), 256):
        got.extend(proto.feed(data[i : i + 256]))
    got.extend(proto.flush())
    note = ""
    requests = getattr(proto, "requests", 0)
    if requests:
        note = f"{requests} requests seen"
    ids = getattr(proto, "ids", None)  # a CAN sniffer: which frame ids are on the bus
    if ids:
        shown = ", ".join(f"0x{i:X}" for i, _ in ids.most_common(8))
        note = f"{len(ids)} frame ids ({shown}{', ...' if len(ids) > 8 else ''})"
    refine = _refiners().get(name)
    if refine is not None and (better := refine(got)) is not None:  # e.g. a Senseair S8 poll on a Modbus bus
        driver, title = better
    return Candidate(name, driver, title, proto.frames, dict(proto.errors), got[:samples], note)


def analyse(data: bytes, samples: int = 3) -> list[Candidate]:
    """Every protocol's result on `data`, best first (recognised ones have frames > 0)."""
    binary = [_run(r.protocol, r.driver, r.title, make(), data, samples) for r, make in _decoders(False)]
    # Requests alone (a Modbus master polling a silent slave) still identify the bus.
    binary.sort(key=lambda c: (c.frames + (1 if c.note else 0), -c.error_count), reverse=True)
    if binary and (binary[0].frames or binary[0].note):
        return binary
    text = []
    for r, make in _decoders(True):
        c = _run(r.protocol, r.driver, r.title, make(), data, samples)
        if c.frames == 0 and r.retry is not None and (again := resolve(r.retry)(data)) is not None:
            c = _run(r.protocol, r.driver, again[0], again[1], data, samples)
        text.append(c)
    # A line format is credible only when it decodes most lines.
    text = [c for c in text if c.frames >= 1 and c.frames > c.error_count]
    text.sort(key=lambda c: (c.frames, -c.error_count), reverse=True)
    return text + binary


def recognised(cands: list[Candidate]) -> Candidate | None:
    """The winning candidate, or None when nothing supported is talking."""
    if not cands:
        return None
    best = cands[0]
    if best.frames > 0 or best.note:  # requests alone: a polled bus
        return best
    return None
