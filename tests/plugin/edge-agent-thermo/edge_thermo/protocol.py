"""Pure decoder of `$TH,21.50,45.2*3A\r\n`: XOR of the bytes between `$` and `*`, as in NMEA."""

from __future__ import annotations

from drivers.base import StreamProtocol
from edge_common.model import Value

MAX_LINE = 80


def checksum(body: bytes) -> int:
    x = 0
    for b in body:
        x ^= b
    return x


def sentence(temperature: float, humidity: float) -> bytes:
    body = f"TH,{temperature:.2f},{humidity:.1f}".encode()
    return b"$" + body + f"*{checksum(body):02X}\r\n".encode()


class Th1Protocol(StreamProtocol):
    """Lines in, {temperature, humidity} out; bad checksum/shape counted, never raised."""

    def __init__(self) -> None:
        super().__init__()
        self._buf = b""

    def feed(self, data: bytes) -> list[dict[str, Value]]:
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        if len(self._buf) > MAX_LINE:
            self._buf = b""
            self.errors["overlong"] += 1
        out: list[dict[str, Value]] = []
        for raw in lines:
            line = raw.strip()
            if not line:
                continue
            values = self._decode(line)
            if values is not None:
                self.frames += 1
                out.append(values)
        return out

    def _decode(self, line: bytes) -> dict[str, Value] | None:
        start, star = line.find(b"$"), line.rfind(b"*")
        if start < 0 or star < start:
            self.errors["noise"] += 1
            return None
        body = line[start + 1:star]
        try:
            if int(line[star + 1:star + 3], 16) != checksum(body):
                self.errors["checksum"] += 1
                return None
            tag, t, h = body.decode("ascii").split(",")
            if tag != "TH":
                raise ValueError(tag)
            return {"temperature": float(t), "humidity": float(h)}
        except (ValueError, UnicodeDecodeError):
            self.errors["malformed"] += 1
            return None
