"""The transport seam: a capture recorded by `probe serial --capture` replayed into the real driver
(`replay = "capture.bin"`, recorded timestamps kept), and `sim` running the real driver over a simulator."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.model import format_ts
from drivers.base import DeviceContext
from drivers.pms5003 import simulator as psim
from drivers.pms5003.protocol import Pms5003Protocol
from drivers.sim import SimDriver
from drivers.transport.replay import MAGIC, ReplayTransport, read_capture, write_capture
from edge_common.device import DeviceConfig
from edge_common.errors import TransportClosed
from edge_common.model import Reading
from tests.support.agentproc import AgentProcess, write_config
from tests.support.broker import Broker
from tests.support.mqtt import Subscriber
from tests.support.pty import PtyDevice


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=60)


def test_capture_format_round_trip_truncation_and_raw(tmp_path: Path) -> None:
    recs = [(1_790_000_000.25, b"$GPGGA"), (1_790_000_001.5, b""), (1_790_000_002.0, bytes(range(256)))]
    write_capture(tmp_path / "c.bin", recs)
    data = (tmp_path / "c.bin").read_bytes()
    assert data.startswith(MAGIC) and list(read_capture(data)) == recs
    with pytest.raises(TransportClosed, match="capture truncated at byte"):
        list(read_capture(data[:-1]))
    raw = bytes(range(256)) * 3  # no header: raw bytes, no recorded times
    assert list(read_capture(raw)) == [(None, raw[:256]), (None, raw[256:512]), (None, raw[512:])]


async def test_replay_transport_keeps_gaps_and_times(tmp_path: Path) -> None:
    write_capture(tmp_path / "c.bin", [(100.0, b"a"), (100.3, b"b")])
    t = ReplayTransport(tmp_path / "c.bin")
    assert await t.read() == b"a" and t.recorded_time() == 100.0
    t0 = time.monotonic()
    assert await t.read() == b"b" and t.recorded_time() == 100.3
    assert time.monotonic() - t0 >= 0.25  # the recorded 0.3 s gap (a lower bound only)
    with pytest.raises(TimeoutError):  # after the end: silent, not closed (no replay loop)
        async with asyncio.timeout(0.2):
            await t.read()
    assert t.ended


def test_probe_capture_replayed_into_the_real_driver(tmp_path: Path, broker: Broker) -> None:
    """A field capture (probe serial --capture) -> `replay` -> the pms5003 driver -> Mosquitto, recorded times kept."""
    dev = PtyDevice()
    stop = threading.Event()

    def feed() -> None:
        for s in itertools.islice(psim.samples(), 40):
            if stop.is_set():
                return
            dev.write(psim.frame_bytes(s))
            time.sleep(0.05)

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    r = cli("probe", "serial", dev.port, "--baud", "9600", "--seconds", "1.5", "--capture", str(tmp_path / "cap.bin"))
    stop.set()
    t.join()
    dev.close()
    assert r.returncode == 0, r.stderr
    assert "protocol: Plantower" in r.stdout and "cap.bin" in r.stdout
    records = list(read_capture((tmp_path / "cap.bin").read_bytes()))
    proto = Pms5003Protocol()
    want = [(format_ts(ts), v) for ts, chunk in records for v in proto.feed(chunk)]  # type: ignore[arg-type]
    assert len(want) >= 10

    cfg = write_config(tmp_path / "agent.toml", broker_port=broker.port, devices="""
        [[devices]]
        id = "field-pm"
        driver = "pms5003"
        replay = "cap.bin"
        """)
    assert cli("config", "check", str(cfg)).returncode == 0
    sub = Subscriber("127.0.0.1", broker.port, "edge/gw-test/#")
    agent = AgentProcess(cfg).start()
    try:
        sub.wait_for(lambda: len(sub.readings()) >= len(want), 30, "every replayed frame")
        assert agent.terminate() == 0
    finally:
        agent.close()
        sub.close()
    got = [(x["ts"], x["values"]) for x in sub.readings()]
    assert got == want  # exact values, in order, each stamped with its chunk's recorded time
    assert {x["driver"] for x in sub.readings()} == {"pms5003"}


def test_replay_config_errors_name_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[gateway]\nid = "gw"\n[[devices]]\nid = "b"\ndriver = "ruuvi"\naddress = "C7:F5:2A:A1:B2:C3"\n'
                   'replay = "x.bin"\n')
    r = cli("config", "check", str(cfg))
    assert r.returncode == 78
    assert "devices[0].replay: driver 'ruuvi' cannot replay a capture (serial stream drivers can) (line 7)" in r.stderr
    cfg.write_text('[gateway]\nid = "gw"\n[[devices]]\nid = "a"\ndriver = "nmea"\nreplay = "missing.bin"\n')
    r = cli("config", "check", str(cfg))
    assert r.returncode == 78  # relative to the config's folder, and no `port` needed
    assert f"devices[0].replay: capture not found: {tmp_path / 'missing.bin'} (line 6)" in r.stderr


async def test_sim_is_the_real_driver_over_a_simulator_transport() -> None:
    from drivers.nmea.simulator import expected_values, fixes

    dev = DeviceConfig.model_validate({"id": "s", "driver": "sim", "family": "nmea", "interval": "50ms"})
    got: list[Reading] = []
    ctx = DeviceContext(dev, got.append)
    task = asyncio.create_task(SimDriver(dev, ctx).run())
    try:
        deadline = time.monotonic() + 20
        while len(got) < 5:
            assert time.monotonic() < deadline, (len(got), dict(ctx.errors))
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert ctx.link_detail == "simulated nmea" and ctx.open_transport is not None  # the StreamDriver's loop
    want: list[dict[str, Any]] = [expected_values(f) for f in itertools.islice(fixes(), len(got))]
    skip = {"gnss_time"}  # the simulator stamps fixes from now; compare the navigation values
    assert [{k: v for k, v in r.values.items() if k not in skip} for r in got] == [
        {k: v for k, v in w.items() if k not in skip} for w in want]
    assert {r.driver for r in got} == {"sim"}


async def test_a_held_back_epoch_keeps_its_chunks_time_when_the_next_chunk_comes_early() -> None:
    """A loaded machine reads a simulated chunk late, so the next comes before the idle-flush timer ran:
    the epoch the NMEA driver held back still goes out stamped with its own chunk's time."""
    from drivers.nmea.driver import NmeaDriver
    from drivers.nmea.simulator import epoch_bytes, fixes
    from drivers.transport.simulated import SimulatorTransport

    sent: list[float] = []

    def chunks() -> Iterator[bytes]:
        for i, f in enumerate(fixes(start=1_790_000_000.0)):
            sent.append(transport.recorded_time())  # stamped by the transport just before it asks for the chunk
            if i == 1:
                time.sleep(0.12)  # the loop is blocked: this chunk is fed 120 ms after its slot
            yield epoch_bytes(f)

    dev = DeviceConfig.model_validate({"id": "g", "driver": "nmea", "port": "sim:nmea"})
    got: list[Reading] = []
    ctx = DeviceContext(dev, got.append)
    transport = SimulatorTransport(chunks(), 0.2, "simulated nmea")

    async def open_transport() -> SimulatorTransport:
        return transport

    ctx.open_transport = open_transport
    task = asyncio.create_task(NmeaDriver(dev, ctx).run())
    try:
        deadline = time.monotonic() + 30
        while len(got) < 4:
            assert time.monotonic() < deadline, len(got)
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert [r.ts for r in got] == sent[:len(got)]  # before: 96 and 208 ms late for the first two
