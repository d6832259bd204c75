"""Pipeline benchmark: end-to-end readings/s, buffer accept and drain rates, with the physical
limits measured in the same run (raw sqlite3 executemany, bare QoS 1 publishers).

Run: .venv/bin/python -m benchmarks.pipeline [--readings N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import tty
from pathlib import Path
from typing import Any

from agent.buffer import Outbox
from agent.model import Reading, encode_reading
from agent.mosquitto import LocalBroker
from benchmarks.common import CountingSubscriber, acking_publisher, machine, proc_status

PAYLOAD_READING = Reading(
    device="a101-co2", driver="senseair_s8", values={"co2": 612, "temperature": 21.4, "humidity": 38.2},
    ts=1_790_000_000.123, tags={"room": "A101"},
)


def raw_sqlite(n: int, batch: int, synchronous: str) -> float:
    """rows/s of bare executemany into a WAL table, one commit per batch."""
    with tempfile.TemporaryDirectory() as d:
        db = sqlite3.connect(Path(d) / "raw.db", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, ts REAL, device TEXT, clock INT, mono REAL, payload TEXT)")
        payload = encode_reading(1, PAYLOAD_READING)
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            db.execute("BEGIN")
            db.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?, ?)",
                           ((i, 0.0, "a101-co2", 1, 0.0, payload) for i in range(start, start + batch)))
            db.execute("COMMIT")
        dt = time.perf_counter() - t0
        db.close()
    return n / dt


def outbox_accept(n: int, batch: int) -> float:
    """readings/s through Outbox.commit (seq assignment, encoding, limits) at the default FULL."""
    with tempfile.TemporaryDirectory() as d:
        ob = Outbox(Path(d) / "b.db").open()
        rs = [PAYLOAD_READING] * batch
        t0 = time.perf_counter()
        for _ in range(n // batch):
            ob.commit(rs)
        dt = time.perf_counter() - t0
        ob.close()
    return n // batch * batch / dt


def bare_publish(port: int, n: int, pipelined: bool) -> float:
    """Messages/s of single-reading QoS 1 publishes by a bare paho client."""
    c, done = acking_publisher(port, f"bench-pub-{pipelined}", 1000 if pipelined else 1, n)
    body = ('{"v":1,"gateway":"gw","epoch":"e","readings":[' + encode_reading(1, PAYLOAD_READING) + "]}").encode()
    t0 = time.perf_counter()
    if pipelined:
        for _ in range(n):
            c.publish("bench/raw", body, qos=1)
    else:
        for _ in range(n):
            c.publish("bench/raw", body, qos=1).wait_for_publish(10)
    done.wait(120)
    dt = time.perf_counter() - t0
    c.loop_stop()
    c.disconnect()
    return n / dt


def drain(port: int, n: int) -> dict[str, float]:
    """Pre-fill an outbox with n readings, then time the agent's uplink draining it."""
    from agent.config import parse_config
    from agent.pipeline import Pipeline
    from agent.uplink import Uplink

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "b.db"
        ob = Outbox(path).open()
        for _ in range(n // 5000):
            ob.commit([PAYLOAD_READING] * 5000)
        ob.close()
        cfg = parse_config({"gateway": {"id": "gw-bench"}, "buffer": {"path": str(path)},
                            "uplink": {"port": port}})
        sub = CountingSubscriber("127.0.0.1", port, "edge/gw-bench/telemetry")

        async def run() -> float:
            pipe = await Pipeline.open(Outbox(path), commit_interval=0.2)
            up = Uplink(cfg, pipe)
            w = asyncio.create_task(pipe.run_writer())
            t0 = time.perf_counter()
            u = asyncio.create_task(up.run())
            while up.stats.readings_acked < n:  # every PUBACK in (row deletes ride with later commits)
                await asyncio.sleep(0.05)
            dt = time.perf_counter() - t0
            for t in (u, w):
                t.cancel()
            await asyncio.gather(u, w, return_exceptions=True)
            await pipe.close()
            return dt

        dt = asyncio.run(run())
        got = sub.wait(n, 60)
        sub.close()
    return {"seconds": dt, "rate": n / dt, "received_all": float(got)}


def wire(protocol: str, n: int) -> list[bytes]:
    """n readings' worth of real wire bytes: SDS011 frames (10 B) or NMEA epochs (4 sentences)."""
    if protocol == "sds011":
        from drivers.sds011.simulator import frame_bytes, samples

        return [frame_bytes(s) for s, _ in zip(samples(), range(n), strict=False)]
    from drivers.nmea.simulator import epoch_bytes, fixes

    return [epoch_bytes(f) for f, _ in zip(fixes(start=1_790_000_000), range(n), strict=False)]


def end_to_end(port: int, n: int, protocol: str = "sds011") -> dict[str, Any]:
    """pty (real wire bytes) -> agent process -> Mosquitto -> subscriber."""
    with tempfile.TemporaryDirectory() as d:
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        cfg = Path(d) / "agent.toml"
        cfg.write_text(
            f'[gateway]\nid = "gw-bench"\n[buffer]\npath = "b.db"\n[uplink]\nport = {port}\n'
            f'[control]\nsocket = "c.sock"\n'
            f'[[devices]]\nid = "gnss"\ndriver = "{protocol}"\nport = "{os.ttyname(slave)}"\nbaud = 115200\n'
        )
        sub = CountingSubscriber("127.0.0.1", port, "edge/gw-bench/telemetry")
        log = open(Path(d) / "agent.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(cfg)],
                                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while "gnss: opened" not in (Path(d) / "agent.log").read_text():
            if time.monotonic() > deadline:
                raise RuntimeError("agent did not open the pty")
            time.sleep(0.02)
        data = wire(protocol, n)
        t0 = time.perf_counter()
        for chunk in data:
            os.write(master, chunk)
        ok = sub.wait(n, 120)
        dt = time.perf_counter() - t0
        mem = proc_status(proc.pid)
        proc.terminate()
        proc.wait(15)
        sub.close()
        log.close()
        os.close(master)
        os.close(slave)
    return {"rate": n / dt, "seconds": dt, "received": len(sub.seqs), "complete": ok,
            "peak_rss_mb": mem["VmHWM"] / 1e6, "rss_mb": mem["VmRSS"] / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--readings", type=int, default=20_000)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    n = a.readings
    broker = LocalBroker().start()
    try:
        res: dict[str, Any] = {"machine": machine(), "readings": n}
        res["raw_sqlite_full_rows_s"] = raw_sqlite(200_000, 500, "FULL")
        res["raw_sqlite_normal_rows_s"] = raw_sqlite(200_000, 500, "NORMAL")
        res["outbox_accept_readings_s"] = outbox_accept(200_000, 500)
        res["bare_qos1_sequential_msgs_s"] = bare_publish(broker.port, min(n, 5000), pipelined=False)
        res["bare_qos1_pipelined_msgs_s"] = bare_publish(broker.port, n, pipelined=True)
        res["drain"] = drain(broker.port, 200_000)
        res["end_to_end"] = end_to_end(broker.port, n, "sds011")
        res["end_to_end_nmea"] = end_to_end(broker.port, n, "nmea")
    finally:
        broker.close()
    if a.json:
        print(json.dumps(res, indent=2))
        return
    e2e, dr, e2n = res["end_to_end"], res["drain"], res["end_to_end_nmea"]
    print(f"machine: {res['machine']}")
    print(f"limit  raw sqlite3 executemany, WAL, synchronous=FULL, 500/commit : {res['raw_sqlite_full_rows_s']:>10,.0f} rows/s")
    print(f"limit  raw sqlite3 executemany, WAL, synchronous=NORMAL            : {res['raw_sqlite_normal_rows_s']:>10,.0f} rows/s")
    print(f"limit  bare paho QoS 1, one reading/message, wait each PUBACK      : {res['bare_qos1_sequential_msgs_s']:>10,.0f} msg/s")
    print(f"limit  bare paho QoS 1, one reading/message, pipelined             : {res['bare_qos1_pipelined_msgs_s']:>10,.0f} msg/s")
    print(f"agent  outbox accept (Outbox.commit, FULL, 500/commit)             : {res['outbox_accept_readings_s']:>10,.0f} readings/s")
    print(f"agent  drain of a 200k backlog to the broker                        : {dr['rate']:>10,.0f} readings/s ({dr['seconds']:.1f} s)")
    for name, e in (("SDS011", e2e), ("NMEA", e2n)):
        print(f"agent  end to end, {name:6} pty -> agent -> broker -> subscriber      : {e['rate']:>10,.0f} readings/s "
              f"(complete={e['complete']}, peak RSS {e['peak_rss_mb']:.1f} MB)")
    for name, e in (("SDS011", e2e), ("NMEA", e2n)):
        print(f"ratio  end to end ({name}) / bare one-reading-per-message QoS 1 sequential, pipelined: "
              f"{e['rate'] / res['bare_qos1_sequential_msgs_s']:.2f}x, {e['rate'] / res['bare_qos1_pipelined_msgs_s']:.2f}x"
              + ("   (target >= 1.0x pipelined)" if name == "NMEA" else ""))


if __name__ == "__main__":
    main()
