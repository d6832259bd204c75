"""`edge-agent ingest` throughput: readings/s into PostgreSQL with 1, 2 and 4 instances.

Beside it, measured in the same run on the same server and broker:
- the database's limit: a bare COPY of the same rows into the same `readings` table (one
  connection, primary key and index in place, one transaction);
- the broker's limit: bare QoS 1 delivery of the same messages to one paho subscriber.

Each instance count gets a fresh database; the same messages (the agent's exact wire bytes:
agent.model.encode_reading, batches of --batch readings as the uplink sends them) are published
once all instances are subscribed; the rate is readings / (last row committed - first publish).

    python -m benchmarks.ingest [--gateways 20] [--readings 2000] [--batch 100] [--instances 1,2,4] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg

from agent.ingest.localpg import LocalPostgres
from agent.ingest.schema import init
from agent.ingest.store import digest
from agent.model import Reading, encode_reading
from agent.mosquitto import LocalBroker
from benchmarks.common import acking_publisher, emit, proc_status

EPOCH = "0123456789abcdef"


def messages(gateways: int, readings: int, batch: int) -> list[tuple[str, bytes, list[str]]]:
    """(topic, payload, the readings' texts), round robin over gateways, each gateway's in seq order."""
    per: list[list[tuple[str, bytes, list[str]]]] = []
    for g in range(gateways):
        gw = f"gw-{g:03d}"
        head = f'{{"v":1,"gateway":"{gw}","epoch":"{EPOCH}","readings":['
        rows = [encode_reading(s, Reading(device=f"room-{s % 8}-co2", driver="senseair_s8",
                                          values={"co2": 400 + s % 900, "temperature": 21.25},
                                          ts=1_790_000_000.0 + s, tags={"room": f"A{100 + s % 8}"}))
                for s in range(1, readings + 1)]
        per.append([(f"edge/{gw}/telemetry", (head + ",".join(rows[i:i + batch]) + "]}").encode(), rows[i:i + batch])
                    for i in range(0, readings, batch)])
    return [m for i in range(max(map(len, per))) for ms in per if i < len(ms) for m in [ms[i]]]


def new_db(pg: LocalPostgres, name: str) -> str:
    with psycopg.connect(pg.url, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name}")
        c.execute(f"CREATE DATABASE {name}")
    url = pg.url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(url, autocommit=True) as c:
        init(c)
    return url


def bare_copy(url: str, msgs: list[tuple[str, bytes, list[str]]]) -> float:
    """Rows/s of one COPY of the same rows into `readings` (the parsing of R left to the client)."""
    rows = []
    for topic, _, texts in msgs:
        gw = topic.split("/")[1]
        for t in texts:
            r = json.loads(t)
            rows.append((gw, EPOCH, r["seq"], r["device"], r["driver"], r["ts"], r["clock"],
                         json.dumps(r["values"]), json.dumps(r["tags"]), digest(t)))
    with psycopg.connect(url) as c:
        t0 = time.perf_counter()
        with c.cursor().copy('COPY readings (gateway, epoch, seq, device, driver, ts, clock, "values", tags, digest) '
                             "FROM STDIN") as cp:
            for row in rows:
                cp.write_row(row)
        c.commit()
        return len(rows) / (time.perf_counter() - t0)


def bare_broker(port: int, msgs: list[tuple[str, bytes, list[str]]]) -> float:
    """Readings/s of bare QoS 1 delivery publisher -> Mosquitto -> one subscriber."""
    got = 0
    done = threading.Event()
    total = sum(len(t) for _, _, t in msgs)
    sizes = {p: len(t) for _, p, t in msgs}

    def on_message(_c: Any, _u: Any, m: Any) -> None:
        nonlocal got
        got += sizes.get(m.payload, 0)
        if got >= total:
            done.set()

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-bare-sub", protocol=mqtt.MQTTv5)
    ready = threading.Event()
    sub.on_connect = lambda c, *a: c.subscribe("edge/+/telemetry", qos=1)
    sub.on_subscribe = lambda *a: ready.set()
    sub.on_message = on_message
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    ready.wait(10)
    pub, _ = acking_publisher(port, "bench-bare-pub", 100, len(msgs))
    t0 = time.perf_counter()
    for topic, payload, _ in msgs:
        pub.publish(topic, payload, qos=1)
    done.wait(300)
    rate = total / (time.perf_counter() - t0)
    for c in (pub, sub):
        c.disconnect()
        c.loop_stop()
    return rate


def run_instances(n: int, url: str, port: int, msgs: list[tuple[str, bytes, list[str]]], workdir: Path,
                  ingest_batch: int) -> dict[str, Any]:
    total = sum(len(t) for _, _, t in msgs)
    procs, logs = [], []
    for i in range(n):
        log = workdir / f"ingest-{n}-{i}.log"
        logs.append(log)
        with open(log, "wb") as f:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "agent", "ingest", "--db", url, "--broker", f"mqtt://127.0.0.1:{port}",
                 "--group", f"bench{n}", "--client-id", f"bench{n}-{i}", "--batch", str(ingest_batch)],
                stdout=f, stderr=subprocess.STDOUT))
    try:
        deadline = time.monotonic() + 60
        while not all("subscribed to" in log.read_text() for log in logs):
            if time.monotonic() > deadline:
                raise RuntimeError("instances did not subscribe: " + " | ".join(log.read_text() for log in logs))
            time.sleep(0.05)
        cpu0 = sum(cpu_seconds(p.pid) for p in procs)  # start-up (imports) is not per reading
        pub, _ = acking_publisher(port, f"bench-pub-{n}", 100, len(msgs))
        with psycopg.connect(url, autocommit=True) as c:
            t0 = time.perf_counter()
            for topic, payload, _ in msgs:
                pub.publish(topic, payload, qos=1)
            have = 0
            while have < total:
                time.sleep(0.05)
                have = c.execute("SELECT count(*) FROM readings").fetchone()[0]  # type: ignore[index]
            elapsed = time.perf_counter() - t0
            distinct = c.execute("SELECT count(DISTINCT (gateway, epoch, seq)) FROM readings").fetchone()[0]  # type: ignore[index]
        pub.disconnect()
        pub.loop_stop()
        rss = [proc_status(p.pid).get("VmHWM", 0) for p in procs]
        cpu = sum(cpu_seconds(p.pid) for p in procs) - cpu0
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
    return {"instances": n, "readings": total, "seconds": round(elapsed, 3), "rate": total / elapsed,
            "exact": have == total == distinct, "peak_rss_mb": [round(r / 2**20, 1) for r in rss],
            "ingest_cpu_us_per_reading": round(cpu / total * 1e6, 1)}


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far (load on other processes does not inflate it)."""
    import os

    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ingest", description=__doc__.splitlines()[0])
    ap.add_argument("--gateways", type=int, default=20)
    ap.add_argument("--readings", type=int, default=2000, help="per gateway")
    ap.add_argument("--batch", type=int, default=100, help="readings per telemetry message")
    ap.add_argument("--ingest-batch", type=int, default=500, help="messages per transaction (ingest --batch)")
    ap.add_argument("--instances", default="1,2,4")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    msgs = messages(args.gateways, args.readings, args.batch)
    pg = LocalPostgres(durable=True).start()
    broker = LocalBroker().start()
    try:
        copy_rate = bare_copy(new_db(pg, "bench_copy"), msgs)
        broker_rate = bare_broker(broker.port, msgs)
        runs = [run_instances(n, new_db(pg, f"bench_{n}"), broker.port, msgs, pg.dir, args.ingest_batch)
                for n in (int(x) for x in args.instances.split(","))]
    finally:
        broker.close()
        pg.close()
    one = runs[0]["rate"] / runs[0]["instances"]
    for r in runs:
        r["scaling_per_instance"] = round(r["rate"] / (one * r["instances"]), 2)
    res = {"gateways": args.gateways, "readings_per_gateway": args.readings, "readings_per_message": args.batch,
           "copy_rate": copy_rate, "broker_qos1_rate": broker_rate, "runs": runs,
           "load": open("/proc/loadavg").read().split()[:3]}
    lines = [f"{args.gateways} gateways x {args.readings} readings, {args.batch} per message "
             f"({len(msgs)} messages), load {' '.join(res['load'])}",
             f"limit  bare COPY into readings (1 connection, 1 transaction)   {copy_rate:>10,.0f} readings/s",
             f"limit  bare QoS 1 delivery through Mosquitto (1 subscriber)    {broker_rate:>10,.0f} readings/s"]
    for r in runs:
        lines.append(f"ingest {r['instances']} instance(s)  {r['rate']:>10,.0f} readings/s  "
                     f"({r['rate'] / copy_rate:.0%} of COPY, {r['rate'] / broker_rate:.0%} of the broker)  "
                     f"scaling per instance {r['scaling_per_instance']:.2f}  ingest CPU {r['ingest_cpu_us_per_reading']} us/reading  "
                     f"peak RSS {r['peak_rss_mb']} MB  "
                     f"exact={r['exact']}")
    emit(res, lines, args.json)
    return 0 if all(r["exact"] for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
