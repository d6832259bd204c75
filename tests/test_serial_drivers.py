"""Serial drivers in-process on real ptys: Modbus against pymodbus' own RTU server, unplug/replug."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from agent.config import DeviceConfig
from agent.model import Reading
from drivers import driver_class
from drivers.base import DeviceContext, Driver
from drivers.lines import simulator as lsim
from drivers.pms5003 import simulator as psim
from drivers.sds011 import protocol as sdsp
from drivers.sds011 import simulator as ssim
from tests.support.modbus import ModbusBench


class Harness:
    def __init__(self, device: dict[str, Any]) -> None:
        self.device = DeviceConfig.model_validate(device)
        self.readings: list[Reading] = []
        self.links: list[str] = []
        self.ctx = DeviceContext(self.device, self.readings.append)
        self.ctx.on_link_change = lambda c: self.links.append(c.link)
        self.driver: Driver = driver_class(self.device.driver)(self.device, self.ctx)

    async def until(self, pred: Callable[[], bool], limit: float = 10.0, what: str = "") -> float:
        t0 = time.monotonic()
        while not pred():
            if time.monotonic() - t0 > limit:
                raise AssertionError(f"timed out waiting for {what}: link={self.ctx.link} "
                                     f"errors={dict(self.ctx.errors)} readings={len(self.readings)}")
            await asyncio.sleep(0.01)
        return time.monotonic() - t0

    def values(self) -> list[dict[str, Any]]:
        return [dict(r.values) for r in self.readings]


@contextlib.asynccontextmanager
async def running(h: Harness) -> AsyncIterator[Harness]:
    task = asyncio.create_task(h.driver.run())
    try:
        yield h
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
def bench_factory(tmp_path: Path):  # type: ignore[no-untyped-def]
    made: list[ModbusBench] = []

    def make(slave: int, registers: dict[int, int]) -> ModbusBench:
        b = ModbusBench(tmp_path / "usb-modbus", slave, registers)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


async def test_senseair_s8_published_bytes_on_the_wire(bench_factory) -> None:  # type: ignore[no-untyped-def]
    bench = bench_factory(0xFE, {3: 400})
    h = Harness({"id": "a101-co2", "driver": "senseair_s8", "port": str(bench.link), "poll_interval": "50ms"})
    async with running(h):
        await h.until(lambda: len(h.readings) >= 2, what="two readings")
        bench.registers[3] = 1234
        await h.until(lambda: h.values()[-1] == {"co2": 1234}, what="new CO2 value")
    assert h.values()[0] == {"co2": 400}
    # Exactly the request and reply printed in "Modbus on Senseair S8".
    assert bytes(bench.to_slave[:8]) == bytes.fromhex("FE 04 00 03 00 01 D5 C5")
    assert bytes(bench.to_master[:7]) == bytes.fromhex("FE 04 02 01 90 AC D8")
    assert not h.ctx.errors
    assert h.ctx.link == "connected"


async def test_modbus_register_map_types(bench_factory) -> None:  # type: ignore[no-untyped-def]
    regs = {0: 0xFF38, 1: 0x0002, 2: 0x0001, 10: 0x43DB, 11: 0x8C2E, 20: 6540}
    bench = bench_factory(7, regs)
    h = Harness({
        "id": "plc", "driver": "modbus", "port": str(bench.link), "slave": 7, "poll_interval": "50ms",
        "registers": [
            {"quantity": "temperature", "address": 0, "function": 3, "type": "int16", "scale": 0.1},
            {"quantity": "energy", "address": 1, "function": 3, "type": "uint32", "word_order": "little"},
            {"quantity": "co2", "address": 10, "function": 4, "type": "float32"},
            {"quantity": "humidity", "address": 20, "function": 4, "type": "uint16", "scale": 0.01, "offset": -40},
        ],
    })
    async with running(h):
        await h.until(lambda: len(h.readings) >= 1, what="a reading")
    assert h.values()[0] == {"temperature": -20.0, "energy": 65538, "co2": 439.0952, "humidity": 25.4}
    assert not h.ctx.errors


async def test_modbus_sparse_map_falls_back_to_separate_reads(bench_factory) -> None:  # type: ignore[no-untyped-def]
    """Registers a few words apart are read in one request; a device that answers exception 2
    (illegal data address) for the unmapped words in between still gets every register read."""
    bench = bench_factory(3, {0: 0xFF85, 20: 0x41AC, 21: 0x0000, 30: 0xFFFF, 31: 0xFFFE})
    bench.sparse = True
    h = Harness({
        "id": "meter", "driver": "modbus", "port": str(bench.link), "slave": 3, "poll_interval": "50ms",
        "registers": [
            {"quantity": "temperature", "address": 0, "function": 3, "type": "int16", "scale": 0.1},
            {"quantity": "flow", "address": 20, "function": 3, "type": "float32"},
            {"quantity": "delta", "address": 30, "function": 3, "type": "int32"},
        ],
    })
    async with running(h):
        await h.until(lambda: len(h.readings) >= 3, what="three readings")
    assert h.values()[1:3] == [{"temperature": -12.3, "flow": 21.5, "delta": -2}] * 2
    assert h.values()[0] in ({"temperature": -12.3}, {"temperature": -12.3, "flow": 21.5, "delta": -2})
    assert dict(h.ctx.errors) == {"exception": 1}  # the merged read, once; never again


async def test_modbus_timeouts_crc_errors_offline_and_recovery(bench_factory) -> None:  # type: ignore[no-untyped-def]
    bench = bench_factory(1, {0: 42})
    h = Harness({"id": "m", "driver": "modbus", "port": str(bench.link), "poll_interval": "20ms",
                 "timeout": "150ms", "offline_after": 3,
                 "registers": [{"quantity": "level", "address": 0}]})
    async with running(h):
        await h.until(lambda: len(h.readings) >= 1, what="first reading")
        bench.mode = "silent"
        await h.until(lambda: h.ctx.link == "disconnected", what="offline after 3 silent polls")
        assert h.ctx.errors["timeout"] >= 3
        assert "silent for 3 polls" in h.ctx.link_detail
        bench.mode = "corrupt"
        await h.until(lambda: h.ctx.errors["crc"] >= 2, what="CRC errors counted")
        n = len(h.readings)
        bench.mode = "ok"
        await h.until(lambda: h.ctx.link == "connected" and len(h.readings) > n, what="recovery")
    assert set(h.ctx.errors) == {"timeout", "crc"}
    assert all(v == {"level": 42} for v in h.values())  # nothing corrupt ever emitted


async def test_modbus_unplug_replug_resumes(bench_factory) -> None:  # type: ignore[no-untyped-def]
    bench = bench_factory(0xFE, {3: 500})
    h = Harness({"id": "s8", "driver": "senseair_s8", "port": str(bench.link), "poll_interval": "50ms",
                 "timeout": "200ms"})
    async with running(h):
        await h.until(lambda: len(h.readings) >= 1, what="first reading")
        bench.unplug()
        await h.until(lambda: h.ctx.link == "disconnected", what="disconnected")
        n = len(h.readings)
        bench.registers[3] = 501
        bench.plug()
        took = await h.until(lambda: len(h.readings) > n and h.ctx.link == "connected", what="resumed")
        assert took < 5.0
    assert h.values()[-1] == {"co2": 501}
    assert "disconnected" in h.links


@pytest.mark.parametrize(("driver", "frames", "extra"), [
    ("pms5003", lambda: [(psim.frame_bytes(s), s.values()) for s, _ in zip(psim.samples(), range(6), strict=False)], {}),
    ("sds011", lambda: [(ssim.frame_bytes(s), s.values()) for s, _ in zip(ssim.samples(), range(6), strict=False)], {}),
    ("lines", lambda: [(lsim.line_bytes(s, "kv"), s.values()) for s, _ in zip(lsim.samples(), range(6), strict=False)],
     {"fields": lsim.FIELDS}),
])
async def test_stream_driver_unplug_replug_via_symlink(tmp_path: Path, pty_factory, driver: str,  # type: ignore[no-untyped-def]
                                                       frames: Callable[[], list[tuple[bytes, dict[str, Any]]]],
                                                       extra: dict[str, Any]) -> None:
    dev = pty_factory(link=tmp_path / f"usb-{driver}")
    fs = frames()
    h = Harness({"id": f"d-{driver}", "driver": driver, "port": dev.port, **extra})
    async with running(h):
        await h.until(lambda: h.ctx.link == "connected", what="open")
        for b, _ in fs[:3]:
            dev.write(b)
        await h.until(lambda: len(h.readings) == 3, what="3 readings")
        dev.unplug()
        await h.until(lambda: h.ctx.link == "disconnected", what="disconnected")
        dev.plug()
        took = await h.until(lambda: h.ctx.link == "connected", what="reopened")
        assert took < 5.0
        for b, _ in fs[3:]:
            dev.write(b)
        await h.until(lambda: len(h.readings) == 6, what="6 readings")
    assert h.values() == [v for _, v in fs]


async def test_sds011_sends_mode_and_duty_cycle_on_open(tmp_path: Path, pty_factory) -> None:  # type: ignore[no-untyped-def]
    dev = pty_factory()
    h = Harness({"id": "pm", "driver": "sds011", "port": dev.port, "active_mode": True, "working_period": 5})
    async with running(h):
        await h.until(lambda: h.ctx.link == "connected", what="open")
        got = bytearray()
        await h.until(lambda: len(got.__iadd__(dev.read_available())) >= 38, what="two commands")
    assert bytes(got) == sdsp.set_active_mode() + sdsp.set_working_period(5)
    assert bytes(got[19:]) == bytes.fromhex("AA B4 08 01 05 00 00 00 00 00 00 00 00 00 00 FF FF 0C AB")


def test_config_check_names_keys() -> None:
    from agent.config import parse_config
    from agent.errors import ConfigError

    base = {"gateway": {"id": "gw"}}
    bad = [
        ({"id": "m", "driver": "modbus", "port": "/dev/x"}, "devices[0].registers: at least one register"),
        ({"id": "m", "driver": "modbus", "port": "/dev/x", "registers": [{"quantity": "a", "address": 0, "type": "int64"}]},
         "devices[0].registers[0].type"),
        ({"id": "s", "driver": "senseair_s8", "port": "/dev/x", "registers": []}, "devices[0].registers: unknown key"),
        ({"id": "p", "driver": "sds011", "port": "/dev/x", "working_period": 31}, "devices[0].working_period"),
        ({"id": "l", "driver": "lines", "port": "/dev/x", "fields": {"a": {"unit": "parsec"}}}, "devices[0].fields.a.unit"),
        ({"id": "l", "driver": "lines", "port": "/dev/x", "fields": {"a": {}}, "unknown_fields": "drop"},
         "devices[0].unknown_fields"),
        ({"id": "x", "driver": "sim", "family": "teapot"}, "devices[0].family"),
        ({"id": "x", "driver": "sim", "family": "nmea", "interval": "fast"}, "devices[0].interval"),
    ]
    for dev, key in bad:
        with pytest.raises(ConfigError) as e:
            parse_config({**base, "devices": [dev]})
        assert any(p.startswith(key) for p in e.value.problems), (key, e.value.problems)
    ok = parse_config({**base, "devices": [
        {"id": "m", "driver": "modbus", "port": "/dev/x", "preset": "scd30"},
        {"id": "s", "driver": "senseair_s8", "port": "/dev/x", "slave": 1},
        {"id": "x", "driver": "sim", "family": "senseair_s8", "interval": "2s"},
    ]})
    assert len(ok.devices) == 3


async def test_nmea_idle_flush_arms_one_timer_per_quiet_period(
    pty_factory, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    """An idle GNSS port costs no timers; an epoch read in several chunks goes out once, whole,
    after the line has been quiet for `idle_flush` (not a timer per read)."""
    from drivers.nmea.driver import NmeaDriver
    from drivers.nmea.simulator import epoch_bytes, expected_values, fixes

    monkeypatch.setattr(NmeaDriver, "idle_flush", 1.0)  # wide: a loaded machine must not split the epoch
    loop = asyncio.get_running_loop()
    armed: list[str] = []
    call_at = loop.call_at

    def recording_call_at(when: float, callback: Any, *args: Any, **kw: Any) -> asyncio.TimerHandle:
        name = getattr(callback, "__qualname__", "")
        if name.startswith(("_IdleFlush.", "Timeout.")):  # the idle-flush timer (or asyncio.timeout's)
            armed.append(name)
        return call_at(when, callback, *args, **kw)

    monkeypatch.setattr(loop, "call_at", recording_call_at)
    dev = pty_factory()
    fix = next(fixes(start=1_790_000_000))
    sentences = epoch_bytes(fix).splitlines(keepends=True)
    h = Harness({"id": "gnss", "driver": "nmea", "port": dev.port})
    async with running(h):
        await h.until(lambda: h.ctx.link == "connected", what="open")
        await asyncio.sleep(2.5)
        assert armed == [], "an idle port arms no timer"
        for s in sentences:
            dev.write(s)
            await asyncio.sleep(0.05)
        t_last = time.monotonic()
        await h.until(lambda: len(h.readings) == 1, what="the epoch")
        assert time.monotonic() - t_last >= 1.0 - 0.3, "flushed only after the quiet period"
        assert len(armed) <= 2, f"one timer per quiet period (re-armed once at most), not one per read: {armed}"
        await asyncio.sleep(1.5)
        assert len(h.readings) == 1
    assert h.values() == [expected_values(fix)]


async def test_serial_port_reads_a_tty_buffer_per_wakeup(pty_factory) -> None:  # type: ignore[no-untyped-def]
    """pyserial-asyncio-fast reads 1 KB per readiness event unless told otherwise; we ask for the
    tty's 4 KB (its private knob: this fails if an upgrade renames it)."""
    from drivers.transport.serialport import READ_SIZE, SerialPort, SerialSettings

    dev = pty_factory()
    port = await SerialPort.open(SerialSettings(dev.port, 115200))
    try:
        assert port._writer.transport._max_read_size == READ_SIZE == 4096  # type: ignore[attr-defined]
        dev.write(b"x" * 3000)
        got = b""
        while len(got) < 3000:
            got += await port.read()
        assert got == b"x" * 3000
    finally:
        await port.close()
