"""The Modbus RTU master (drivers/modbus/driver.py RtuMaster) over a byte transport: replies checked
against the published Senseair S8 frames, one write per request, stray bytes of a late reply dropped;
a `sim` Senseair S8 polled on the shared timer grid through a responding transport (no pty)."""

from __future__ import annotations

import asyncio
import contextlib
import os

import pytest

from agent.config import DeviceConfig
from agent.model import Reading
from drivers import driver_class
from drivers.base import DeviceContext
from drivers.modbus.driver import RtuMaster, _Failed, check_reply
from drivers.modbus.protocol import exception_reply, with_crc
from drivers.modbus.simulator import co2_values
from tests.support.ticks import record_grid_deadlines
from tests.support.wait import until

S8_REQUEST = bytes.fromhex("FE 04 00 03 00 01 D5 C5")  # "Modbus on Senseair S8": read IR4
S8_REPLY = bytes.fromhex("FE 04 02 01 90 AC D8")  # CO2 = 400 ppm


@pytest.mark.parametrize(("reply", "words", "kind", "code"), [
    (S8_REPLY, [400], None, None),
    (S8_REPLY[:-1] + bytes([S8_REPLY[-1] ^ 0x55]), None, "crc", None),
    (S8_REPLY[:4], None, "crc", None),
    (exception_reply(0xFE, 4, 2), None, "exception", 2),  # exception 2: illegal data address
    (with_crc(bytes.fromhex("FE 04 00")), None, "malformed", None),  # a valid frame with no registers
    (with_crc(bytes.fromhex("01 04 02 01 90")), None, "malformed", None),  # another slave's reply
])
def test_check_reply(reply: bytes, words: list[int] | None, kind: str | None, code: int | None) -> None:
    if kind is None:
        assert check_reply(S8_REQUEST, reply) == words
        return
    with pytest.raises(_Failed) as e:
        check_reply(S8_REQUEST, reply)
    assert (e.value.kind, e.value.code) == (kind, code)


class Scripted:
    """A byte transport whose reads return what the test puts in `rx`; writes are recorded."""

    name = "scripted"

    def __init__(self) -> None:
        self.rx: asyncio.Queue[bytes] = asyncio.Queue()
        self.writes: list[bytes] = []

    async def read(self, n: int = 4096) -> bytes:
        return await self.rx.get()

    async def write(self, data: bytes) -> None:
        self.writes.append(data)

    async def close(self) -> None:
        return None


async def test_one_write_per_request_and_a_reply_in_pieces() -> None:
    port = Scripted()
    master = RtuMaster(port, timeout=5.0)
    for piece in (S8_REPLY[:2], S8_REPLY[2:5], S8_REPLY[5:]):
        port.rx.put_nowait(piece)
    assert await master.exchange(S8_REQUEST) == [400]
    assert port.writes == [S8_REQUEST]


async def test_a_late_reply_is_dropped_before_the_next_request() -> None:
    port = Scripted()
    master = RtuMaster(port, timeout=0.05)
    with pytest.raises(_Failed) as e:
        await master.exchange(S8_REQUEST)
    assert e.value.kind == "timeout"
    port.rx.put_nowait(S8_REPLY)  # the first request's reply, after its timeout
    fresh = with_crc(bytes.fromhex("FE 04 02 04 D2"))  # CO2 = 1234 ppm

    async def answer_when_asked() -> None:
        await until(lambda: len(port.writes) == 2, what="the second request")
        port.rx.put_nowait(fresh)

    helper = asyncio.create_task(answer_when_asked())
    assert await master.exchange(S8_REQUEST) == [1234], "the second request's reply, not the stale one"
    await helper


async def test_sim_senseair_s8_polls_on_the_shared_grid_without_a_pty(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pty() -> tuple[int, int]:
        raise AssertionError("a sim S8 opened a pseudo-terminal")

    monkeypatch.setattr(os, "openpty", no_pty)
    by_task = record_grid_deadlines(monkeypatch)
    device = DeviceConfig.model_validate({"id": "s8", "driver": "sim", "family": "senseair_s8", "interval": "50ms"})
    readings: list[Reading] = []
    ctx = DeviceContext(device, readings.append)
    task = asyncio.create_task(driver_class("sim")(device, ctx).run())
    try:
        await until(lambda: len(readings) >= 4, what="four polls")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    monkeypatch.undo()
    expected = co2_values()
    assert [r.values for r in readings[:4]] == [{"co2": next(expected)} for _ in range(4)]
    assert not ctx.errors
    deadlines = [d for ds in by_task.values() for d in ds]
    assert len(deadlines) >= 3 and all(round(d / 0.05, 6).is_integer() for d in deadlines), deadlines
