"""The buffer alone against the peer: edge-agent's `Outbox` vs ThingsBoard IoT Gateway's
`SQLiteEventStorage`, driven directly with the same events, each side in its own process.

Figures per side: put->durable rate (first put until the last event is committed on disk),
drain rate (read a pack + mark it processed, until empty) and peak RSS (VmHWM).
The limit measured in the same run: raw sqlite3 executemany into a WAL table at FULL.

The peer runs from a separate benchmark venv (`benchmarks/.venv-peer`, created on the first run
with `pip install thingsboard-gateway==PEER_VERSION`); nothing is installed into the project venv.

Run: .venv/bin/python -m benchmarks.peer_buffer [--events N] [--batch N] [--pack N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PEER_VENV = ROOT / "benchmarks" / ".venv-peer"
PEER_PACKAGE = "thingsboard-gateway"
PEER_VERSION = "3.8.5"


def vm(key: str) -> int:
    """VmRSS / VmHWM of this process in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _base_reading() -> Any:
    from agent.model import Reading

    return Reading(device="a101-co2", driver="senseair_s8",
                   values={"co2": 612, "temperature": 21.4}, ts=1_790_000_000.123, mono=1000.0)


class _Verifier:
    """O(1) per pack: packs must be contiguous in seq (nothing lost, nothing twice, in order)."""

    def __init__(self) -> None:
        self.count = 0
        self.next = 1
        self.bad = 0
        self.repeated = 0  # events delivered again (a pack overlapping the previous ones)
        self.skipped = 0  # seqs jumped over

    def pack(self, first: str, last: str, n: int) -> None:
        lo = int(first[7:first.index(",")])
        hi = int(last[7:last.index(",")])
        if lo != self.next or hi - lo + 1 != n:
            self.bad += 1
            if lo < self.next:
                self.repeated += min(self.next, hi + 1) - lo
            else:
                self.skipped += lo - self.next
        self.next = max(self.next, hi + 1)
        self.count += n


# -- the peer ------------------------------------------------------------------------------
def child_peer(n: int, directory: str, serialize: bool = False) -> dict[str, Any]:
    """ThingsBoard's SQLiteEventStorage: put() -> RAM queue -> writer thread -> SQLite."""
    import logging
    import threading

    from agent.model import encode_reading

    class TraceLogger(logging.Logger):
        """What the gateway's TbLogger adds: a `trace` level (5), off at the default INFO."""

        def trace(self, msg: object, *args: Any, **kw: Any) -> None:
            if self.isEnabledFor(5):
                self._log(5, msg, args, **kw)

    from thingsboard_gateway.storage.sqlite.sqlite_event_storage import SQLiteEventStorage

    log = TraceLogger("storage", logging.INFO)
    log.addHandler(logging.StreamHandler(sys.stderr))
    base = _base_reading()
    rss_start = vm("VmRSS")
    storage = SQLiteEventStorage({"data_file_path": directory + "/"}, log, threading.Event())
    db_path = os.path.join(directory, "data.db")
    probe = sqlite3.connect(db_path)  # a separate connection sees only committed data

    # Event i is byte-identical to what our Outbox stores for seq i; only the seq differs, so the
    # producer builds it by concatenation (the caller's encoding is not the buffer's cost).
    tail = encode_reading(0, base)[len('{"seq":0'):]
    assert encode_reading(n, base) == '{"seq":' + str(n) + tail
    put = storage.put
    t0 = time.perf_counter()
    if serialize:
        # The same work as ours: the gateway serializes each data pack right before put()
        # (TBGatewayService.__send_data_pack_to_storage: simplejson dumps, compact, ignore_nan).
        from simplejson import dumps

        def event(seq: int) -> str:
            return dumps({"seq": seq, "device": base.device, "driver": base.driver,  # type: ignore[no-any-return]
                          "ts": "2026-09-21T14:13:20.123Z", "clock": base.clock, "values": dict(base.values),
                          "tags": {}}, separators=(",", ":"), skipkeys=True, ignore_nan=True)

        assert event(n) == encode_reading(n, base)
        t0 = time.perf_counter()
        for seq in range(1, n + 1):
            put(event(seq))
    else:
        for seq in range(1, n + 1):
            put('{"seq":' + str(seq) + tail)
    t_put = time.perf_counter() - t0
    while (probe.execute("SELECT max(id) FROM messages").fetchone()[0] or 0) < n:
        time.sleep(0.002)
    t_durable = time.perf_counter() - t0
    hwm_put = vm("VmHWM")
    probe.close()

    v = _Verifier()
    t1 = time.perf_counter()
    while True:
        pack = storage.get_event_pack()
        if not pack:
            break
        v.pack(pack[0], pack[-1], len(pack))
        storage.event_pack_processing_done()
    t_drain = time.perf_counter() - t1
    hwm = vm("VmHWM")
    storage.stop()
    settings = {"synchronous": "NORMAL", "write batch": 1000, "pack": 1000, "queue": "unbounded"}
    return {"side": "peer", "events": n, "put_s": t_put, "durable_s": t_durable, "drain_s": t_drain,
            "drained": v.count, "bad_packs": v.bad, "repeated": v.repeated, "skipped": v.skipped, "rss_start": rss_start, "hwm_put": hwm_put,
            "hwm": hwm, "settings": settings}


