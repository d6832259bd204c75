"""Soak: constant load with periodic broker outages; the agent's RSS and CPU every second.

Load: 16 `sim` devices (every family) at 20 Hz plus 4 serial devices on ptys (2 x nmea, pms5003,
sds011) fed at 20 Hz by this process: about 400 readings/s. Every 30-60 s (seeded) the broker
(Mosquitto with persistence) is stopped for 10 s and started again; a platform subscriber with
a persistent session (clean_session=False, QoS 1) gets what was queued for it meanwhile.

At the end the agent is stopped (SIGTERM), restarted without devices until its buffer is
drained, and every accepted seq (1 .. next_seq-1 of the buffer) must have arrived or be
covered by a gap event. RSS and CPU go to a PNG (benchmarks/out/soak-<date>.png, needs the
`bench` extra: matplotlib) and the RSS slope (MB/hour, least squares after warm-up) is printed.
Exit status 1 when a reading is missing or memory grew.

Run: .venv/bin/python -m benchmarks.soak --minutes 5      (hours on a Pi: --minutes 240)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import tty
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from agent.mosquitto import LocalBroker
from benchmarks.common import machine

GATEWAY = "gw-soak"
SIM_FAMILIES = ["nmea", "pms5003", "sds011", "senseair_s8", "lines", "ruuvi", "aranet4", "lines"] * 2
PTY_DRIVERS = ["nmea", "nmea", "pms5003", "sds011"]
OUT = Path(__file__).resolve().parent / "out"


@dataclass
class Sample:
    t: float  # seconds since start
    rss_mb: float
    cpu_percent: float
    broker_up: bool
    received: int


@dataclass
class Soak:
    samples: list[Sample] = field(default_factory=list)
    outages: list[tuple[float, float]] = field(default_factory=list)


class SeqSubscriber:
    """Platform side: a persistent QoS 1 session; received seqs as a bitmap, gaps from events."""

    def __init__(self, host: str, port: int) -> None:
        self.seen = bytearray(1 << 16)
        self.received = 0
        self.duplicates = 0
        self.gap_count = 0
        self._ok = threading.Event()
        self._lock = threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="soak-platform", clean_session=False)
        self.c.on_connect = self._connect
        self.c.on_subscribe = lambda *a: self._ok.set()
        self.c.on_message = self._msg
        self.c.reconnect_delay_set(0.1, 1.0)
        self.c.connect_async(host, port, keepalive=10)
        self.c.loop_start()
        if not self._ok.wait(15):
            raise RuntimeError("subscriber could not subscribe")

    def _connect(self, c: mqtt.Client, *a: Any) -> None:
        c.subscribe([(f"edge/{GATEWAY}/telemetry", 1), (f"edge/{GATEWAY}/events", 1)])

    def _msg(self, c: Any, u: Any, m: mqtt.MQTTMessage) -> None:
        body = json.loads(m.payload)
        with self._lock:
            if m.topic.endswith("/events"):
                if body.get("type") == "gap":
                    self.gap_count += int(body["count"])
                return
            for r in body["readings"]:
                seq = r["seq"]
                if seq >= len(self.seen) * 8:
                    self.seen.extend(bytearray(max(len(self.seen), seq // 8 + 1 - len(self.seen))))
                byte, bit = divmod(seq, 8)
                if self.seen[byte] & (1 << bit):
                    self.duplicates += 1
                else:
                    self.seen[byte] |= 1 << bit
                    self.received += 1

    def missing(self, upto: int) -> list[int]:
        with self._lock:
            return [s for s in range(1, upto) if s >= len(self.seen) * 8 or not self.seen[s // 8] & (1 << s % 8)]

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def proc_cpu_rss(pid: int) -> tuple[float, float]:
    """(CPU seconds, RSS MB) of a process (all its threads, including exited ones)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    return cpu, rss


def pty_feeder(masters: list[tuple[int, str]], rate: float, stop: threading.Event) -> None:
    """Write one frame per device every 1/rate s (real wire bytes from the simulators)."""
    from drivers.nmea.simulator import epoch_bytes, fixes
    from drivers.pms5003 import simulator as pms
    from drivers.sds011 import simulator as sds

    def source(driver: str, i: int) -> Iterator[bytes]:
        if driver == "nmea":
            return (epoch_bytes(f) for f in fixes(start=1_790_000_000 + 1000 * i))
        if driver == "pms5003":
            return (pms.frame_bytes(s) for s in pms.samples(seed=i))
        return (sds.frame_bytes(s) for s in sds.samples(seed=i))

    sources = [(fd, source(d, i)) for i, (fd, d) in enumerate(masters)]
    next_t = time.monotonic()
    while not stop.is_set():
        for fd, src in sources:
            try:
                os.write(fd, next(src))
                while os.read(fd, 4096) if _readable(fd) else b"":  # drain what the driver wrote
                    pass
            except OSError:
                pass
        next_t += 1 / rate
        stop.wait(max(0.0, next_t - time.monotonic()))


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def write_config(d: Path, port: int, ptys: list[tuple[str, str]], rate: float, devices: bool = True) -> Path:
    devs = ""
    if devices:
        for i, fam in enumerate(SIM_FAMILIES):
            devs += f'[[devices]]\nid = "sim-{i}"\ndriver = "sim"\nfamily = "{fam}"\ninterval = "{1 / rate}s"\n'
            if fam in ("ruuvi", "aranet4"):
                devs += f'address = "C7:F5:2A:A1:B2:{i:02X}"\n'
        for i, (driver, path) in enumerate(ptys):
            devs += f'[[devices]]\nid = "tty-{i}"\ndriver = "{driver}"\nport = "{path}"\n'
    cfg = d / "agent.toml"
    cfg.write_text(f'[gateway]\nid = "{GATEWAY}"\nhealth_interval = "10s"\n[buffer]\npath = "buffer.db"\n'
                   f'[uplink]\nport = {port}\nbackoff_initial = "0.2s"\nbackoff_max = "2s"\n'
                   f'[control]\nsocket = "c.sock"\n' + devs)
    return cfg


