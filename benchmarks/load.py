"""Idle and light load: CPU % of one core and RSS of the agent process with 10 devices at 1 Hz,
and peak RSS under a 10 k-reading burst. Limits in the same run: a bare Python process's RSS
and an idle asyncio loop's CPU.

Run: .venv/bin/python -m benchmarks.load [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tty
from pathlib import Path
from typing import Any

from agent.mosquitto import LocalBroker
from benchmarks.common import CountingSubscriber, machine, proc_status, start_agent

FAMILIES = ["senseair_s8", "pms5003", "sds011", "lines", "ruuvi", "aranet4", "nmea", "senseair_s8", "ruuvi", "lines"]


def cpu_seconds(pid: int) -> float:
    """CPU time of the process's live threads, from /proc/<pid>/task/*/schedstat (ns, not 10 ms ticks)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError):
            pass
    return total / 1e9


def measure(pid: int, seconds: float) -> dict[str, float]:
    c0, t0 = cpu_seconds(pid), time.monotonic()
    rss = []
    while time.monotonic() - t0 < seconds:
        time.sleep(1.0)
        rss.append(proc_status(pid)["VmRSS"])
    dt = time.monotonic() - t0
    return {"cpu_percent": (cpu_seconds(pid) - c0) / dt * 100, "rss_mb": max(rss) / 1e6, "rss_min_mb": min(rss) / 1e6}


TIMERS = """
import asyncio, sys, time
async def tick(i, n):
    t = time.monotonic() + i / n
    while True:
        t += 1.0
        await asyncio.sleep(max(0.0, t - time.monotonic()))
async def m(n):
    for i in range(n):
        asyncio.create_task(tick(i, n))
    await asyncio.Event().wait()
asyncio.run(m(int(sys.argv[1])))
"""


def baseline(seconds: float, timers: int = 1) -> dict[str, float]:
    """An asyncio loop doing nothing but `timers` 1 Hz timers at distinct phases: the floor any
    Python agent pays (with 10: one wake-up per second for each of 10 independent devices)."""
    p = subprocess.Popen([sys.executable, "-c", TIMERS, str(timers)])
    time.sleep(1)
    try:
        return measure(p.pid, min(seconds, 20))
    finally:
        p.kill()
        p.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    res: dict[str, Any] = {"machine": machine()}
    # As pip installs it: bytecode compiled once (an editable checkout with PYTHONDONTWRITEBYTECODE
    # compiles every module at each start, which leaves ~1 MB of compiler garbage in the heap).
    subprocess.run([sys.executable, "-m", "compileall", "-q", "agent", "drivers"],
                   cwd=Path(__file__).resolve().parent.parent, check=False)
    broker = LocalBroker().start()
    with tempfile.TemporaryDirectory() as d:
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        devs = "".join(
            f'[[devices]]\nid = "dev-{i}"\ndriver = "sim"\nfamily = "{fam}"\ninterval = "1s"\n'
            + (f'address = "C7:F5:2A:A1:B2:{i:02X}"\n' if fam in ("ruuvi", "aranet4") else "")
            for i, fam in enumerate(FAMILIES)
        )
        devs += f'[[devices]]\nid = "burst"\ndriver = "nmea"\nport = "{os.ttyname(slave)}"\nexpected_interval = "1d"\n'
        sub = CountingSubscriber("127.0.0.1", broker.port, "edge/gw-load/telemetry")
        p, log = start_agent(Path(d), "gw-load", broker.port, devs, "burst: opened")
        try:
            time.sleep(10)  # warm-up: connected, first health message, start-up garbage trimmed (5 s)
            res["light_load"] = measure(p.pid, a.seconds)
            res["light_load"]["readings_per_s"] = 10
            from drivers.nmea.simulator import epoch_bytes, fixes

            n0 = len(sub.seqs)
            data = b"".join(epoch_bytes(f) for f, _ in zip(fixes(start=1_790_000_000), range(10_000), strict=False))
            t0 = time.perf_counter()
            os.write(master, data) if len(data) < 65536 else [os.write(master, data[i:i + 4096]) for i in range(0, len(data), 4096)]
            sub.wait(n0 + 10_000, 120)
            res["burst"] = {"readings": 10_000, "seconds": time.perf_counter() - t0,
                            "peak_rss_mb": proc_status(p.pid)["VmHWM"] / 1e6}
        finally:
            p.terminate()
            p.wait(15)
            sub.close()
            log.close()
            os.close(master)
            os.close(slave)
    broker.close()
    res["baseline_idle_python"] = baseline(a.seconds)
    res["baseline_10_timers"] = baseline(a.seconds, 10)
    if a.json:
        print(json.dumps(res, indent=2))
        return
    ll, b, base, t10 = res["light_load"], res["burst"], res["baseline_idle_python"], res["baseline_10_timers"]
    print(f"machine: {res['machine']}")
    print(f"limit  idle asyncio loop (1 s timer) CPU / RSS          : {base['cpu_percent']:.3f} % / {base['rss_mb']:.1f} MB")
    print(f"limit  asyncio loop, 10 timers at 1 Hz (10 wake-ups/s)   : {t10['cpu_percent']:.3f} %")
    print(f"agent  10 devices x 1 Hz, CPU of one core (target 0.3 %)  : {ll['cpu_percent']:.3f} %")
    print(f"agent  10 devices x 1 Hz, steady RSS (target 40 MB)       : {ll['rss_mb']:.1f} MB = {ll['rss_mb'] / 1.048576:.1f} MiB (min {ll['rss_min_mb']:.1f} MB)")
    print(f"agent  10 k-reading burst: peak RSS (target 60 MB)        : {b['peak_rss_mb']:.1f} MB, drained in {b['seconds']:.1f} s")


if __name__ == "__main__":
    main()