# -- edge-agent ------------------------------------------------------------------------------
def child_ours(n: int, directory: str, batch: int, pack_size: int, synchronous: str) -> dict[str, Any]:
    """agent.buffer.Outbox: commit() in batches (seq assigned at commit); fetch + ack to drain."""
    from agent.buffer import Outbox

    base = _base_reading()
    rss_start = vm("VmRSS")
    ob = Outbox(Path(directory) / "buffer.db", synchronous=synchronous).open()  # type: ignore[arg-type]

    commit = ob.commit
    t0 = time.perf_counter()
    left = n
    while left:
        k = min(batch, left)
        commit([base] * k)  # Reading is immutable; the Outbox encodes each with its own seq
        left -= k
    t_durable = time.perf_counter() - t0  # commit() returns after the fsync of its transaction
    hwm_put = vm("VmHWM")

    v = _Verifier()
    fetch = ob.fetch
    cursor = 0
    t1 = time.perf_counter()
    while True:
        rows = fetch(cursor, pack_size)
        if not rows:
            break
        v.pack(rows[0][1], rows[-1][1], len(rows))
        cursor = rows[-1][0]
        commit([], acks=[(rows[0][0], cursor)])
    t_drain = time.perf_counter() - t1
    hwm = vm("VmHWM")
    depth = ob.depth
    ob.close()
    settings = {"synchronous": synchronous, "write batch": batch, "pack": pack_size, "queue": "none"}
    return {"side": "ours", "events": n, "put_s": t_durable, "durable_s": t_durable, "drain_s": t_drain,
            "drained": v.count, "bad_packs": v.bad, "repeated": v.repeated, "skipped": v.skipped, "depth_after": depth, "rss_start": rss_start,
            "hwm_put": hwm_put, "hwm": hwm, "settings": settings}


def child_pipeline(n: int, directory: str, pack_size: int, synchronous: str) -> dict[str, Any]:
    """The agent's own path: Pipeline.submit() -> in-memory queue -> writer thread -> Outbox.commit."""
    import asyncio

    from agent.buffer import Outbox
    from agent.pipeline import Pipeline

    base = _base_reading()
    rss_start = vm("VmRSS")

    async def put() -> float:
        ob = Outbox(Path(directory) / "buffer.db", synchronous=synchronous)  # type: ignore[arg-type]
        pipe = await Pipeline.open(ob)  # product defaults: commits of up to 5000, queue 100 k
        writer = asyncio.create_task(pipe.run_writer())
        submit = pipe.submit
        t0 = time.perf_counter()
        for start in range(0, n, 1000):  # a driver delivers what one read() decoded, then yields
            for _ in range(min(1000, n - start)):
                submit(base)
            while pipe.queued >= 20_000:  # the producer is faster than any disk: stay below the queue bound
                pipe.new_data.clear()
                await pipe.new_data.wait()
            await asyncio.sleep(0)
        while pipe.accepted < n:  # accepted = committed (fsynced) and given a seq
            pipe.new_data.clear()
            await pipe.new_data.wait()
        t = time.perf_counter() - t0
        assert pipe.overflow == 0 and pipe.rejected == 0
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        await pipe.close()
        return t

    t_durable = asyncio.run(put())
    hwm_put = vm("VmHWM")

    ob = Outbox(Path(directory) / "buffer.db", synchronous=synchronous).open()  # type: ignore[arg-type]
    v = _Verifier()
    cursor = 0
    t1 = time.perf_counter()
    while rows := ob.fetch(cursor, pack_size):
        v.pack(rows[0][1], rows[-1][1], len(rows))
        cursor = rows[-1][0]
        ob.commit([], acks=[(rows[0][0], cursor)])
    t_drain = time.perf_counter() - t1
    hwm = vm("VmHWM")
    ob.close()
    settings = {"synchronous": synchronous, "write batch": "<= 5000 (Pipeline)", "pack": pack_size, "queue": "100 k"}
    return {"side": "pipeline", "events": n, "put_s": t_durable, "durable_s": t_durable, "drain_s": t_drain,
            "drained": v.count, "bad_packs": v.bad, "repeated": v.repeated, "skipped": v.skipped,
            "rss_start": rss_start, "hwm_put": hwm_put, "hwm": hwm, "settings": settings}


