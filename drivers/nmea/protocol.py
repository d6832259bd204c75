"""NMEA 0183 lexer and decoder: pure, incremental, resynchronising.

Hand-written rather than pynmeagps: the lexer must restart on every ``$`` so that a
truncated sentence (no CRLF) never swallows the next valid one (gpsd's rule), and the
agent needs only RMC/GGA/VTG/GSA/GLL (any talker: GP, GN, GL, GA, BD, GB...; also Unicore's
high-precision "...H" variants). Proprietary ``$P`` sentences and other types are ignored
(counted in ``ignored``). pynmeagps is used in the tests as a differential oracle.

Sentences of one fix epoch (same UTC time) are merged into one set of values:
latitude, longitude (deg), altitude (m, MSL), speed (m/s), course (deg true),
satellites, hdop, fix ("none", "gps", "dgps", "pps", "rtk", "float_rtk", "estimated",
"manual", "simulated"), gnss_time (RFC 3339, when RMC gives a date).
"""

from __future__ import annotations

from array import array
from functools import lru_cache

from drivers.base import StreamProtocol

KNOT = 1852.0 / 3600.0  # m/s
MAX_SENTENCE = 120  # the standard says 82; some receivers exceed it a little

_FIX = {
    "0": "none", "1": "gps", "2": "dgps", "3": "pps", "4": "rtk",
    "5": "float_rtk", "6": "estimated", "7": "manual", "8": "simulated",
}
_MODE = {"A": "gps", "D": "dgps", "E": "estimated", "F": "float_rtk", "R": "rtk",
         "M": "manual", "S": "simulated", "P": "gps", "N": "none"}


def checksum(body: bytes) -> int:
    """XOR of the bytes between '$' and '*'."""
    # Eight bytes per step (the byte order does not matter to an XOR of all bytes): ~3x faster
    # than a loop over the bytes, and a fix has four or five sentences.
    x = 0
    for w in array("Q", body + bytes(-len(body) % 8)):
        x ^= w
    x ^= x >> 32
    x ^= x >> 16
    x ^= x >> 8
    return x & 0xFF


def sentence(body: str) -> bytes:
    """Wrap a sentence body ("GPRMC,...") with '$', checksum and CRLF."""
    raw = body.encode("ascii")
    return b"$" + raw + b"*%02X\r\n" % checksum(raw)


@lru_cache(maxsize=16)  # RMC, GGA and GLL of one epoch carry the same position strings
def _coord(value: str, hemi: str, deg_digits: int) -> float | None:
    """Decimal degrees from (d)ddmm.mmmm and a hemisphere; None if absent or out of range.

    The degree digits are whatever precedes the two minute digits, so receivers that drop
    leading zeros work; a stray sign (Unicore's "-0214.41,W") is ignored: the hemisphere rules.
    """
    if not value or hemi not in ("N", "S", "E", "W"):
        return None
    value = value.lstrip("+-")
    dot = value.find(".")
    int_len = dot if dot >= 0 else len(value)
    if not 3 <= int_len <= deg_digits + 2 or not value[:int_len].isdigit():
        return None
    try:
        deg = int(value[: int_len - 2])
        minutes = float(value[int_len - 2 :])
    except ValueError:
        return None
    if not (0 <= minutes < 60):
        return None
    v = deg + minutes / 60.0
    if (deg_digits == 2 and v > 90) or v > 180:
        return None
    return round(-v if hemi in ("S", "W") else v, 9)


def _time_key(t: str) -> str:
    """hhmmss.ss normalised so "123519.00" and "123519.000" name the same epoch."""
    if "." in t:
        t = t.rstrip("0").rstrip(".")
    return t


def _float(value: str) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _int(value: str) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


