"""SD-card wear: bytes written to disk per accepted reading, from /proc/<pid>/io write_bytes of a
process running the real write path (Pipeline writer + Uplink to a local Mosquitto, so acked
rows are deleted as in service) at a steady 10 devices x 1 Hz, time-compressed by --accel
(readings/s and commit_interval scaled together, so each commit holds what it would hold in
real time). The window ends with the pipeline's close (flush + WAL checkpoint): checkpoint writes
are counted. The limit is the payload: the reading's wire JSON.

`--synchronous NORMAL` (with `--sync-interval`, scaled by --accel like the commit interval)
measures the other durability mode: commits without fsync, a checkpoint per sync interval.

Run: .venv/bin/python -m benchmarks.wear [--accel 10] [--seconds 240] [--page-size N]
     [--synchronous NORMAL --sync-interval 2] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.buffer import PAGE_SIZE  # the default of a new buffer file

ROOT = Path(__file__).resolve().parent.parent
INTERVALS = (0.1, 0.5, 1.0, 2.0, 5.0)
DEVICES = 10
FS_PAGE = os.sysconf("SC_PAGE_SIZE")  # the unit of /proc/<pid>/io write_bytes (page cache)


def io_counters() -> dict[str, int]:
    with open("/proc/self/io") as f:
        return {k: int(v) for k, v in (ln.split(":") for ln in f)}


def child(db: str, port: int, interval: float, accel: float, seconds: float, page_size: int | None,
          synchronous: str = "FULL", sync_interval: float = 2.0) -> None:
    """Steady load through the real writer and uplink; prints bytes written in the window."""
    from agent.buffer import Outbox
    from agent.config import parse_config
    from agent.model import Reading, encode_reading
    from agent.pipeline import Pipeline
    from agent.uplink import Uplink

    cfg = parse_config({"gateway": {"id": "gw-wear"}, "buffer": {"path": db}, "uplink": {"port": port}})
    kw: dict[str, Any] = {"synchronous": synchronous} if page_size is None else {
        "page_size": page_size, "synchronous": synchronous}

    def make(i: int) -> Reading:
        return Reading(device=f"room-{i % DEVICES:02d}", driver="senseair_s8",
                       values={"co2": 400 + i % 800, "temperature": 18 + (i % 90) / 10})

    async def run() -> dict[str, Any]:
        pipe = await Pipeline.open(Outbox(db, **kw), commit_interval=interval / accel,
                                   sync_interval=sync_interval / accel)
        up = Uplink(cfg, pipe)
        w = asyncio.create_task(pipe.run_writer())
        u = asyncio.create_task(up.run())
        await asyncio.wait_for(up.connected.wait(), 10)
        period = 1.0 / (DEVICES * accel)  # one reading per period, devices round robin
        warmup = int(DEVICES * max(10.0, 4 * interval))  # simulated seconds before the window
        total = warmup + int(DEVICES * seconds)
        t_next = time.monotonic()
        io0: dict[str, int] = {}
        acc0 = commits0 = syncs0 = 0
        payload_bytes = 0
        for i in range(total):
            if i == warmup:
                await pipe.flush()
                io0, acc0, commits0, syncs0 = io_counters(), pipe.accepted, pipe.commits, pipe.outbox.syncs
            r = make(i)
            if i >= warmup:
                payload_bytes += len(encode_reading(i + 1, r).encode())
            pipe.submit(r)
            t_next += period
            delay = t_next - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        deadline = time.monotonic() + 30
        while (pipe.queued or pipe.outbox.depth) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # every reading committed and acknowledged
        accepted, commits, syncs = pipe.accepted - acc0, pipe.commits - commits0, pipe.outbox.syncs - syncs0
        left = pipe.outbox.depth
        for t in (u, w):
            t.cancel()
        await asyncio.gather(u, w, return_exceptions=True)
        io_before_close = io_counters()
        await pipe.close()  # final flush + wal_checkpoint(TRUNCATE): counted
        io1 = io_counters()
        return {"interval": interval, "accepted": accepted, "commits": commits, "syncs": syncs, "left": left,
                "payload_bytes": payload_bytes, "write_bytes": io1["write_bytes"] - io0["write_bytes"],
                "close_bytes": io1["write_bytes"] - io_before_close["write_bytes"],
                "cancelled_write_bytes": io1["cancelled_write_bytes"] - io0["cancelled_write_bytes"],
                "wchar": io1["wchar"] - io0["wchar"], "page_size": page_size or PAGE_SIZE}

    print(json.dumps(asyncio.run(run())), flush=True)


def measure(accel: float, seconds: float, page_size: int | None, intervals: tuple[float, ...],
            synchronous: str = "FULL", sync_interval: float = 2.0) -> dict[str, Any]:
    from agent.mosquitto import LocalBroker

    rows = []
    broker = LocalBroker().start()
    try:
        for ci in intervals:
            with tempfile.TemporaryDirectory(prefix="bench-wear-") as d:
                args = [sys.executable, "-m", "benchmarks.wear", "--child", str(Path(d) / "buffer.db"),
                        "--port", str(broker.port), "--interval", str(ci), "--accel", str(accel),
                        "--seconds", str(seconds), "--synchronous", synchronous,
                        "--sync-interval", str(sync_interval)]
                if page_size:
                    args += ["--page-size", str(page_size)]
                out = subprocess.run(args, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                                     capture_output=True, text=True, timeout=seconds / accel * 3 + 120)
                if out.returncode != 0:
                    raise RuntimeError(out.stderr)
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    finally:
        broker.close()
    return {"accel": accel, "seconds": seconds, "page_size": page_size or PAGE_SIZE, "rows": rows,
            "synchronous": synchronous, "sync_interval": sync_interval}


def report(res: dict[str, Any]) -> list[str]:
    lines = [f"10 devices x 1 Hz for {res['seconds']:.0f} simulated s (x{res['accel']:.0f} time-compressed), "
             f"page_size {res['page_size']}, synchronous={res.get('synchronous', 'FULL')}"
             + (f" (sync every {res['sync_interval']:g} s)" if res.get("synchronous") == "NORMAL" else "")
             + ", uplink acking; limit = payload, target <= 2x",
             "commit_interval  readings  per commit  payload B/reading  written B/reading (of which close+ckpt)  ratio"
             "  fsync points  floor B/reading (ratio)"]
    for r in res["rows"]:
        n = max(r["accepted"], 1)
        per = r["write_bytes"] / n
        pay = r["payload_bytes"] / n
        lines.append(f"{r['interval']:>13.1f} s  {r['accepted']:>8}  {r['accepted'] / max(r['commits'], 1):>10.1f}"
                     f"  {pay:>17.0f}  {per:>17.0f} ({r['close_bytes'] / n:>5.0f})"
                     f"{'':>19}{per / pay:>5.1f}x{'  <= 2x' if per <= 2 * pay else '       '}"
                     f"  {r.get('syncs') or r['commits']:>6} ({'checkpoints' if r.get('syncs') else 'commits'})"
                     f"  {FS_PAGE * (r.get('syncs') or r['commits']) / n:>6.0f} "
                     f"({FS_PAGE * (r.get('syncs') or r['commits']) / n / pay:.1f}x)")
    lines.append(f"floor: write_bytes counts a {FS_PAGE} B page-cache page each time a write makes a clean page "
                 "dirty; a fsync cleans them, so every fsync point costs at least one page")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--accel", type=float, default=10.0)
    ap.add_argument("--seconds", type=float, default=240.0, help="simulated seconds per commit interval")
    ap.add_argument("--page-size", type=int)
    ap.add_argument("--intervals", default=",".join(str(i) for i in INTERVALS))
    ap.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL")
    ap.add_argument("--sync-interval", type=float, default=2.0, help="NORMAL: seconds between WAL syncs")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child")
    ap.add_argument("--port", type=int)
    ap.add_argument("--interval", type=float)
    a = ap.parse_args()
    if a.child:
        child(a.child, a.port, a.interval, a.accel, a.seconds, a.page_size, a.synchronous, a.sync_interval)
        return
    from benchmarks.common import emit

    res = measure(a.accel, a.seconds, a.page_size, tuple(float(x) for x in a.intervals.split(",")),
                  a.synchronous, a.sync_interval)
    emit(res, None if a.json else report(res), a.json)


if __name__ == "__main__":
    main()