def child_raw(n: int, directory: str, batch: int) -> dict[str, Any]:
    """The limit: bare executemany of pre-encoded rows into a WAL table at FULL."""
    from agent.model import encode_reading

    base = _base_reading()
    db = sqlite3.connect(Path(directory) / "raw.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, ts REAL, device TEXT, clock INT, mono REAL, payload TEXT)")
    payload = encode_reading(1, base)
    t0 = time.perf_counter()
    for start in range(1, n + 1, batch):
        db.execute("BEGIN")
        db.executemany("INSERT INTO t VALUES (?, 0.0, 'a101-co2', 1, 0.0, ?)",
                       ((i, payload) for i in range(start, min(start + batch, n + 1))))
        db.execute("COMMIT")
    t_put = time.perf_counter() - t0
    t1 = time.perf_counter()
    cursor = 0
    while True:
        rows = db.execute("SELECT seq, payload FROM t WHERE seq > ? ORDER BY seq LIMIT ?", (cursor, 1000)).fetchall()
        if not rows:
            break
        cursor = rows[-1][0]
        db.execute("DELETE FROM t WHERE seq BETWEEN ? AND ?", (rows[0][0], cursor))
    t_drain = time.perf_counter() - t1
    db.close()
    return {"side": "raw", "events": n, "durable_s": t_put, "drain_s": t_drain}


# -- driver ------------------------------------------------------------------------------------
def ensure_peer_venv() -> Path:
    """Create the separate benchmark venv with the peer package (a benchmark setup step)."""
    py = PEER_VENV / "bin" / "python"
    probe = [str(py), "-c", "import thingsboard_gateway.storage.sqlite.sqlite_event_storage"]
    if py.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return py
    print(f"setting up {PEER_VENV} with {PEER_PACKAGE}=={PEER_VERSION} ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", f"{PEER_PACKAGE}=={PEER_VERSION}"], check=True)
    return py


