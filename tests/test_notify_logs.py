"""sd_notify client and the journald native-protocol log handler, against real AF_UNIX sockets."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any

from agent.logs import DeviceFilter, JournalFormatter, JournalHandler, device_context, encode_fields
from agent.notify import Notifier
from agent.ports import PipelineSnapshot, ServiceSnapshot
from tests.support.sdnotify import NotifyListener


def test_abstract_socket_and_message_format() -> None:
    lst = NotifyListener()  # abstract namespace: NOTIFY_SOCKET=@name
    try:
        sd = Notifier(lst.env(watchdog_usec=3_000_000))
        assert sd.enabled and sd.watchdog_interval == 1.5
        assert sd.ready("1/1 devices online")
        assert sd.status("two\nlines")
        assert sd.reloading()
        lst.wait_for(lambda: len(lst.snapshot()) == 3, 5, "3 messages")
        (_, m1), (_, m2), (_, m3) = lst.snapshot()
        assert m1 == {"READY": "1", "STATUS": "1/1 devices online"}
        assert m2 == {"STATUS": "two lines"}
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert (
            m3["RELOADING"] == "1" and now_usec - 5_000_000 < int(m3["MONOTONIC_USEC"]) <= now_usec
        )
    finally:
        lst.close()


def test_no_socket_no_watchdog_and_foreign_watchdog_pid() -> None:
    assert not Notifier({}).enabled and not Notifier({}).ready()
    other = Notifier(
        {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    )
    assert other.watchdog_interval is None, "the watchdog is meant for another process"
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000000"}).watchdog_interval == 0.5
    gone = Notifier({"NOTIFY_SOCKET": "/nonexistent/notify"})
    assert gone.send("READY=1") is False  # logged, never raised


def parse_native(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            k, v = line.split(b"=", 1)
            out[k.decode()] = v.decode()
            i = nl + 1
        else:
            (n,) = struct.unpack("<Q", data[nl + 1 : nl + 9])
            out[line.decode()] = data[nl + 9 : nl + 9 + n].decode()
            assert data[nl + 9 + n : nl + 10 + n] == b"\n"
            i = nl + 10 + n
    return out


def test_encode_fields_binary_for_multiline() -> None:
    data = encode_fields({"MESSAGE": "a\nb", "PRIORITY": "3"})
    assert data == b"MESSAGE\n" + struct.pack("<Q", 3) + b"a\nb\nPRIORITY=3\n"
    assert parse_native(data) == {"MESSAGE": "a\nb", "PRIORITY": "3"}


async def test_journal_handler_structured_device_fields(tmp_path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "journal.sock"))
    sock.settimeout(5)
    fallback = logging.StreamHandler()
    fallback.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    h = JournalHandler(fallback, path=str(tmp_path / "journal.sock"))
    h.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    h.addFilter(DeviceFilter())
    log = logging.getLogger("drivers.test")
    log.addHandler(h)
    log.propagate = False
    log.setLevel(logging.DEBUG)
    try:

        async def device_task() -> None:
            device_context.set(("a101-co2", "senseair_s8"))
            log.warning("port lost")

        await asyncio.create_task(device_task())
        log.error("device %s is offline", "b2", extra={"device": "b2", "driver": "ruuvi"})
        log.info("no device here")
        got = [parse_native(sock.recv(65536)) for _ in range(3)]
    finally:
        log.removeHandler(h)
        log.propagate = True
        log.setLevel(logging.NOTSET)
        h.close()
        sock.close()
    assert got[0]["MESSAGE"] == "drivers.test: port lost" and got[0]["PRIORITY"] == "4"
    assert (got[0]["EDGE_DEVICE"], got[0]["EDGE_DRIVER"]) == ("a101-co2", "senseair_s8")
    assert got[0]["SYSLOG_IDENTIFIER"] == "edge-agent" and got[0]["CODE_FUNC"] == "device_task"
    assert (got[1]["EDGE_DEVICE"], got[1]["EDGE_DRIVER"], got[1]["PRIORITY"]) == (
        "b2",
        "ruuvi",
        "3",
    )
    assert "EDGE_DEVICE" not in got[2] and got[2]["PRIORITY"] == "6"


def test_an_unhealthy_service_stops_the_watchdog() -> None:
    from agent.notify import stall_reason

    pipe = _pipe(queued=0)
    scanner = ServiceSnapshot(name="ble", status=None, healthy=True, unhealthy_reason="")
    assert stall_reason(pipe, [scanner], 10.0, now=1.0) is None
    scanner = dataclasses.replace(scanner, healthy=False, unhealthy_reason="no powered Bluetooth adapter")
    assert stall_reason(pipe, [scanner], 10.0, now=1.0) == "ble: no powered Bluetooth adapter"


def test_a_refusing_disk_is_progress_for_the_watchdog_a_hung_commit_is_not() -> None:
    from agent.notify import stall_reason

    # The writer retries a full / read-only disk every second: a restart would lose the queue.
    pipe = _pipe(queued=50, writer="read_only")
    assert stall_reason(pipe, [], 10.0, now=100.0) is None
    pipe = dataclasses.replace(pipe, writer="ok")
    assert stall_reason(pipe, [], 10.0, now=100.0) == "50 readings waiting 100s for a commit"
    pipe = dataclasses.replace(pipe, writer="read_only", busy_since=50.0)
    assert stall_reason(pipe, [], 10.0, now=100.0) == "buffer commit stuck for 50s"


def _pipe(**kw: Any) -> PipelineSnapshot:
    base: dict[str, Any] = dict(depth=0, queued=0, overflow=0, accepted=0, writer="ok", writer_detail="",
                                busy_since=None, last_commit=0.0, commit_interval=0.5)
    return PipelineSnapshot(**(base | kw))


def test_pymodbus_retry_warnings_stay_out_of_the_journal_unless_debugging() -> None:
    from agent.logs import setup_logging

    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("pymodbus").level)
    try:
        import drivers.modbus.driver  # noqa: F401  (imported by config validation before logging is set up)

        setup_logging("info")
        assert not logging.getLogger("pymodbus.logging").isEnabledFor(logging.WARNING)  # "Failed to connect"
        assert logging.getLogger("aiomqtt").isEnabledFor(logging.WARNING)
        setup_logging("debug")
        assert logging.getLogger("pymodbus.logging").isEnabledFor(logging.DEBUG)
    finally:
        root.handlers[:], _, _ = saved
        root.setLevel(saved[1])
        logging.getLogger("pymodbus").setLevel(saved[2])
