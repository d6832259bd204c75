"""Light-load mechanics: the shared timer grid, acks riding along with readings, the uplink's
fetch chained onto the commit, liveness without polling."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from agent import ticks
from agent.buffer import Outbox
from agent.config import parse_config
from agent.model import Reading
from agent.pipeline import Pipeline
from agent.runtime import Agent
from agent.ticks import next_tick, sleep_to_tick
from tests.support.broker import Broker
from tests.support.mqtt import Subscriber
from tests.support.ticks import record_grid_deadlines
from tests.support.wait import until


def test_next_tick_is_a_shared_grid() -> None:
    assert next_tick(1.0, 1234.5) == 1235.0
    assert next_tick(5.0, 1234.5) == 1235.0 == next_tick(1.0, 1234.0001)
    assert next_tick(10.0, 1230.0) == 1240.0  # strictly after
    assert next_tick(60.0, 1234.5) == 1260.0


async def test_sleep_to_tick_wakes_on_the_grid(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    # The timer's deadline is what lies on the grid; when the loop gets to run after it is up to
    # the machine (a loaded one wakes us late), so the wake-up time is only checked for "not early".
    timers = record_grid_deadlines(monkeypatch)
    before = loop.time()
    await sleep_to_tick(0.05)
    woke = loop.time()
    monkeypatch.undo()
    [when] = [w for ws in timers.values() for w in ws]
    assert round(when / 0.05, 6).is_integer(), f"deadline {when} is on the 50 ms grid"
    assert before < when <= before + 0.05, "the next grid point, at most one period away"
    assert woke >= when - time.get_clock_info("monotonic").resolution  # never early (asyncio's tolerance)


def reading(n: int) -> Reading:
    return Reading(device="d", driver="sim", values={"n": n})


async def test_acks_alone_linger_and_ride_along_with_the_next_readings(tmp_path: Path) -> None:
    pipe = await Pipeline.open(Outbox(tmp_path / "b.db"), commit_interval=0.02)
    pipe.ack_linger = 0.5
    writer = asyncio.create_task(pipe.run_writer())
    try:
        for n in range(3):
            pipe.submit(reading(n))
        await until(lambda: pipe.outbox.depth == 3, what="3 committed")
        commits = pipe.commits
        pipe.ack(1, 2)
        await asyncio.sleep(0.2)
        assert pipe.commits == commits and pipe.outbox.depth == 3, "acks alone wait for the linger"
        pipe.submit(reading(3))
        await until(lambda: pipe.commits == commits + 1, what="the readings commit")
        assert pipe.outbox.depth == 2, "the acks went in the same transaction as the reading"
        pipe.ack(3, 3)
        t0 = time.monotonic()
        await until(lambda: pipe.outbox.depth == 1, what="acks committed after the linger")
        # 0.5 s linger, then one commit on the buffer thread; well below the 5 s default linger
        assert 0.4 < time.monotonic() - t0 < 4.0
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        await pipe.close()


async def test_rows_are_prefetched_for_a_waiting_uplink_only_while_valid(tmp_path: Path) -> None:
    pipe = await Pipeline.open(Outbox(tmp_path / "b.db"), commit_interval=0.02)
    try:
        token = pipe.want_rows(0, 100)
        pipe.submit(reading(0))
        pipe.submit(reading(1))
        await pipe.flush()
        rows = pipe.take_rows(token)
        assert rows is not None and [s for s, _ in rows] == [1, 2]
        assert pipe.outbox.protect_upto == 2, "handed to the uplink: protected before publishing"
        assert pipe.take_rows(token) is None, "taken once"
        stale = pipe.want_rows(2, 100)
        pipe.submit(reading(2))
        await pipe.flush()
        pipe.submit(reading(3))
        await pipe.flush()  # a later commit: the prefetched rows may miss its readings
        assert pipe.take_rows(stale) is None
        assert [s for s, _ in await pipe.call(pipe.outbox.fetch_for_send, 2, 100)] == [3, 4]
    finally:
        await pipe.close()


async def test_liveness_online_offline_online_without_polling(
    tmp_path: Path, broker: Broker, counter_driver: None
) -> None:
    cfg = parse_config({
        "gateway": {"id": "gw-live"},
        "control": {"socket": str(tmp_path / "control.sock")},  # not the system path: a second agent would refuse
        "buffer": {"path": str(tmp_path / "b.db"), "commit_interval": 0.02},
        "uplink": {"port": broker.port, "backoff_initial": 0.05, "backoff_max": 0.5},
        "devices": [{"id": "c", "driver": "counter", "interval": 0.05, "expected_interval": 1.0}],
    })
    sub = Subscriber(broker.host, broker.port, "edge/gw-live/events")
    agent = Agent(cfg)
    await agent.start()
    try:
        runner = agent.devices["c"]
        await until(lambda: runner.online is True, 5, "online")
        t_online = time.monotonic()
        runner.task.cancel()  # type: ignore[union-attr]  # the device falls silent
        await asyncio.gather(runner.task, return_exceptions=True)  # type: ignore[arg-type]
        await until(lambda: runner.online is False, 5, "offline")
        assert time.monotonic() - t_online < 1.0 + 1.0 + 0.5, "within expected_interval + the 1 s grid"
        runner.task = asyncio.create_task(runner.run())
        t0 = time.monotonic()
        await until(lambda: runner.online is True, 5, "online again")
        assert time.monotonic() - t0 < 0.5, "the reading wakes the supervisor at once"
        await until(lambda: len([m for m in sub.on("/events") if m.json()["type"] == "device"]) == 3, 10,
                    "three device events")
        states = [m.json()["state"] for m in sub.on("/events") if m.json()["type"] == "device"]
        assert states == ["online", "offline", "online"]
    finally:
        await agent.stop()
        sub.close()


def test_the_cli_entry_point_keeps_heavy_libraries_off_the_run_path() -> None:
    import subprocess
    import sys

    code = ("import sys, agent.cli.main, agent.runtime\n"
            "agent.cli.main.build_parser()  # every verb (what `edge-agent run` built before it only built its own)\n"
            "heavy = ['sqlite_utils', 'bleak', 'cryptography', 'jwt', 'pymodbus', 'jsonschema', 'agent.contract']\n"
            "print(','.join(m for m in heavy if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"loaded at start-up: {r.stdout.strip()}"


def test_run_builds_only_its_own_parser_and_parses_as_the_full_one(tmp_path: Path) -> None:
    """The other verbs' modules never enter the agent's memory (1.3 MB RSS); `run`'s arguments and
    help stay those of the full parser."""
    import argparse
    import subprocess
    import sys

    from agent.cli.main import VERB_MODULES, build_parser

    cfg = tmp_path / "bad.toml"
    cfg.write_text('[gateway]\nid = "BAD"\n')
    probe = ("import sys, runpy\nsys.argv = ['edge-agent', 'run', '--config', sys.argv[1]]\n"
             "try:\n    runpy.run_module('agent', run_name='__main__')\nexcept SystemExit as e:\n"
             "    print(e.code, sorted(m for m in sys.modules if m.startswith('agent.cli.')))\n")
    r = subprocess.run([sys.executable, "-c", probe, str(cfg)], capture_output=True, text=True, timeout=60)
    code, loaded = r.stdout.split(" ", 1)
    assert code == "78", r.stderr  # the configuration error, from the same `run` as before
    assert "gateway.id" in r.stderr
    others = [m for m in VERB_MODULES if m != "agent.cli.run" and f"'{m}'" in loaded]
    assert not others, others
    argv = ["run", "--config", str(cfg)]
    full, own = vars(build_parser().parse_args(argv)), vars(build_parser("run").parse_args(argv))
    assert full.keys() == own.keys() and all(full[k] == own[k] for k in full if k != "func")
    assert full["func"].__qualname__ == own["func"].__qualname__

    def run_help(p: argparse.ArgumentParser) -> str:
        verbs = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        return str(verbs.choices["run"].format_help())

    assert run_help(build_parser("run")) == run_help(build_parser())


async def test_a_swallowed_cancellation_still_ends_a_periodic_task() -> None:
    """CPython 3.11's wait_for can eat a cancel; the next tick sleep must still end the task."""
    ticks_done = 0
    swallowed = asyncio.Event()

    async def periodic() -> None:
        nonlocal ticks_done
        while True:
            try:
                await asyncio.sleep(3600)  # stands for an aiomqtt call whose wait_for eats the cancel
            except asyncio.CancelledError:
                swallowed.set()
            ticks_done += 1
            await ticks.sleep_to_tick(3600)

    task = asyncio.create_task(periodic())
    await asyncio.sleep(0)
    task.cancel()
    await swallowed.wait()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert ticks_done == 1


async def test_sim_devices_sample_on_the_shared_grid(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sim devices started at different moments sleep to the same instants: one wake-up for all."""
    from agent.config import DeviceConfig
    from drivers import driver_class
    from drivers.base import DeviceContext

    deadlines = record_grid_deadlines(monkeypatch)
    got: dict[str, list[Reading]] = {"a": [], "b": []}
    tasks = []
    for name in ("a", "b"):
        dev = DeviceConfig.model_validate({"id": name, "driver": "sim", "family": "sds011", "interval": 0.2})
        drv = driver_class("sim")(dev, DeviceContext(dev, got[name].append))
        tasks.append(asyncio.create_task(drv.run(), name=name))
        await asyncio.sleep(0.07)  # b starts off a's phase
    try:
        await until(lambda: len(got["a"]) >= 4 and len(got["b"]) >= 4, 10, "four samples each")
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert all(round(w / 0.2, 6).is_integer() for w in deadlines["a"] + deadlines["b"]), deadlines
    shared = set(deadlines["a"]) & set(deadlines["b"])
    assert len(shared) >= 2, f"the same instants, not each device's own phase: {deadlines}"
