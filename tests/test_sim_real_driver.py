"""`sim` is the family's real driver on every path: what that driver does (reopen, error counting, the
scanner's de-duplication, CAN rate limits, polling on the shared grid) applies to simulated devices."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

import drivers.sim
from drivers.base import DeviceContext
from drivers.ble.decoders import Advert
from drivers.family import Decoder, SimParams
from drivers.registry import registry
from drivers.sim import SimDriver
from edge_common.device import DeviceConfig
from edge_common.model import Reading

REG = registry()
# simulated devices that talk (the asked ones, with a responder, are polled: tests/test_conformance.py)
TALKING = sorted(d for d in REG.simulated() if not REG.drivers[d].entry.responder)
ADVERTS = sorted(d for d in TALKING if REG.family_of(d).advert_decoder)


class _Run:
    """A `sim` device run in-process: its readings and every link state it reported, in order."""

    def __init__(self, keys: dict[str, Any]) -> None:
        self.dev = DeviceConfig.model_validate({"id": "s", "driver": "sim", **keys})
        self.got: list[Reading] = []
        self.ctx = DeviceContext(self.dev, self.got.append)
        self.links: list[tuple[str, str]] = []
        self.ctx.on_link_change = lambda c: self.links.append((c.link, c.link_detail))
        self.task: asyncio.Task[None] | None = None

    def start(self) -> _Run:
        self.task = asyncio.create_task(SimDriver(self.dev, self.ctx).run())
        return self

    async def until(self, done: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert self.task is not None and not self.task.done(), (what, self.task and self.task.exception())
            assert time.monotonic() < deadline, (what, len(self.got), self.links, dict(self.ctx.errors))
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def _finite(monkeypatch: pytest.MonkeyPatch, chunks: list[Any], decoder: Decoder) -> None:
    """The `sim` driver's simulation is `chunks` and then ends."""
    monkeypatch.setattr(drivers.sim, "source", lambda *_a, **_k: (iter(chunks), decoder))


def _chunks(driver: str, n: int) -> tuple[list[Any], Decoder]:
    chunks, decoder = REG.family_of(driver).simulation(driver, SimParams())
    return list(itertools.islice(chunks, n)), decoder