def run_child(python: str, args: list[str]) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as d:
        out = subprocess.run([python, "-m", "benchmarks.peer_buffer", "--child", *args, "--dir", d],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"child {args[0]} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def peer_version(python: Path) -> str:
    out = subprocess.run([str(python), "-m", "pip", "show", PEER_PACKAGE], capture_output=True, text=True)
    return next((ln.split(":", 1)[1].strip() for ln in out.stdout.splitlines() if ln.startswith("Version:")), "?")


def measure(events: int, batch: int, pack: int, repeat: int) -> dict[str, Any]:
    peer_py = ensure_peer_venv()
    n = str(events)
    runs: dict[str, list[dict[str, Any]]] = {"peer": [], "peer-serialize": [], "ours": [], "ours-normal": [], "pipeline": [],
                                             "raw": []}
    for _ in range(repeat):  # interleaved, so a burst of load from elsewhere hits both sides
        runs["peer"].append(run_child(str(peer_py), ["peer", "--events", n]))
        runs["peer-serialize"].append(run_child(str(peer_py), ["peer-serialize", "--events", n]))
        runs["ours"].append(run_child(sys.executable, ["ours", "--events", n, "--batch", str(batch),
                                                       "--pack", str(pack)]))
        runs["ours-normal"].append(run_child(sys.executable, ["ours", "--events", n, "--batch", str(batch),
                                                              "--pack", str(pack), "--synchronous", "NORMAL"]))
        runs["pipeline"].append(run_child(sys.executable, ["pipeline", "--events", n, "--pack", str(pack)]))
        runs["raw"].append(run_child(sys.executable, ["raw", "--events", n, "--batch", str(batch)]))
    best = {k: {"durable_s": min(r["durable_s"] for r in v), "drain_s": min(r["drain_s"] for r in v),
                "runs": v} for k, v in runs.items()}
    for k in ("peer", "peer-serialize", "ours", "ours-normal", "pipeline"):
        best[k]["hwm"] = max(r["hwm"] for r in runs[k])
        best[k]["ok"] = all(r["drained"] == events and r["bad_packs"] == 0 for r in runs[k])
        best[k]["repeated"] = sum(r["repeated"] for r in runs[k])
        best[k]["skipped"] = sum(r["skipped"] for r in runs[k])
    return {"events": events, "batch": batch, "pack": pack, "repeat": repeat,
            "peer_version": peer_version(peer_py), **best}


def report(res: dict[str, Any]) -> list[str]:
    n = res["events"]
    p, o, r, ps, pl = res["peer"], res["ours"], res["raw"], res["peer-serialize"], res["pipeline"]
    on = res["ours-normal"]
    rate = lambda side, k: n / side[k]  # noqa: E731
    lines = [
        f"{n:,} events of {len(_payload())} B; best of {res['repeat']} interleaved runs; "
        f"peer = thingsboard-gateway {res['peer_version']} SQLiteEventStorage",
        f"limit  raw sqlite3 executemany, WAL, FULL, {res['batch']}/commit   put {rate(r, 'durable_s'):>9,.0f}/s"
        f"   drain (select+delete {1000}) {rate(r, 'drain_s'):>9,.0f}/s",
        f"peer   SQLiteEventStorage, NORMAL, RAM queue       put->durable {rate(p, 'durable_s'):>9,.0f}/s"
        f"   drain {rate(p, 'drain_s'):>9,.0f}/s   peak RSS {p['hwm'] / 1e6:5.1f} MB   exact={p['ok']}"
        f" (redelivered {p['repeated']}, skipped {p['skipped']} over all runs)",
        f"ours   Outbox, FULL, {res['batch']}/commit, packs of {res['pack']}   put->durable {rate(o, 'durable_s'):>9,.0f}/s"
        f"   drain {rate(o, 'drain_s'):>9,.0f}/s   peak RSS {o['hwm'] / 1e6:5.1f} MB   exact={o['ok']}"
        f" (redelivered {o['repeated']}, skipped {o['skipped']} over all runs)",
        f"ours   Outbox, NORMAL (the peer's level), {res['batch']}/commit put->durable {rate(on, 'durable_s'):>9,.0f}/s"
        f"   drain {rate(on, 'drain_s'):>9,.0f}/s   exact={on['ok']}",
        f"ours   Pipeline.submit -> writer thread (the agent's path)  put->durable {rate(pl, 'durable_s'):>9,.0f}/s"
        f"   drain {rate(pl, 'drain_s'):>9,.0f}/s   peak RSS {pl['hwm'] / 1e6:5.1f} MB   exact={pl['ok']}",
        f"peer   same, + the gateway's own serialization before put() put->durable {rate(ps, 'durable_s'):>9,.0f}/s"
        f"   (ours/this: {ps['durable_s'] / o['durable_s']:.2f}x)",
        f"ratio  ours/peer: put->durable {p['durable_s'] / o['durable_s']:.2f}x, drain {p['drain_s'] / o['drain_s']:.2f}x, "
        f"peak RSS {o['hwm'] / p['hwm']:.2f}x   (target >= 2x both rates)",
        f"ratio  ours (Pipeline)/peer: put->durable {p['durable_s'] / pl['durable_s']:.2f}x; "
        f"ours at NORMAL/peer: {p['durable_s'] / on['durable_s']:.2f}x",
        f"target Pipeline put->durable >= 2x peer: {p['durable_s'] / pl['durable_s']:.2f}x "
        f"{'met' if p['durable_s'] >= 2 * pl['durable_s'] else 'MISSED'}; >= raw executemany: "
        f"{r['durable_s'] / pl['durable_s']:.2f}x {'met' if r['durable_s'] >= pl['durable_s'] else 'MISSED'}; "
        f"drain >= 3x peer: {p['drain_s'] / o['drain_s']:.2f}x {'met' if p['drain_s'] >= 3 * o['drain_s'] else 'MISSED'}",
    ]
    return lines


def _payload() -> str:
    from agent.model import encode_reading

    return encode_reading(1, _base_reading())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=1000, help="our readings per commit")
    ap.add_argument("--pack", type=int, default=1000, help="our readings per drain pack (peer: 1000)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", choices=["peer", "peer-serialize", "ours", "pipeline", "raw"])
    ap.add_argument("--dir")
    ap.add_argument("--synchronous", default="FULL")
    a = ap.parse_args()
    if a.child:
        if a.child in ("peer", "peer-serialize"):
            res = child_peer(a.events, a.dir, serialize=a.child == "peer-serialize")
        elif a.child == "pipeline":
            res = child_pipeline(a.events, a.dir, a.pack, a.synchronous)
        elif a.child == "ours":
            res = child_ours(a.events, a.dir, a.batch, a.pack, a.synchronous)
        else:
            res = child_raw(a.events, a.dir, a.batch)
        print(json.dumps(res))
        return
    from benchmarks.common import emit

    res = measure(a.events, a.batch, a.pack, a.repeat)
    emit(res, None if a.json else report(res), a.json)


if __name__ == "__main__":
    main()
