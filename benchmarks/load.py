"""Idle and light load: CPU % of one core and RSS of the agent process with 10 devices at 1 Hz,
and peak RSS under a 10 k-reading burst. Limits in the same run: a bare Python process's RSS
and an idle asyncio loop's CPU, and ten bare 1 Hz timers (the floor of ten independent devices).

Two setups of the same ten devices, measured in turn: `sim`, the `sim` driver simulating each
device inside the agent (the simulated world's cost is the agent's), and `pty`, the serial devices
simulated in another process (benchmarks/ptyworld.py) on pseudo-terminals, read by the agent's
real serial drivers as on a Pi (the BLE tags stay `sim`: there is no radio here).

Run: .venv/bin/python -m benchmarks.load [--seconds 60] [--rounds N] [--before TREE] [--wakeups]
--before TREE: also measure another checkout (e.g. `git worktree add /tmp/old <commit>`), interleaved.
--wakeups: count the agent's loop wake-ups by cause (benchmarks/wakeups.py; CPU is then instrumented).
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

ROOT = Path(__file__).resolve().parent.parent

FAMILIES = ["senseair_s8", "pms5003", "sds011", "lines", "ruuvi", "aranet4", "nmea", "senseair_s8", "ruuvi", "lines"]
BLE = ("ruuvi", "aranet4")


def cpu_seconds(pid: int, main_only: bool = False) -> float:
    """CPU time of the process's live threads (or its main thread), from /proc/<pid>/task/*/schedstat
    (ns, not 10 ms ticks)."""
    total = 0
    for task in [str(pid)] if main_only else os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError):
            pass
    return total / 1e9


def measure(pid: int, seconds: float) -> dict[str, float]:
    c0, m0, t0 = cpu_seconds(pid), cpu_seconds(pid, main_only=True), time.monotonic()
    rss = []
    while time.monotonic() - t0 < seconds:
        time.sleep(1.0)
        rss.append(proc_status(pid)["VmRSS"])
    dt = time.monotonic() - t0
    return {"cpu_percent": (cpu_seconds(pid) - c0) / dt * 100, "rss_mb": max(rss) / 1e6, "rss_min_mb": min(rss) / 1e6,
            "main_thread_cpu_percent": (cpu_seconds(pid, main_only=True) - m0) / dt * 100}


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


def sim_device(i: int, fam: str) -> str:
    return (f'[[devices]]\nid = "dev-{i}"\ndriver = "sim"\nfamily = "{fam}"\ninterval = "1s"\n'
            + (f'address = "C7:F5:2A:A1:B2:{i:02X}"\n' if fam in BLE else ""))


def pty_device(i: int, fam: str, port: str) -> str:
    """The real driver of `fam` on `port`, with the keys under which it reads its simulator."""
    from agent.demo import _toml_value
    from drivers.family import resolve
    from drivers.registry import registry

    entry = registry().family_of(fam).entry(fam)
    keys = dict(resolve(entry.sim_device)) if entry.sim_device else {}
    if registry().family_of(fam).responder(fam) is not None:
        keys["poll_interval"] = "1s"
    return (f'[[devices]]\nid = "dev-{i}"\ndriver = "{fam}"\nport = "{port}"\n'
            + "".join(f"{k} = {_toml_value(v)}\n" for k, v in keys.items()))


def start_world() -> tuple[subprocess.Popen[bytes], list[str]]:
    """benchmarks.ptyworld serving the serial families of FAMILIES; (process, their ports in order)."""
    serial = [f for f in FAMILIES if f not in BLE]
    w = subprocess.Popen([sys.executable, "-m", "benchmarks.ptyworld", "1", *serial], stdout=subprocess.PIPE, cwd=ROOT)
    assert w.stdout is not None
    ports: list[str] = json.loads(w.stdout.readline())["ports"]
    return w, ports


def light_load(setup: str, port: int, seconds: float, tree: Path, wakeups: bool, burst: bool) -> dict[str, Any]:
    """One agent (from checkout `tree`) with the ten devices of `setup` ("sim" or "pty") and the idle
    `burst` NMEA port: CPU and RSS over `seconds` after a 10 s warm-up; with `burst`, then 10 k fixes."""
    world, ports = start_world() if setup == "pty" else (None, [])
    master, slave = os.openpty()  # the idle `burst` port: a fresh one for every agent
    tty.setraw(master)
    tty.setraw(slave)
    serial = iter(ports)
    devs = "".join(sim_device(i, f) if setup == "sim" or f in BLE else pty_device(i, f, next(serial))
                   for i, f in enumerate(FAMILIES))
    devs += f'[[devices]]\nid = "burst"\ndriver = "nmea"\nport = "{os.ttyname(slave)}"\nexpected_interval = "1d"\n'
    res: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        counts = Path(d) / "wakeups.json"
        wrapper = [str(ROOT / "benchmarks" / "wakeups.py"), str(counts), "10", str(seconds), "--"] if wakeups else []
        sub = CountingSubscriber("127.0.0.1", port, "edge/gw-load/telemetry")
        p, log = start_agent(Path(d), "gw-load", port, devs, "burst: opened", wrapper=wrapper,
                             cwd=tree if tree != ROOT else None)
        try:
            time.sleep(10)  # warm-up: connected, first health message, start-up garbage trimmed (5 s)
            w0 = cpu_seconds(world.pid) if world else 0.0
            res = measure(p.pid, seconds)
            if world:
                res["world_cpu_percent"] = (cpu_seconds(world.pid) - w0) / seconds * 100
            n0 = len(sub.seqs)
            res["readings_in_window"] = n0
            if wakeups:
                deadline = time.monotonic() + 10
                while not counts.exists() and time.monotonic() < deadline:
                    time.sleep(0.1)
                res["wakeups"] = json.loads(counts.read_text())
            if burst:
                from drivers.nmea.simulator import epoch_bytes, fixes

                data = b"".join(epoch_bytes(f) for f, _ in zip(fixes(start=1_790_000_000), range(10_000), strict=False))
                t0 = time.perf_counter()
                for i in range(0, len(data), 4096):
                    os.write(master, data[i:i + 4096])
                sub.wait(n0 + 10_000, 120)
                res["burst"] = {"readings": 10_000, "seconds": time.perf_counter() - t0,
                                "peak_rss_mb": proc_status(p.pid)["VmHWM"] / 1e6}
        finally:
            p.terminate()
            p.wait(15)
            sub.close()
            log.close()
            if world:
                world.kill()
                world.wait()
            os.close(master)
            os.close(slave)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--setups", default="sim,pty", help="comma-separated: sim, pty")
    ap.add_argument("--before", type=Path, help="another checkout measured beside this one, interleaved")
    ap.add_argument("--wakeups", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    res: dict[str, Any] = {"machine": machine(), "runs": []}
    trees = [("after", ROOT)] + ([("before", a.before.resolve())] if a.before else [])
    # As pip installs it: bytecode compiled once (an editable checkout with PYTHONDONTWRITEBYTECODE
    # compiles every module at each start, which leaves ~1 MB of compiler garbage in the heap).
    for _, tree in trees:
        subprocess.run([sys.executable, "-m", "compileall", "-q", "agent", "drivers", "edge_common"], cwd=tree, check=False)
    broker = LocalBroker().start()
    burst_done = False
    try:
        for rnd in range(a.rounds):
            for setup in a.setups.split(","):
                for label, tree in trees:
                    r = light_load(setup, broker.port, a.seconds, tree, a.wakeups,
                                   burst=not burst_done and label == "after" and setup == "sim")
                    burst_done = burst_done or "burst" in r
                    r.update(round=rnd, setup=setup, tree=label)
                    res["runs"].append(r)
                    if not a.json:
                        print(f"round {rnd} {label:6} {setup}: CPU {r['cpu_percent']:.3f} % (event loop's thread "
                              f"{r['main_thread_cpu_percent']:.3f} %), RSS {r['rss_mb']:.1f} MB"
                              + (f" (world process {r['world_cpu_percent']:.3f} %)" if "world_cpu_percent" in r else "")
                              + (f"; {r['wakeups']['wakeups_per_s']} wake-ups/s" if "wakeups" in r else ""), flush=True)
            res.setdefault("baseline_10_timers", []).append(baseline(a.seconds, 10)["cpu_percent"])
    finally:
        broker.close()
    res["baseline_idle_python"] = baseline(a.seconds)
    if a.json:
        print(json.dumps(res, indent=2))
        return
    base, t10 = res["baseline_idle_python"], res["baseline_10_timers"]
    print(f"machine: {res['machine']}")
    print(f"limit  idle asyncio loop (1 s timer) CPU / RSS          : {base['cpu_percent']:.3f} % / {base['rss_mb']:.1f} MB")
    print(f"limit  asyncio loop, 10 timers at 1 Hz (10 wake-ups/s)   : {', '.join(f'{x:.3f}' for x in t10)} %")
    for label, _ in trees:
        for setup in a.setups.split(","):
            runs = [r for r in res["runs"] if r["tree"] == label and r["setup"] == setup]
            cpu = ", ".join(f"{r['cpu_percent']:.3f}" for r in runs)
            rss = ", ".join(f"{r['rss_mb']:.1f}" for r in runs)
            print(f"agent  {label:6} {setup}: 10 devices x 1 Hz, CPU of one core (target 0.3 %): {cpu} %; steady RSS (target 40 MB): {rss} MB")
            for r in runs:
                if "wakeups" in r:
                    print(f"       round {r['round']} wake-ups/s by cause: {json.dumps(r['wakeups'])}")
    for r in res["runs"]:
        if "burst" in r:
            b = r["burst"]
            print(f"agent  10 k-reading burst: peak RSS (target 60 MB)        : {b['peak_rss_mb']:.1f} MB, drained in {b['seconds']:.1f} s")


if __name__ == "__main__":
    main()
