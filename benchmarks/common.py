"""Shared benchmark helpers: machine description, process memory, a counting subscriber."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import paho.mqtt.client as mqtt


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.machine()}, {os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, Python {platform.python_version()}, SQLite {__import__('sqlite3').sqlite_version}"


def acking_publisher(port: int, client_id: str, window: int, expect: int) -> tuple[mqtt.Client, threading.Event]:
    """A connected bare paho QoS 1 publisher (`window` in flight); the event is set at the `expect`-th PUBACK."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    c.max_inflight_messages_set(window)
    c.max_queued_messages_set(0)
    done = threading.Event()
    acked = 0

    def on_publish(*a: Any) -> None:
        nonlocal acked
        acked += 1
        if acked == expect:
            done.set()

    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c, done


def emit(res: dict[str, Any], lines: list[str] | None, as_json: bool) -> None:
    """Print a benchmark result with the machine: as JSON, or the machine line and `lines`."""
    res["machine"] = machine()
    if as_json:
        print(json.dumps(res, indent=2))
        return
    print(f"machine: {res['machine']}")
    print("\n".join(lines or []))


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM in bytes of a process."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) * 1024
    return out


class CountingSubscriber:
    """Counts readings (and distinct seqs) on P/telemetry."""

    def __init__(self, host: str, port: int, topic: str) -> None:
        self.readings = 0
        self.seqs: set[int] = set()
        self.first: float | None = None
        self.last: float | None = None
        self._ok = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{os.getpid()}")
        self.c.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.c.on_subscribe = lambda *a: self._ok.set()
        self.c.on_message = self._msg
        self.c.connect(host, port)
        self.c.loop_start()
        self._ok.wait(10)

    def _msg(self, c: Any, u: Any, m: mqtt.MQTTMessage) -> None:
        body = json.loads(m.payload)
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        self.last = now
        for r in body.get("readings", ()):
            self.readings += 1
            self.seqs.add(r["seq"])

    def wait(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.seqs) >= n:
                return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def start_agent(folder: Path, gateway: str, broker_port: int, devices: str, opened: str,
                wrapper: Sequence[str] = (), cwd: Path | None = None) -> tuple[subprocess.Popen[bytes], IO[str]]:
    """The agent as a subprocess with `devices` (TOML) in `folder`, once its log says `opened`; (process, log file).
    `wrapper`: arguments put before `-m agent` (e.g. benchmarks.wakeups'); `cwd`: another checkout's agent."""
    cfg = folder / "agent.toml"
    cfg.write_text(f'[gateway]\nid = "{gateway}"\n[buffer]\npath = "b.db"\n[uplink]\nport = {broker_port}\n'
                   f'[control]\nsocket = "c.sock"\n' + devices)
    log = open(folder / "agent.log", "w")
    p = subprocess.Popen([sys.executable, *wrapper, "-m", "agent", "run", "--config", str(cfg)], stdout=log, stderr=log,
                         cwd=cwd)
    deadline = time.monotonic() + 30
    while opened not in (folder / "agent.log").read_text():
        if time.monotonic() > deadline or p.poll() is not None:
            p.kill()
            log.close()
            raise RuntimeError("agent did not start: " + (folder / "agent.log").read_text()[-2000:])
        time.sleep(0.05)
    return p, log
