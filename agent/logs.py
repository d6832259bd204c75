"""Logging setup: plain lines on a terminal; under systemd the journal's native protocol
(structured fields EDGE_DEVICE / EDGE_DRIVER) or, failing that, `<N>` priority prefixes.

The native protocol is a few lines (one datagram of `KEY=value` fields to
/run/systemd/journal/socket); python-systemd's JournalHandler would need a C extension.
Records get the device and driver from `extra={"device": .., "driver": ..}` or, inside a
device's task, from the `device_context` context variable set by the supervisor.
"""

from __future__ import annotations

import contextvars
import logging
import os
import socket
import struct
import sys

_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}
JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "edge-agent"

# (device id, driver name) of the device task that is logging, inherited by its sub-tasks.
device_context: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "edge_agent_device", default=None
)


def _priority(record: logging.LogRecord) -> int:
    return _PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)


class DeviceFilter(logging.Filter):
    """Adds `device` and `driver` attributes from the device context when not given."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "device", None) is None:
            ctx = device_context.get()
            record.device, record.driver = ctx if ctx else (None, None)
        return True


class JournalFormatter(logging.Formatter):
    """`<N>message` lines: journald reads the priority, adds its own timestamps."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _priority(record)
        msg = super().format(record)
        return "\n".join(f"<{prio}>{line}" for line in msg.splitlines())


def encode_fields(fields: dict[str, str]) -> bytes:
    """journald native protocol: `KEY=value\\n`; multi-line values as KEY\\n<le64 len><bytes>\\n."""
    out = bytearray()
    for k, v in fields.items():
        b = v.encode("utf-8", "replace")
        if b"\n" in b:
            out += k.encode() + b"\n" + struct.pack("<Q", len(b)) + b + b"\n"
        else:
            out += k.encode() + b"=" + b + b"\n"
    return bytes(out)


class JournalHandler(logging.Handler):
    """Sends records to journald with structured fields; falls back to `fallback` on error."""

    def __init__(
        self, fallback: logging.Handler, path: str = JOURNAL_SOCKET, identifier: str = IDENTIFIER
    ) -> None:
        super().__init__()
        self.path = path
        self.identifier = identifier
        self.fallback = fallback
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = {
                "MESSAGE": self.format(record),
                "PRIORITY": str(_priority(record)),
                "SYSLOG_IDENTIFIER": self.identifier,
                "LOGGER": record.name,
                "CODE_FILE": record.pathname,
                "CODE_LINE": str(record.lineno),
                "CODE_FUNC": record.funcName,
            }
            if getattr(record, "device", None):
                fields["EDGE_DEVICE"] = str(record.device)  # type: ignore[attr-defined]
            if getattr(record, "driver", None):
                fields["EDGE_DRIVER"] = str(record.driver)  # type: ignore[attr-defined]
            self.sock.sendto(encode_fields(fields), self.path)
        except OSError:  # too large (EMSGSIZE), journald gone: the line still goes to stderr
            self.fallback.handle(record)
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        self.sock.close()
        super().close()


def under_journal() -> bool:
    return bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))


def stderr_is_journal() -> bool:
    """JOURNAL_STREAM names our stderr (device:inode): systemd connected it to journald."""
    want = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return want == f"{st.st_dev}:{st.st_ino}"


def setup_logging(level: str = "info") -> None:
    handler: logging.Handler = logging.StreamHandler(sys.stderr)
    if under_journal():
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
        if stderr_is_journal() and os.path.exists(JOURNAL_SOCKET):
            fallback = handler
            handler = JournalHandler(fallback)
            handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    handler.addFilter(DeviceFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiomqtt", "bleak", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # pymodbus warns on every failed (re)open and retry; the modbus driver reports the same as
    # link state and counters, so its messages show only when debugging.
    logging.getLogger("pymodbus").setLevel(logging.DEBUG if root.level <= logging.DEBUG else logging.CRITICAL)
