"""Plantower PMS5003/PMS7003 frame decoder: pure, incremental, resynchronising on 0x42 0x4D.

Frame: ``42 4D`` + length (big-endian, 2 * data words + 2; 28 on PMS5003/7003) + data words
(big-endian uint16) + checksum (uint16, sum of every byte before it). Data words 4-6 are the
"atmospheric environment" concentrations used here: pm1_0, pm2_5, pm10 in µg/m³.
Command acknowledgements (length 4) are valid frames without readings. Hand-written: no
maintained Python library decodes a byte stream without owning the serial port.
"""

from __future__ import annotations

from drivers.base import StreamProtocol

HEADER = b"\x42\x4d"
# Frame lengths seen in the Plantower family: 4 = command ack, 20 = PMS3003, 28 = PMS5003/7003/A003,
# 36 = PMS5003ST (with formaldehyde, temperature, humidity).
_LENGTHS = frozenset({4, 20, 28, 36})
_MAX_FRAME = 4 + 36


def checksum(frame_without_sum: bytes) -> int:
    """Sum of all bytes, 16 bits."""
    return sum(frame_without_sum) & 0xFFFF


def frame(words: list[int]) -> bytes:
    """A complete frame carrying `words` (uint16 each), checksum included."""
    body = HEADER + (2 * len(words) + 2).to_bytes(2, "big") + b"".join(
        (w & 0xFFFF).to_bytes(2, "big") for w in words)
    return body + checksum(body).to_bytes(2, "big")


class Pms5003Protocol(StreamProtocol):
    """Feed bytes; returns {pm1_0, pm2_5, pm10} (ints, µg/m³) per valid measurement frame."""

    def __init__(self) -> None:
        super().__init__()
        self._buf = bytearray()
        self.acks = 0

    def feed(self, data: bytes) -> list[dict[str, float | int | str | bool]]:
        out: list[dict[str, float | int | str | bool]] = []
        buf = self._buf
        buf += data
        while True:
            start = buf.find(HEADER)
            if start < 0:
                # Keep a trailing 0x42: it may be the first half of the next header.
                keep = 1 if buf[-1:] == HEADER[:1] else 0
                if len(buf) - keep > 0:
                    self.errors["noise"] += 1
                    del buf[: len(buf) - keep]
                break
            if start > 0:
                self.errors["noise"] += 1
                del buf[:start]
            if len(buf) < 4:
                break
            length = int.from_bytes(buf[2:4], "big")
            if length not in _LENGTHS:
                self.errors["malformed"] += 1
                del buf[:1]
                continue
            total = 4 + length
            if len(buf) < total:
                break
            raw = bytes(buf[:total])
            if checksum(raw[:-2]) != int.from_bytes(raw[-2:], "big"):
                self.errors["checksum"] += 1
                del buf[:1]  # resync inside the bad frame: a real header may follow
                continue
            del buf[:total]
            if length == 4:
                self.acks += 1
                continue
            self.frames += 1
            out.append({
                "pm1_0": int.from_bytes(raw[10:12], "big"),
                "pm2_5": int.from_bytes(raw[12:14], "big"),
                "pm10": int.from_bytes(raw[14:16], "big"),
            })
        return out