@pytest.mark.parametrize("driver", TALKING)
async def test_the_real_driver_reads_the_simulation_and_reopens_when_it_ends(
        driver: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each chunk decoded exactly as the family decodes it; the end of the simulation is a lost link, which
    the real driver reports and reopens (an advert driver: the source stops, the link goes down)."""
    chunks, _ = _chunks(driver, 3)
    _, decoder = REG.family_of(driver).simulation(driver, SimParams())
    if driver == "can":  # the real driver forwards by its own clock (test below): the first second is exact
        want = decoder.feed(chunks[0])
    else:
        want = [v for c in chunks for v in decoder.feed(c) + decoder.flush()]
    _finite(monkeypatch, chunks, decoder)
    run = _Run({"family": driver, "interval": "300ms"}).start()  # longer than any idle_flush (nmea: 0.15 s)
    try:
        down = ("connected", "disconnected")
        await run.until(lambda: [s for s, _ in run.links][:2] == list(down) and len(run.got) >= len(want),
                        "every simulated chunk read, then the link lost")
        if driver not in ADVERTS:
            await run.until(lambda: [s for s, _ in run.links][:3] == [*down, "connected"], "the real driver reopens")
    finally:
        await run.stop()
    assert [dict(r.values) for r in run.got][:len(want)] == want
    if driver != "can":
        assert len(run.got) == len(want)
    assert {r.driver for r in run.got} == {"sim"} and dict(run.ctx.errors) == {}
    lost = run.links[1][1]
    assert ("scanner stopped" if driver in ADVERTS else "link lost" if driver == "ble_nus"
            else "simulation ended") in lost, lost


def _broken(adv: Advert) -> Advert:
    """The advert with its family's payload cut to 5 bytes (a DecodeError for every family)."""
    md, sd = dict(adv.manufacturer_data), dict(adv.service_data)
    for data in (md, sd):
        for k in data:
            data[k] = data[k][:5]
    return replace(adv, manufacturer_data=md, service_data=sd)


@pytest.mark.parametrize("driver", ADVERTS)
async def test_simulated_adverts_go_through_the_scanners_subscription_and_the_advert_driver(
        driver: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A repeated advert is dropped as the scanner drops it; a malformed one is counted `decode` and one without
    the family's data `no_data`, as the advert driver counts them (the simulation's own decoder counts neither
    the repeat nor the empty advert)."""
    (a0, a1, a2), decoder = _chunks(driver, 3)
    empty = replace(a0, manufacturer_data={}, service_data={})
    _finite(monkeypatch, [a0, a0, empty, _broken(a1), a2], decoder)
    _, fresh = REG.family_of(driver).simulation(driver, SimParams())
    want = [fresh.feed(a0)[0], fresh.feed(a2)[0]]
    run = _Run({"family": driver, "interval": "50ms"}).start()
    try:
        await run.until(lambda: run.ctx.link == "disconnected", "the five adverts, then the source stopped")
        hub = run.ctx.services["ble"]
        sub = next(s for lst in hub._subs.values() for s in lst)
    finally:
        await run.stop()
    assert [dict(r.values) for r in run.got] == want
    assert dict(run.ctx.errors) == {"decode": 1, "no_data": 1}
    assert (sub.seen, sub.duplicates, sub.dispatched) == (5, 1, 4)
    assert run.links[0] == ("connected", "simulated scan")


async def test_simulated_can_bus_is_rate_limited_by_the_real_driver() -> None:
    """One second of bus every 100 ms: the real driver forwards each signal at most once per `min_interval`
    (1 s) of its own clock; the simulation's decoder, which counts a chunk as a second, would forward each
    chunk."""
    run = _Run({"family": "can", "interval": "100ms"}).start()
    seen: dict[str, list[float]] = {}
    try:
        def twice() -> bool:
            seen.clear()
            for r in run.got:
                for q in r.values:
                    seen.setdefault(q, []).append(r.ts)
            return len(seen) > 3 and all(len(ts) >= 3 for ts in seen.values())

        await run.until(twice, "three readings of every signal", timeout=30)
    finally:
        await run.stop()
    gaps = [b - a for ts in seen.values() for a, b in itertools.pairwise(ts)]
    assert min(gaps) >= 0.99, sorted(gaps)[:5]


async def test_the_devices_of_one_simulated_vehicle_sample_on_one_grid() -> None:
    """The vehicle's VESC and BMS are polled by their real drivers on the shared grid, so each poll finds the
    GNSS's chunk of the same instant (started mid-slot: a poll schedule of its own would be half an interval
    off the GNSS)."""
    interval = 0.2
    loop = asyncio.get_running_loop()
    await asyncio.sleep((math.floor(loop.time() / interval) + 1.5) * interval - loop.time())
    runs = {f: _Run({"family": f, "vehicle": "grid-test", "interval": f"{interval}s"}).start()
            for f in ("nmea", "vesc", "jbd_bms")}
    try:
        for f, run in runs.items():
            await run.until(lambda r=run: len(r.got) >= 6, f"6 readings of {f}")  # type: ignore[misc]
    finally:
        for run in runs.values():
            await run.stop()
    gnss = [r.ts for r in runs["nmea"].got]
    for f in ("vesc", "jbd_bms"):
        polled = runs[f].got[1:6]  # the first poll is at once, the others on the grid
        offsets = [min(abs(r.ts - t) for t in gnss) for r in polled]
        assert max(offsets) < 0.05, (f, offsets)
        assert runs[f].ctx.link_detail == f"sim:{f}" and dict(runs[f].ctx.errors) == {}
    # the controller and the GNSS see one ride: same speed on the readings of one instant
    vesc = runs["vesc"].got
    for g in runs["nmea"].got[1:6]:
        m = min(vesc, key=lambda r: abs(r.ts - g.ts))
        assert abs(float(g.values["speed"]) - float(m.values["speed"])) <= 0.9 * (abs(g.ts - m.ts) + 0.011) + 0.005
