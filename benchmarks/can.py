"""CAN: decode rates on one core, and the agent's CPU on a live 500 frames/s bus.

1. DBC decode + rate limiting (CanDecoder) on the simulated EV bus, frames/s on one core; and
   slcan line parsing + decode (SlcanReader, the driver's path), beside a 500 kbit/s bus's frame
   capacity and the pty's raw byte rate measured in the same run.
2. python-can's own slcan reader over a pty + the same decode (the reference the parser is
   tested against; the driver does not use it: this is why).
3. CPU % of one core of the agent process reading the simulated bus (~520 frames/s, an slcan
   adapter on a pty) with 20 forwarded signals at the default 1 s rate limit, beside an idle
   asyncio loop measured in the same run; and the agent's CPU with the adapter open on a silent bus.

Run: .venv/bin/python -m benchmarks.can [--seconds 30] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import threading
import time
import tty
from pathlib import Path
from typing import Any

import can

from agent.mosquitto import LocalBroker
from benchmarks.common import CountingSubscriber, emit, start_agent
from benchmarks.load import baseline, measure
from drivers.can.protocol import CanDecoder, CanOptions, SlcanReader, lines_of, load_dbc
from drivers.can.simulator import VEHICLE_DBC, SlcanAdapter, bus_frames

TWENTY = ["MCU_Motor", "BMS_Pack", "BMS_Cells", "ABS_WheelSpeeds", "VCU_Pedals", "VCU_Odometer"]  # 4+4+4+4+3+1
# A 500 kbit/s bus: a standard 8-byte data frame is 111 bits before stuffing (+ 3 bits interframe
# space); worst-case stuffing adds ~24 bits.
BUS_LIMIT_FPS = 500_000 / (111 + 3)
BUS_LIMIT_STUFFED = 500_000 / (111 + 3 + 24)


def messages(seconds: float) -> list[can.Message]:
    out = []
    for _, frames in itertools.islice(bus_frames(), int(seconds * 100)):
        out += [can.Message(arbitration_id=f.arbitration_id, data=f.data, dlc=f.dlc, is_extended_id=False)
                for f in frames]
    return out


def decode_rate(msgs: list[can.Message], min_interval: float, repeat: int = 5) -> float:
    best = 0.0
    for _ in range(repeat):
        d = CanDecoder(load_dbc(VEHICLE_DBC), CanOptions(dbc=VEHICLE_DBC, min_interval=min_interval))
        t0 = time.perf_counter()
        now = 0.0
        for m in msgs:
            now += 1 / 520
            d.decode(m, now)
        best = max(best, len(msgs) / (time.perf_counter() - t0))
    return best


def slcan_rate(data: bytes, repeat: int = 5) -> float:
    """Frames/s of SlcanReader + decode over the bytes in 4 KiB reads (what one tty read delivers)."""
    best = 0.0
    n = data.count(b"\r")
    for _ in range(repeat):
        d = CanDecoder(load_dbc(VEHICLE_DBC), CanOptions(dbc=VEHICLE_DBC))
        r = SlcanReader()
        t0 = time.perf_counter()
        for i in range(0, len(data), 4096):
            now = time.monotonic()
            for f in r.feed(data[i:i + 4096]):
                d.decode(f, now)
        best = max(best, n / (time.perf_counter() - t0))
    return best


WRITER = """
import os, sys
fd = int(sys.argv[1]); data = open(sys.argv[2], "rb").read()
view = memoryview(data)
while view:
    view = view[os.write(fd, view[:65536]):]
"""


def _feed(data: bytes, reader: Any) -> float:
    """Bytes of `data` pushed into a fresh pty by a writer process; `reader(slave_path, n)` consumes; s elapsed."""
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        try:
            ready = reader(os.ttyname(slave), None)
            t0 = time.perf_counter()
            p = subprocess.Popen([sys.executable, "-c", WRITER, str(master), f.name], pass_fds=(master,))
            ready()
            dt = time.perf_counter() - t0
            p.wait(30)
            return dt
        finally:
            os.close(master)
            os.close(slave)


def pty_raw_rate(data: bytes) -> float:
    """Bytes/s a pty carries to a plain os.read loop (the transport's limit here)."""
    def reader(path: str, _: Any) -> Any:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY)

        def run() -> None:
            got = 0
            while got < len(data):
                got += len(os.read(fd, 65536))
            os.close(fd)
        return run
    return len(data) / _feed(data, reader)