def start_agent(cfg: Path, log: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(cfg)], stdout=log, stderr=log,
                            env={**os.environ, "EDGE_AGENT_CLOCK": "synced"})


def accepted_upto(db: Path) -> int:
    """next_seq of the buffer (every seq below it was accepted)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        meta = int(con.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()[0])
        top = con.execute("SELECT max(seq) FROM outbox").fetchone()[0] or 0
        return max(meta, top + 1)
    finally:
        con.close()


def slope_mb_per_hour(samples: list[Sample]) -> float:
    n = len(samples)
    if n < 2:
        return 0.0
    mt = sum(s.t for s in samples) / n
    mr = sum(s.rss_mb for s in samples) / n
    var = sum((s.t - mt) ** 2 for s in samples)
    return 0.0 if var == 0 else sum((s.t - mt) * (s.rss_mb - mr) for s in samples) / var * 3600


def plot(soak: Soak, path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -e '.[bench]'): no PNG", file=sys.stderr)
        return False
    t = [s.t / 60 for s in soak.samples]
    cpu = [s.cpu_percent for s in soak.samples]
    k = 10
    avg = [sum(cpu[max(0, i - k + 1):i + 1]) / len(cpu[max(0, i - k + 1):i + 1]) for i in range(len(cpu))]
    fig, (ax1, ax2) = plt.subplots(2, 1, sharex=True, figsize=(10, 6))
    ax1.plot(t, [s.rss_mb for s in soak.samples], color="tab:blue", lw=1.2)
    ax1.set_ylabel("RSS (MB)")
    ax1.set_ylim(bottom=0)
    ax2.plot(t, cpu, color="tab:orange", lw=0.5, alpha=0.5, label="per second")
    ax2.plot(t, avg, color="tab:red", lw=1.2, label="10 s mean")
    ax2.set_ylabel("CPU (% of one core)")
    ax2.set_xlabel("minutes")
    ax2.set_ylim(bottom=0)
    ax2.legend(loc="upper right", fontsize=8)
    for ax in (ax1, ax2):
        for a, b in soak.outages:
            ax.axvspan(a / 60, b / 60, color="grey", alpha=0.2, lw=0)
        ax.grid(alpha=0.3)
    ax1.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--rate", type=float, default=20.0, help="readings/s per device (20 devices)")
    ap.add_argument("--outage", type=float, default=10.0, help="seconds the broker is down each time")
    ap.add_argument("--every", type=float, nargs=2, default=(30.0, 60.0), metavar=("MIN", "MAX"),
                    help="seconds between outages (uniform, seeded)")
    ap.add_argument("--warmup", type=float, default=60.0,
                    help="seconds left out of the RSS slope (at least until 30 s after the first outage)")
    ap.add_argument("--max-growth", type=float, default=2.0,
                    help="fail when the fitted RSS growth over the run exceeds this many MB")
    ap.add_argument("--seed", type=int, default=8)
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    rnd = random.Random(a.seed)
    subprocess.run([sys.executable, "-m", "compileall", "-q", "agent", "drivers"],
                   cwd=Path(__file__).resolve().parent.parent, check=False)  # as pip installs it: bytecode
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    broker = LocalBroker(persistent=True).start()  # its own 1777 dir: mosquitto drops root
    sub = SeqSubscriber(broker.host, broker.port)
    ptys = []
    for driver in PTY_DRIVERS:
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        os.set_blocking(master, False)
        ptys.append((master, slave, driver))
    cfg = write_config(work, broker.port, [(d, os.ttyname(s)) for _, s, d in ptys], a.rate)
    log = open(work / "agent.log", "ab")
    stop = threading.Event()
    feeder = threading.Thread(target=pty_feeder, args=([(m, d) for m, _, d in ptys], a.rate, stop), daemon=True)
    soak = Soak()
    agent = start_agent(cfg, log)
    t0 = time.monotonic()
    deadline = t0 + a.minutes * 60
    try:
        time.sleep(2)
        feeder.start()
        next_outage = t0 + rnd.uniform(*a.every)
        outage_end: float | None = None
        cpu0, _ = proc_cpu_rss(agent.pid)
        last = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(max(0.0, last + 1.0 - time.monotonic()))
            now = time.monotonic()
            if agent.poll() is not None:
                raise RuntimeError(f"agent exited with {agent.returncode}; see {work / 'agent.log'}")
            cpu, rss = proc_cpu_rss(agent.pid)
            soak.samples.append(Sample(now - t0, rss, (cpu - cpu0) / (now - last) * 100,
                                       broker.proc is not None, sub.received))
            cpu0, last = cpu, now
            if outage_end is None and now >= next_outage and now + a.outage < deadline - 5:
                broker.stop()
                outage_end = now + a.outage
                soak.outages.append((now - t0, outage_end - t0))
            elif outage_end is not None and now >= outage_end:
                broker.start()
                outage_end = None
                next_outage = now + rnd.uniform(*a.every)
        if outage_end is not None:
            broker.start()
        duration = time.monotonic() - t0
        stop.set()
        feeder.join(5)
        agent.send_signal(signal.SIGTERM)
        rc = agent.wait(30)
        upto = accepted_upto(work / "buffer.db")
        # Drain what is still buffered: the same buffer, no devices.
        connects = (work / "agent.log").read_text().count("uplink: connected")
        agent = start_agent(write_config(work, broker.port, [], a.rate, devices=False), log)
        drain_deadline = time.monotonic() + 180
        while time.monotonic() < drain_deadline and (work / "agent.log").read_text().count(
                "uplink: connected") == connects:  # running (signal handlers installed) and connected
            time.sleep(0.1)
        while time.monotonic() < drain_deadline and sub.received + sub.gap_count < upto - 1:
            time.sleep(0.2)
        agent.send_signal(signal.SIGTERM)
        rc2 = agent.wait(30)
    finally:
        stop.set()
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        sub.close()
        broker.close()
        log.close()
        for m, s, _ in ptys:
            os.close(m)
            os.close(s)
    missing = sub.missing(upto)
    lost = len(missing) - sub.gap_count
    # Warm-up: the first minute and the first outage with its drain (the working set of a drain).
    warmup = max(a.warmup, soak.outages[0][1] + 30 if soak.outages else 0.0)
    steady = [s for s in soak.samples if s.t >= warmup] or soak.samples
    slope = slope_mb_per_hour(steady)
    span_h = (steady[-1].t - steady[0].t) / 3600 if len(steady) > 1 else 0.0
    growth = slope * span_h
    rss = [s.rss_mb for s in steady] or [0.0]
    cpu = [s.cpu_percent for s in steady] or [0.0]
    rate = (upto - 1) / duration
    stamp = time.strftime("%Y%m%d-%H%M")
    png = a.out / f"soak-{stamp}.png"
    title = (f"edge-agent soak {stamp}: {len(SIM_FAMILIES) + len(PTY_DRIVERS)} devices, {rate:.0f} readings/s, "
             f"{len(soak.outages)} broker outages of {a.outage:.0f} s (grey); RSS slope {slope:+.2f} MB/h\n{machine()}")
    plotted = plot(soak, png, title)
    print(f"machine: {machine()}")
    print(f"duration {duration / 60:.1f} min, {upto - 1} readings accepted ({rate:.0f}/s), "
          f"{len(soak.outages)} broker outages of {a.outage:.0f} s")
    print(f"delivered: {sub.received} distinct seqs, {sub.duplicates} redelivered duplicates, "
          f"{sub.gap_count} reported in gap events, lost: {lost}")
    print(f"RSS after warm-up: min {min(rss):.1f} / median {sorted(rss)[len(rss) // 2]:.1f} / max {max(rss):.1f} MB; "
          f"slope {slope:+.2f} MB/h (fitted growth {growth:+.2f} MB over {span_h * 60:.1f} min from t={warmup:.0f} s)")
    print(f"CPU after warm-up: mean {sum(cpu) / len(cpu):.1f} % of one core, max {max(cpu):.1f} %")
    print(f"agent exit codes: {rc} (load) / {rc2} (drain); log {work / 'agent.log'}")
    if plotted:
        print(f"plot: {png}")
    (a.out / f"soak-{stamp}.json").write_text(json.dumps({
        "machine": machine(), "minutes": duration / 60, "accepted": upto - 1, "readings_per_s": rate,
        "received": sub.received, "duplicates": sub.duplicates, "gaps": sub.gap_count, "lost": lost,
        "outages": soak.outages, "rss_slope_mb_per_h": slope, "rss_growth_mb": growth,
        "rss_mb": {"min": min(rss), "max": max(rss)}, "cpu_percent_mean": sum(cpu) / len(cpu),
        "samples": [[s.t, s.rss_mb, s.cpu_percent, s.broker_up, s.received] for s in soak.samples],
    }))
    failed = []
    if lost:
        failed.append(f"{lost} accepted readings never arrived (first: {missing[:5]})")
    if growth > a.max_growth:
        failed.append(f"RSS grew {growth:.2f} MB over the run ({slope:+.2f} MB/h), limit {a.max_growth} MB")
    if rc != 0 or rc2 != 0:
        failed.append(f"agent exit codes {rc}/{rc2}")
    for f in failed:
        print(f"FAIL: {f}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
