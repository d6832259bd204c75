"""Chaos: a seeded fault loop against a real agent, broker and reference receiver for N minutes.

The agent (`python -m agent run`, a subprocess) reads two `sim` devices (~350 readings/s) into a
buffer on a small tmpfs (root; else a plain directory and no disk faults) and publishes to a
Mosquitto with persistence; the reference receiver (agent/receiver.py) listens on a persistent
QoS 1 session and checks every message. Every 1-4 s (seeded) one fault:

- `kill`: kill -9 the agent, start it again;
- `broker`: stop the broker (clean, it keeps its queue) for 1-5 s;
- `disk`: fill the buffer's filesystem to the last block for 2-6 s, then free it;
- `powercut`: SIGSTOP the agent, copy db + -wal + -shm, kill it, restore the copy as a power cut
  may leave it (WAL cut at a random frame boundary past the durable point of the configured
  `synchronous`, devkit/powerloss.py), start it again on that;
- `pause`: SIGSTOP / SIGCONT for 0.5-2 s.

Then the faults stop, the agent is restarted without devices until its buffer is empty, and the
receiver's accounting is printed: accepted (seqs handed out, per epoch up to the highest seen),
delivered (unique), in gaps (gap counts), conflicts (a seq with other content), unexplained
(missing seqs no gap covers), gap balance, invalid, out of order. Exit 1 unless conflicts,
unexplained, gap balance, invalid and out of order are all 0 and the agent never died by itself.

Run: .venv/bin/python -m benchmarks.chaos --minutes 3 [--seed 11] [--synchronous NORMAL] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from agent.mosquitto import LocalBroker, quiet_port
from agent.receiver import Receiver
from benchmarks.common import emit
from devkit.powerloss import SUFFIXES, fill, power_cut, snapshot, stop

GATEWAY = "gw-chaos"
FAULTS = ("kill", "broker", "disk", "powercut", "pause")


class Platform:
    """The reference receiver on a persistent QoS 1 session (broker restarts lose nothing)."""

    def __init__(self, port: int, db: Path) -> None:
        self.rx = Receiver(db, since_epoch_start=True)  # kept in the workdir for a post-mortem
        self.lock = threading.Lock()
        self.last = time.monotonic()
        self._ok = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="chaos-platform", clean_session=False)
        self.c.on_connect = lambda c, u, f, rc, p=None: c.subscribe(f"edge/{GATEWAY}/#", qos=1)
        self.c.on_subscribe = lambda *a: self._ok.set()
        self.c.on_message = self._msg
        self.c.reconnect_delay_set(0.1, 1.0)
        self.c.connect_async("127.0.0.1", port, keepalive=10)
        self.c.loop_start()
        if not self._ok.wait(15):
            raise RuntimeError("the platform subscriber could not subscribe")

    def _msg(self, c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.rx.ingest(m.topic, m.payload, bool(m.retain))
            self.last = time.monotonic()

    def report(self) -> dict[str, Any]:
        with self.lock:
            return self.rx.report()

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


class AgentRun:
    """The agent subprocess; `died` counts exits nobody asked for."""

    def __init__(self, work: Path, buffer_dir: Path, port: int, synchronous: str) -> None:
        self.work, self.db = work, buffer_dir / "buffer.db"
        self.port, self.synchronous = port, synchronous
        self.proc: subprocess.Popen[bytes] | None = None
        self.died = 0
        self.log = open(work / "agent.log", "ab")

    def config(self, devices: bool) -> Path:
        cfg = self.work / "agent.toml"
        cfg.write_text(textwrap.dedent(f"""\
            [gateway]
            id = "{GATEWAY}"
            health_interval = "10s"
            [buffer]
            path = "{self.db}"
            commit_interval = "100ms"
            synchronous = "{self.synchronous}"
            sync_interval = "1s"
            min_free_disk = "1MB"
            max_bytes = "64MB"
            [uplink]
            host = "127.0.0.1"
            port = {self.port}
            backoff_initial = "100ms"
            backoff_max = "1s"
            [control]
            socket = "{self.work / 'control.sock'}"
            """) + (textwrap.dedent("""\
            [[devices]]
            id = "gnss"
            driver = "sim"
            family = "nmea"
            interval = "4ms"
            [[devices]]
            id = "co2"
            driver = "sim"
            family = "senseair_s8"
            interval = "10ms"
            """) if devices else ""))
        return cfg

    def start(self, devices: bool = True) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(self.config(devices))],
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            self.died += 1
            print(f"! the agent exited by itself ({self.proc.returncode}); see {self.work / 'agent.log'}",
                  file=sys.stderr)
            self.start()
            return False
        return True

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(20)


def powercut(agent: AgentRun, snap: Path, synchronous: str, rng: random.Random) -> str:
    assert agent.proc is not None
    stop(agent.proc.pid)
    snapshot(agent.db, snap)
    agent.kill()
    for suffix in SUFFIXES:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{agent.db}{suffix}")
    kept, committed = power_cut(snap / agent.db.name, agent.db, synchronous, rng)
    agent.start()
    return f"WAL cut to {kept}/{committed} frames"


def buffer_depth(db: Path) -> int | None:
    try:
        c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return int(c.execute("SELECT (SELECT count(*) FROM outbox) + (SELECT count(*) FROM events)").fetchone()[0])
        finally:
            c.close()
    except sqlite3.Error:
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="chaos-"))
    mnt = work / "buffer"
    mnt.mkdir()
    disk = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], capture_output=True).returncode == 0
    faults = FAULTS if disk else tuple(f for f in FAULTS if f != "disk")
    broker = LocalBroker(quiet_port(), persistent=True).start()  # its own world-writable dir: mosquitto drops root
    platform = Platform(broker.port, work / "platform.db")
    agent = AgentRun(work, mnt, broker.port, args.synchronous)
    done: Counter[str] = Counter()
    t0 = time.monotonic()
    try:
        agent.start()
        while time.monotonic() - t0 < args.minutes * 60:
            time.sleep(rng.uniform(1.0, 4.0))  # load between faults
            if not agent.alive():
                continue
            fault = rng.choice(faults)
            if fault == "kill":
                agent.kill()
                agent.start()
            elif fault == "broker":
                broker.stop()
                time.sleep(rng.uniform(1.0, 5.0))
                broker.start()
            elif fault == "disk":
                filler = fill(mnt)
                time.sleep(rng.uniform(2.0, 6.0))
                filler.unlink()
            elif fault == "powercut":
                powercut(agent, work / f"snap{done[fault]}", args.synchronous, rng)
            elif fault == "pause":
                assert agent.proc is not None
                stop(agent.proc.pid)
                time.sleep(rng.uniform(0.5, 2.0))
                agent.proc.send_signal(signal.SIGCONT)
            done[fault] += 1
        agent.alive()
        # Drain: no more readings, everything stored goes out, then a clean stop.
        agent.terminate()
        agent.start(devices=False)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and (buffer_depth(agent.db) != 0 or time.monotonic() - platform.last < 2):
            time.sleep(0.5)
        drained = buffer_depth(agent.db) == 0
        if agent.terminate() != 0:
            agent.died += 1
        rep = platform.report()
    finally:
        with contextlib.suppress(Exception):
            if agent.proc is not None and agent.proc.poll() is None:
                agent.kill()
        platform.close()
        broker.close()
        if disk:
            subprocess.run(["umount", "-l", str(mnt)], check=False)
    accepted = sum(e["last_seq"] for e in rep["epochs"])
    res = {
        "seed": args.seed, "minutes": args.minutes, "synchronous": args.synchronous,
        "faults": dict(done), "iterations": sum(done.values()), "disk_faults": disk,
        "epochs": len(rep["epochs"]), "accepted": accepted, "delivered": rep["received"],
        "in_gaps": rep["gap_readings"], "conflicts": rep["conflicts"], "unexplained": rep["unexplained"],
        "gap_balance": rep["gap_balance"], "duplicates": rep["duplicates"], "invalid": rep["invalid"],
        "out_of_order": rep["out_of_order"], "gap_conflicts": rep["gap_conflicts"],
        "quarantines_unknown": rep["quarantines_unknown"], "agent_died": agent.died, "drained": drained,
        "errors": rep["errors"][:5], "workdir": str(work),
    }
    ok = drained and not (res["conflicts"] or res["unexplained"] or res["gap_balance"] or res["invalid"]
                          or res["out_of_order"] or res["gap_conflicts"] or res["agent_died"])
    emit(res, [
        f"chaos: {res['iterations']} faults in {args.minutes:g} min (seed {args.seed}, synchronous "
        f"{args.synchronous}): {', '.join(f'{k} {v}' for k, v in sorted(done.items()))}",
        f"accepted {accepted} in {res['epochs']} epoch(s); delivered {res['delivered']}, in gaps {res['in_gaps']}, "
        f"conflicts {res['conflicts']}, unexplained {res['unexplained']}, gap balance {res['gap_balance']}",
        f"duplicates {res['duplicates']}, invalid {res['invalid']}, out of order {res['out_of_order']}, "
        f"agent died by itself {res['agent_died']}, drained {drained}",
        *(f"error: {e}" for e in res["errors"]),
        "OK" if ok else "NOT OK",
    ], args.json)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
