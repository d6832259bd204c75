"""`edge-agent probe serial` recognises each simulator's protocol on a real pty, never writing to it."""

from __future__ import annotations

import itertools
import json
import os
import re
import threading
from collections.abc import Iterator

import pytest

from agent.cli.main import main
from drivers.can.protocol import lines_of
from drivers.can.simulator import bus_frames
from drivers.jbd_bms import simulator as jsim
from drivers.lines import simulator as lsim
from drivers.modbus.protocol import read_request
from drivers.modbus.simulator import RegisterSlave, co2_values, s8_bus_bytes
from drivers.nmea.simulator import epoch_bytes, fixes
from drivers.pms5003 import simulator as psim
from drivers.sds011 import simulator as ssim
from drivers.vesc import simulator as vsim
from tests.support.pty import PtyDevice


def _feeder(dev: PtyDevice, chunks: Iterator[bytes], stop: threading.Event) -> threading.Thread:
    def run() -> None:
        os.set_blocking(dev.master, False)
        for c in chunks:
            if stop.wait(0.02):
                return
            try:
                os.write(dev.master, c)
            except (BlockingIOError, OSError):
                pass

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


SOURCES = {
    "nmea": lambda: (epoch_bytes(f) for f in fixes(start=1_790_000_000.0)),
    "pms5003": lambda: (psim.frame_bytes(s) for s in psim.samples()),
    "sds011": lambda: (ssim.frame_bytes(s) for s in ssim.samples()),
    "modbus": lambda: (s8_bus_bytes(c) for c in co2_values()),
    "modbus_holding": lambda: (_holding_poll(i) for i in itertools.count()),
    "vesc": lambda: vsim.exchange_bytes(),
    "jbd_bms": lambda: jsim.exchanges(),
    "json_lines": lambda: (lsim.line_bytes(s, "json") for s in lsim.samples()),
    "kv_lines": lambda: (lsim.line_bytes(s, "kv") for s in lsim.samples()),
    "slcan": lambda: (lines_of(frames) for _, frames in bus_frames()),  # an open CANable on a live bus
    "csv_lines": lambda: itertools.chain([lsim.CSV_HEADER], (lsim.line_bytes(s, "csv") for s in lsim.samples())),
}


# What the probe should suggest: an S8 poll (fc 4, IR4 on the any-address) is the S8 driver.
DRIVERS = {"modbus": "senseair_s8", "modbus_holding": "modbus", "json_lines": "lines", "kv_lines": "lines",
           "csv_lines": "lines", "slcan": "can"}


def _holding_poll(i: int) -> bytes:
    """A generic energy meter on address 7: holding registers 0-1 read with function 3."""
    req = read_request(7, 3, 0, 2)
    rep = RegisterSlave(7, holding={0: 230 + i % 5, 1: 50}).respond(req)
    assert rep is not None
    return req + rep


