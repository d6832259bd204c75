"""Drain of a long-outage backlog: 72 h at 10 readings/s (2,592,000 readings) already in the
outbox, then the real uplink (Pipeline + Uplink) against a local Mosquitto with a counting
subscriber. The agent side runs in its own process; its RSS is sampled every second.

The limit measured in the same run: a bare paho QoS 1 publisher pushing the same messages
(same size, same window) through the same broker to the same subscriber, nothing read from disk.

Run: .venv/bin/python -m benchmarks.drain [--hours 72] [--rate 10] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GATEWAY = "gw-drain"
MAX_BYTES = 2_000_000_000  # the 72 h backlog (~520 MB with row overhead) exceeds the 256 MB default


def build_backlog(path: Path, n: int, rate: float, devices: int = 10) -> float:
    """Commit n readings (devices round robin, ts spread over n/rate seconds) in big batches."""
    from agent.buffer import Outbox
    from agent.model import Reading

    ob = Outbox(path, max_bytes=MAX_BYTES).open()
    t_start = 1_790_000_000.0
    t0 = time.perf_counter()
    batch = 20_000
    for start in range(0, n, batch):
        rs = [Reading(device=f"room-{i % devices:02d}", driver="senseair_s8",
                      values={"co2": 400 + i % 800, "temperature": 18 + (i % 90) / 10},
                      ts=t_start + i / rate, mono=i / rate) for i in range(start, min(start + batch, n))]
        ob.commit(rs)
    dt = time.perf_counter() - t0
    ob.close()
    return dt


class RangeSubscriber:
    """Counts readings on P/telemetry without parsing JSON: each message carries contiguous seqs
    lo..hi; a bitmap of delivered seqs tells lost and duplicate readings exactly."""

    def __init__(self, port: int, topic: str, n: int) -> None:
        import paho.mqtt.client as mqtt

        self.n = n
        self.seen = bytearray(n + 2)
        self.readings = 0
        self.messages = 0
        self.bad = 0
        self.first: float | None = None
        self.last: float | None = None
        self.done = threading.Event()
        ok = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-drain-sub-{os.getpid()}")
        self.c.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.c.on_subscribe = lambda *a: ok.set()
        self.c.on_message = self._msg
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        if not ok.wait(10):
            raise RuntimeError("subscriber did not subscribe")

    def _msg(self, c: Any, u: Any, m: Any) -> None:
        p: bytes = m.payload
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        self.last = now
        k = p.count(b'{"seq":')
        i = p.index(b'{"seq":') + 7
        lo = int(p[i:p.index(b",", i)])
        j = p.rindex(b'{"seq":') + 7
        hi = int(p[j:p.index(b",", j)])
        if hi - lo + 1 != k or hi > self.n:
            self.bad += 1
        else:
            self.seen[lo:hi + 1] = b"\x01" * k
        self.readings += k
        self.messages += 1
        if self.readings >= self.n and self.seen.count(1) >= self.n:
            self.done.set()

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def child(db: str, port: int) -> None:
    """The agent side: Pipeline + Uplink until the outbox is empty (every row acknowledged)."""
    from agent.buffer import Outbox
    from agent.config import parse_config
    from agent.pipeline import Pipeline
    from agent.uplink import Uplink

    cfg = parse_config({"gateway": {"id": GATEWAY}, "buffer": {"path": db, "max_bytes": MAX_BYTES},
                        "uplink": {"port": port}})

    async def run() -> dict[str, float]:
        pipe = await Pipeline.open(Outbox(db, max_bytes=MAX_BYTES), commit_interval=cfg.buffer.commit_interval)
        depth = pipe.outbox.depth
        up = Uplink(cfg, pipe)
        w = asyncio.create_task(pipe.run_writer())
        print(json.dumps({"ready": depth}), flush=True)
        sys.stdin.readline()  # the parent starts sampling, then says go
        t0 = time.perf_counter()
        u = asyncio.create_task(up.run())
        # Drained = every reading acknowledged by the broker (PUBACK). Deleting the acked rows
        # rides along with the next commit (Pipeline.ack_linger) and is timed separately.
        while up.stats.readings_acked < depth:
            await asyncio.sleep(0.05)
        dt = time.perf_counter() - t0
        await pipe.flush()  # the lingering acks: rows deleted now
        deleted_after = time.perf_counter() - t0
        for t in (u, w):
            t.cancel()
        await asyncio.gather(u, w, return_exceptions=True)
        await pipe.close()
        return {"drained": depth, "seconds": dt, "rows_deleted_after": deleted_after, "messages": up.stats.published,
                "readings_published": up.stats.readings_published}

    print(json.dumps(asyncio.run(run())), flush=True)


def sample(pid: int, stop: threading.Event, out: list[tuple[float, int, float]]) -> None:
    """(t, VmRSS bytes, CPU s) of pid every second."""
    tick = os.sysconf("SC_CLK_TCK")
    t0 = time.monotonic()
    while not stop.is_set():
        try:
            with open(f"/proc/{pid}/status") as f:
                rss = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmRSS:"))
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, StopIteration):
            break
        out.append((time.monotonic() - t0, rss, cpu))
        stop.wait(1.0)


def bare_limit(port: int, payloads: list[bytes], window: int) -> float:
    """Seconds for a bare paho QoS 1 publisher to get every PUBACK for the same messages."""
    from benchmarks.common import acking_publisher

    c, done = acking_publisher(port, "bench-drain-bare", window, len(payloads))
    t0 = time.perf_counter()
    for p in payloads:
        c.publish(f"edge/{GATEWAY}/telemetry", p, qos=1)
    done.wait(600)
    dt = time.perf_counter() - t0
    c.loop_stop()
    c.disconnect()
    return dt


def measure(n: int, rate: float) -> dict[str, Any]:
    from agent.config import parse_config
    from agent.mosquitto import LocalBroker

    res: dict[str, Any] = {"readings": n, "hours": n / rate / 3600}
    broker = LocalBroker().start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-drain-") as d:
            db = Path(d) / "buffer.db"
            res["build_s"] = build_backlog(db, n, rate)
            res["file_mb"] = sum(p.stat().st_size for p in Path(d).iterdir()) / 1e6
            # The limit, same run: the first 200k of these readings, as the uplink would batch them.
            from agent.buffer import Outbox

            ob = Outbox(db, max_bytes=MAX_BYTES).open()
            cfg = parse_config({"gateway": {"id": GATEWAY}, "uplink": {"port": broker.port}})
            head = (f'{{"v":1,"gateway":"{GATEWAY}","epoch":"{ob.epoch}","readings":[').encode()
            rows = ob.fetch(0, 200_000)
            ob.close()
            k = cfg.uplink.batch_max_readings
            payloads = [head + b",".join(p.encode() for _, p in rows[i:i + k]) + b"]}"
                        for i in range(0, len(rows), k)]
            del rows
            sub = RangeSubscriber(broker.port, f"edge/{GATEWAY}/telemetry", len(payloads) * k)
            bare_s = bare_limit(broker.port, payloads, cfg.uplink.max_inflight)
            sub.done.wait(120)
            res["bare_rate"] = len(payloads) * k / bare_s
            res["bare_received"] = sub.seen.count(1)
            sub.close()
            del payloads

            sub = RangeSubscriber(broker.port, f"edge/{GATEWAY}/telemetry", n)
            env = dict(os.environ, PYTHONPATH=str(ROOT))
            proc = subprocess.Popen([sys.executable, "-m", "benchmarks.drain", "--child", str(db),
                                     "--port", str(broker.port)], cwd=ROOT, env=env, text=True,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            assert proc.stdin is not None and proc.stdout is not None
            ready = json.loads(proc.stdout.readline())
            samples: list[tuple[float, int, float]] = []
            stop = threading.Event()
            th = threading.Thread(target=sample, args=(proc.pid, stop, samples), daemon=True)
            th.start()
            t0 = time.perf_counter()
            proc.stdin.write("go\n")
            proc.stdin.flush()
            out = json.loads(proc.stdout.readline())
            got_all = sub.done.wait(120)
            t_sub = (sub.last or time.perf_counter()) - t0
            with open(f"/proc/{proc.pid}/status") as f:
                hwm = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmHWM:"))
            stop.set()
            th.join()
            proc.wait(60)
            sub.close()
    finally:
        broker.close()
    rss = [s[1] for s in samples]
    steady = rss[len(rss) // 10:] or rss  # after the first tenth (connect, first fetches)
    cpu = samples[-1][2] - samples[0][2] if len(samples) > 1 else 0.0
    span = samples[-1][0] - samples[0][0] if len(samples) > 1 else 1.0
    res.update({
        "ready_depth": ready["ready"], "agent": out, "seconds": out["seconds"], "rate": n / out["seconds"],
        "subscriber_seconds": t_sub, "received_distinct": sub.seen.count(1), "received_total": sub.readings,
        "bad_messages": sub.bad, "complete": got_all and sub.seen.count(1) == n,
        "rss_min_mb": min(rss) / 1e6, "rss_max_mb": max(rss) / 1e6,
        "rss_steady_min_mb": min(steady) / 1e6, "rss_steady_max_mb": max(steady) / 1e6,
        "peak_rss_mb": hwm / 1e6, "cpu_percent_of_one_core": 100 * cpu / span, "samples": len(rss),
        "rss_trace_mb": [round(r / 1e6, 1) for r in rss],
    })
    return res


def report(r: dict[str, Any]) -> list[str]:
    return [
        f"backlog {r['readings']:,} readings ({r['hours']:.0f} h at {r['readings'] / r['hours'] / 3600:.0f}/s), "
        f"file {r['file_mb']:.0f} MB, built in {r['build_s']:.1f} s",
        f"limit  bare paho QoS 1, same 500-reading messages, window 16, no disk : {r['bare_rate']:>9,.0f} readings/s",
        f"agent  drain (Pipeline + Uplink -> Mosquitto, every PUBACK in; acked rows then deleted): {r['rate']:>9,.0f} readings/s "
        f"in {r['seconds']:.1f} s ({r['seconds'] / 60:.1f} min)",
        f"       subscriber got {r['received_distinct']:,} distinct of {r['readings']:,} "
        f"({r['received_total'] - r['received_distinct']} duplicates, complete={r['complete']})",
        f"       agent RSS sampled every 1 s ({r['samples']} samples): min {r['rss_min_mb']:.1f} MB, "
        f"max {r['rss_max_mb']:.1f} MB; after the first tenth {r['rss_steady_min_mb']:.1f}-"
        f"{r['rss_steady_max_mb']:.1f} MB; peak (VmHWM) {r['peak_rss_mb']:.1f} MB; "
        f"CPU {r['cpu_percent_of_one_core']:.0f} % of one core",
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hours", type=float, default=72.0)
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child")
    ap.add_argument("--port", type=int)
    a = ap.parse_args()
    if a.child:
        child(a.child, a.port)
        return
    from benchmarks.common import emit

    res = measure(int(a.hours * 3600 * a.rate), a.rate)
    trace = "RSS trace (MB): " + " ".join(str(x) for x in res["rss_trace_mb"])
    emit(res, None if a.json else [*report(res), trace], a.json)


if __name__ == "__main__":
    main()