class NmeaProtocol(StreamProtocol):
    """Feed bytes; returns one values dict per completed fix epoch."""

    def __init__(self) -> None:
        super().__init__()
        self._buf = bytearray()
        self._group: dict[str, object] = {}
        self._group_time: str | None = None
        self._group_types: set[str] = set()
        self.ignored = 0

    # -- lexer --------------------------------------------------------------------------
    def feed(self, data: bytes) -> list[dict[str, float | int | str | bool]]:
        out: list[dict[str, float | int | str | bool]] = []
        if self._buf:
            self._buf += data
            b = bytes(self._buf)
        else:
            b = data
        find = b.find
        i, n = 0, len(b)
        # Walks the chunk by index (no copy per sentence): every '$' starts a sentence, a '$'
        # before the line end cuts the one before it ("truncated"), anything else is noise.
        while i < n:
            start = find(b"$", i)
            if start < 0:
                # Keep nothing: no sentence can start in this junk.
                if b[i:].strip():
                    self.errors["noise"] += 1
                i = n
                break
            if start > i:
                if b[i:start].strip():
                    self.errors["noise"] += 1
                i = start
            cr, lf = find(b"\r", i), find(b"\n", i)
            end = lf if cr < 0 else (cr if lf < 0 else min(cr, lf))
            nxt = find(b"$", i + 1) if end < 0 else find(b"$", i + 1, end)
            if nxt != -1:
                self.errors["truncated"] += 1
                i = nxt
                continue
            if end == -1:
                if n - i > MAX_SENTENCE:
                    self.errors["noise"] += 1
                    i = n
                break
            self._line(b[i:end], out)
            i = end + 1
        self._buf = bytearray(b[i:])
        return out

    def flush(self) -> list[dict[str, float | int | str | bool]]:
        """Emit the epoch in progress (call when the line goes quiet)."""
        out: list[dict[str, float | int | str | bool]] = []
        self._finish(out)
        return out

    @property
    def pending(self) -> bool:
        """An epoch is in progress (its values go out with the next epoch or `flush`)."""
        return bool(self._group)

    def _line(self, line: bytes, out: list[dict[str, float | int | str | bool]]) -> None:
        star = line.rfind(b"*")
        if star < 0 or len(line) - star != 3 or len(line) > MAX_SENTENCE:
            self.errors["malformed"] += 1
            return
        body = line[1:star]
        try:
            want = int(line[star + 1 :], 16)
        except ValueError:
            self.errors["malformed"] += 1
            return
        if checksum(body) != want:
            self.errors["checksum"] += 1
            return
        try:
            text = body.decode("ascii")
        except UnicodeDecodeError:
            self.errors["malformed"] += 1
            return
        fields = text.split(",")
        addr = fields[0]
        if addr.startswith("P") or not addr.isalnum():
            self.ignored += 1  # proprietary ($P...) or unknown address
            return
        if len(addr) == 6 and addr.endswith("H"):
            addr = addr[:5]  # Unicore high-precision variants (GNGGAH, GNRMCH...): same layout
        if len(addr) != 5:
            self.ignored += 1
            return
        kind = addr[2:]
        handler = _HANDLERS.get(kind)
        if handler is None:
            self.ignored += 1
            return
        try:
            handler(self, fields, out)
        except (IndexError, ValueError):
            self.errors["malformed"] += 1
            return
        self.frames += 1

    # -- epoch grouping -----------------------------------------------------------------
    def _enter(self, kind: str, time: str | None, out: list[dict[str, float | int | str | bool]]) -> None:
        time = _time_key(time) if time else None
        if (time and self._group_time and time != self._group_time) or (
            time and kind in self._group_types
        ):
            self._finish(out)
        if time:
            self._group_time = time
        self._group_types.add(kind)

    def _finish(self, out: list[dict[str, float | int | str | bool]]) -> None:
        g = self._group
        if g:
            values: dict[str, float | int | str | bool] = {}
            valid = g.get("valid", False)
            for key in ("latitude", "longitude", "altitude", "speed", "course"):
                if valid and key in g and g[key] is not None:
                    values[key] = g[key]  # type: ignore[assignment]
            for key in ("satellites", "hdop", "gnss_time"):
                if g.get(key) is not None:
                    values[key] = g[key]  # type: ignore[assignment]
            fix = g.get("fix")
            values["fix"] = str(fix) if valid and fix else "none"
            if not valid:
                for key in ("hdop", "gnss_time"):
                    values.pop(key, None)
            out.append(values)
        self._group = {}
        self._group_time = None
        self._group_types = set()

    def _set(self, key: str, value: object) -> None:
        if value is not None and self._group.get(key) is None:
            self._group[key] = value

    # -- sentences ----------------------------------------------------------------------
    def _rmc(self, f: list[str], out: list[dict[str, float | int | str | bool]]) -> None:
        self._enter("RMC", f[1] or None, out)
        status = f[2]
        mode = f[12] if len(f) > 12 else ""
        valid = status == "A" and mode != "N"
        lat, lon = _coord(f[3], f[4], 2), _coord(f[5], f[6], 3)
        if valid and lat is not None and lon is not None:
            self._group["valid"] = True
            self._set("latitude", lat)
            self._set("longitude", lon)
            kn = _float(f[7])
            self._set("speed", round(kn * KNOT, 4) if kn is not None else None)
            self._set("course", _float(f[8]))
            self._set("fix", _MODE.get(mode, "gps"))
        if f[1] and len(f[9]) == 6 and len(f[1]) >= 6:
            d, t = f[9], f[1]
            frac = t[7:] if len(t) > 7 else ""
            ms = f".{(frac + '000')[:3]}" if frac else ""
            century = "19" if d[4:6] >= "80" else "20"  # two-digit year; GPS time starts in 1980
            self._set("gnss_time", f"{century}{d[4:6]}-{d[2:4]}-{d[0:2]}T{t[0:2]}:{t[2:4]}:{t[4:6]}{ms}Z")

    def _gga(self, f: list[str], out: list[dict[str, float | int | str | bool]]) -> None:
        self._enter("GGA", f[1] or None, out)
        quality = f[6]
        lat, lon = _coord(f[2], f[3], 2), _coord(f[4], f[5], 3)
        sats = _int(f[7])
        if sats is not None:
            self._group["satellites"] = sats
        if quality not in ("", "0") and lat is not None and lon is not None:
            self._group["valid"] = True
            self._group["fix"] = _FIX.get(quality, "gps")  # GGA's quality beats RMC's mode
            self._set("latitude", lat)
            self._set("longitude", lon)
            self._set("altitude", _float(f[9]))
            self._set("hdop", _float(f[8]))

    def _vtg(self, f: list[str], out: list[dict[str, float | int | str | bool]]) -> None:
        self._enter("VTG", None, out)
        mode = f[9] if len(f) > 9 else ""
        if mode == "N":
            return
        kmh = _float(f[7])
        if kmh is not None:
            self._set("speed", round(kmh / 3.6, 4))
        self._set("course", _float(f[1]))

    def _gsa(self, f: list[str], out: list[dict[str, float | int | str | bool]]) -> None:
        self._enter("GSA", None, out)
        if f[2] in ("2", "3"):
            self._set("hdop", _float(f[16]))

    def _gll(self, f: list[str], out: list[dict[str, float | int | str | bool]]) -> None:
        self._enter("GLL", f[5] or None, out)
        mode = f[7] if len(f) > 7 else ""
        lat, lon = _coord(f[1], f[2], 2), _coord(f[3], f[4], 3)
        if f[6] == "A" and mode != "N" and lat is not None and lon is not None:
            self._group["valid"] = True
            self._set("latitude", lat)
            self._set("longitude", lon)
            self._set("fix", _MODE.get(mode, "gps"))


_HANDLERS = {
    "RMC": NmeaProtocol._rmc,
    "GGA": NmeaProtocol._gga,
    "VTG": NmeaProtocol._vtg,
    "GSA": NmeaProtocol._gsa,
    "GLL": NmeaProtocol._gll,
}