def slcan_path_rate(data: bytes, n_frames: int) -> float:
    """Frames/s through python-can's slcan reader on a pty plus the DBC decode (one thread, as the driver)."""
    def reader(path: str, _: Any) -> Any:
        bus = can.Bus(interface="slcan", channel=path, bitrate=500000, listen_only=True, sleep_after_open=0,
                      timeout=0.01)
        d = CanDecoder(load_dbc(VEHICLE_DBC), CanOptions(dbc=VEHICLE_DBC))

        def run() -> None:
            got = 0
            try:
                while got < n_frames:
                    m = bus.recv(2)
                    if m is None:
                        raise RuntimeError(f"stalled after {got} frames")
                    got += 1
                    d.decode(m, time.monotonic())
            finally:
                bus.shutdown()
        return run
    return n_frames / _feed(data, reader)


def agent_cpu(seconds: float, silent: bool) -> dict[str, float]:
    """CPU of the agent process with a `can` device on a simulated adapter (~520 frames/s, or a silent bus)."""
    broker = LocalBroker().start()
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    adapter = SlcanAdapter(master, bitrate=250000 if silent else 500000).start()
    try:
        with tempfile.TemporaryDirectory() as d:
            msgs = ", ".join(f'"{m}"' for m in TWENTY)
            sub = CountingSubscriber("127.0.0.1", broker.port, "edge/gw-can/telemetry")
            p, log = start_agent(Path(d), "gw-can", broker.port,
                                 f'[[devices]]\nid = "bus"\ndriver = "can"\nport = "{os.ttyname(slave)}"\n'
                                 f'dbc = "{VEHICLE_DBC}"\nopen_delay = 0\nmessages = [{msgs}]\n', "bus: opened")
            try:
                time.sleep(8)  # warm-up
                f0, r0 = adapter.sent_frames, sub.readings
                res = measure(p.pid, seconds)
                res["frames_per_s"] = (adapter.sent_frames - f0) / seconds
                res["readings_per_s"] = (sub.readings - r0) / seconds
                return res
            finally:
                p.terminate()
                p.wait(15)
                sub.close()
                log.close()
    finally:
        adapter.stop()
        os.close(master)
        os.close(slave)
        broker.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    msgs = messages(10)
    data = b"".join(lines_of(fr) for _, fr in itertools.islice(bus_frames(), 2000))  # 20 s of bus
    n_frames = data.count(b"\r")
    res: dict[str, Any] = {
        "decode_fps_rate_limited": decode_rate(msgs, 1.0),
        "decode_fps_every_signal": decode_rate(msgs, 0.0),
        "slcan_parse_decode_fps": slcan_rate(data),
        "pty_raw_bytes_per_s": max(pty_raw_rate(data) for _ in range(3)),
        "python_can_slcan_fps": max(slcan_path_rate(data, n_frames) for _ in range(3)),
        "slcan_bytes_per_frame": len(data) / n_frames,
        "bus_limit_fps": BUS_LIMIT_FPS, "bus_limit_fps_stuffed": BUS_LIMIT_STUFFED,
    }
    threading.Event().wait(1)
    res["agent_bus"] = agent_cpu(a.seconds, silent=False)
    res["agent_silent_bus"] = agent_cpu(min(a.seconds, 20), silent=True)
    res["baseline_idle_python"] = baseline(min(a.seconds, 20))
    ab, sb, base = res["agent_bus"], res["agent_silent_bus"], res["baseline_idle_python"]
    pty_fps = res["pty_raw_bytes_per_s"] / res["slcan_bytes_per_frame"]
    lines = [
        f"limit  500 kbit/s CAN bus, 8-byte standard frames          : {BUS_LIMIT_FPS:,.0f} frames/s "
        f"({BUS_LIMIT_STUFFED:,.0f} with worst-case bit stuffing)",
        f"limit  pty raw read, this run                              : {res['pty_raw_bytes_per_s'] / 1e6:.1f} MB/s "
        f"= {pty_fps:,.0f} slcan frames/s ({res['slcan_bytes_per_frame']:.1f} B each)",
        f"decode DBC + rate limit (1 s), 1 core                      : {res['decode_fps_rate_limited']:,.0f} frames/s",
        f"decode DBC, every signal forwarded (min_interval 0)        : {res['decode_fps_every_signal']:,.0f} frames/s",
        f"driver slcan lines parsed + DBC decode + rate limit, 1 core: {res['slcan_parse_decode_fps']:,.0f} frames/s",
        f"ref    python-can's slcan reader on a pty + decode         : {res['python_can_slcan_fps']:,.0f} frames/s",
        f"limit  idle asyncio loop (1 s timer) CPU                   : {base['cpu_percent']:.3f} %",
        f"agent  bus at {ab['frames_per_s']:.0f} frames/s, 20 signals forwarded at 1 s : "
        f"{ab['cpu_percent']:.2f} % of one core, {ab['readings_per_s']:.1f} readings/s, RSS {ab['rss_mb']:.1f} MB",
        f"agent  adapter open, silent bus                            : {sb['cpu_percent']:.2f} % of one core",
    ]
    emit(res, lines, a.json)


if __name__ == "__main__":
    main()