@pytest.mark.parametrize("protocol", sorted(SOURCES))
def test_probe_identifies_simulator(protocol: str, pty_factory: type[PtyDevice],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    dev = pty_factory()
    stop = threading.Event()
    t = _feeder(dev, SOURCES[protocol](), stop)
    try:
        rc = main(["probe", "serial", dev.port, "--seconds", "0.6", "--json"])
    finally:
        stop.set()
        t.join()
    out = json.loads(capsys.readouterr().out)
    assert rc == 0, out
    assert out["recognised"] is True and out["protocol"] == protocol.removesuffix("_holding")
    assert out["baud"] == 9600 and out["driver"] == DRIVERS.get(protocol, protocol)
    assert out["frames"] >= 2 and out["samples"]
    if protocol == "slcan":
        n, _, ids = out["note"].partition(" frame ids (")
        assert int(n) >= 5 and ids.startswith("0xA0, 0xA2, 0x100") and out["errors"] == {}  # the 100 Hz ones first
    assert dev.read_available() == b""  # the probe never writes


def test_probe_human_output_shows_samples_and_errors(pty_factory: type[PtyDevice],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    dev = pty_factory()
    stop = threading.Event()

    def damaged() -> Iterator[bytes]:
        for i, s in enumerate(psim.samples()):
            f = bytearray(psim.frame_bytes(s))
            if i % 3 == 0:
                f[20] ^= 0xFF
            yield bytes(f)

    t = _feeder(dev, damaged(), stop)
    try:
        rc = main(["probe", "serial", dev.port, "--seconds", "0.6", "--baud", "9600"])
    finally:
        stop.set()
        t.join()
    text = capsys.readouterr().out
    assert rc == 0
    assert 'driver = "pms5003"' in text and "checksum=" in text
    assert re.search(r"^  pm1_0=\d+ µg/m³, pm2_5=\d+ µg/m³, pm10=\d+ µg/m³", text, re.M), text  # name=value unit
    assert "{'" not in text  # no Python dicts on the screen
    assert "hint: some frames were damaged" in text


def test_probe_silence_and_garbage_exit_1(pty_factory: type[PtyDevice], capsys: pytest.CaptureFixture[str]) -> None:
    dev = pty_factory()
    assert main(["probe", "serial", dev.port, "--seconds", "0.3"]) == 1
    assert "no bytes received" in capsys.readouterr().out
    stop = threading.Event()
    t = _feeder(dev, (bytes([(i * 37) % 251, 0x13, 0x99, (i * 11) % 256]) for i in itertools.count()), stop)
    try:
        rc = main(["probe", "serial", dev.port, "--seconds", "0.3", "--baud", "9600", "--baud", "4800", "--json"])
    finally:
        stop.set()
        t.join()
    out = json.loads(capsys.readouterr().out)
    assert rc == 1 and out["recognised"] is False
    assert [x["baud"] for x in out["tried"]] == [9600, 4800] and all(x["bytes"] > 0 for x in out["tried"])


def test_probe_missing_port_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", "serial", "/dev/serial/by-id/usb-nothing-here", "--seconds", "0.1"]) == 1
    assert "cannot open /dev/serial/by-id/usb-nothing-here" in capsys.readouterr().err


def test_probe_opens_the_port_read_only_and_respects_the_agents_lock(
    pty_factory: type[PtyDevice], capsys: pytest.CaptureFixture[str]
) -> None:
    import fcntl
    import os

    import serial

    from agent.cli.probe import open_readonly

    dev = pty_factory()
    fd = open_readonly(dev.port, 9600)
    try:
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
    finally:
        os.close(fd)
    agent_side = serial.Serial(dev.port, 9600, exclusive=True)  # how the agent's drivers open it
    try:
        assert main(["probe", "serial", dev.port, "--seconds", "0.1"]) == 1
        assert "is in use (is the agent running with this port?" in capsys.readouterr().err
    finally:
        agent_side.close()


def test_csv_rows_without_their_header_get_generic_columns() -> None:
    """The header went by at boot: the lines family's retry names the columns col1..colN."""
    from drivers.probe import analyse, recognised

    data = b"".join(lsim.line_bytes(s, "csv") for s in itertools.islice(lsim.samples(), 5))
    best = recognised(analyse(data))
    assert best is not None
    assert (best.protocol, best.driver, best.title, best.frames) == (
        "csv_lines", "lines", "CSV lines (no header seen; set `columns`)", 5)
    assert best.samples == [{"col1": 20.0, "col2": 35.0, "col3": 450, "col4": 300},
                            {"col1": 20.1, "col2": 35.5, "col3": 473, "col4": 311},
                            {"col1": 20.2, "col2": 36.0, "col3": 496, "col4": 322}]


def test_the_line_formats_come_from_the_registry() -> None:
    """No list of line formats in the probe: a family's `fallback` recognisers are tried after the checksummed ones."""
    from drivers.family import DriverFamily, Recogniser
    from drivers.probe import analyse, recognised
    from drivers.registry import registry

    reg = registry()
    assert [r.protocol for r in reg.families["lines"].probe if r.fallback] == ["json_lines", "kv_lines", "csv_lines"]
    fam = DriverFamily("lines_test", "test", (), probe=(
        Recogniser("semicolon_lines", "lines", "semicolon lines", "drivers.lines.recognise:csv_lines", fallback=True),))
    saved = dict(reg.families)
    reg.families.pop("lines")
    reg.add(fam)
    try:
        best = recognised(analyse(lsim.CSV_HEADER + b"".join(
            lsim.line_bytes(s, "csv") for s in itertools.islice(lsim.samples(), 4))))
        assert best is not None and (best.protocol, best.title, best.frames) == ("semicolon_lines", "semicolon lines", 4)
    finally:
        reg.remove("lines_test")
        reg.families.clear()
        reg.families.update(saved)  # in registration order
