"""Technician backlog story: see data buffering, read the stopped agent's buffer, export it."""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import time
from pathlib import Path

from drivers.nmea.simulator import epoch_bytes, expected_values, fixes
from tests.support.agentproc import AgentProcess, nmea_device, write_config
from tests.support.broker import Broker
from tests.support.cli import run_cli
from tests.support.mqtt import Subscriber, wait_until
from tests.support.pty import PtyDevice


def status(cfg: Path) -> dict:  # type: ignore[type-arg]
    r = run_cli("status", "--config", cfg, "--json")
    assert r.code in (0, 3, 4), r.err  # 4: the uplink is down, data is buffering; 3: clock unsynced here
    return r.json()  # type: ignore[no-any-return]


def test_buffering_backlog_stats_and_export_round_trip(
    tmp_path: Path, pty_factory: type[PtyDevice]
) -> None:
    broker = Broker()  # its port is chosen, but nothing listens yet: the platform is unreachable
    dev = pty_factory()
    cfg = write_config(
        tmp_path / "agent.toml",
        broker_port=broker.port,
        devices=nmea_device(dev.port, expected_interval=""),
    )
    agent = AgentProcess(cfg).start_and_wait_port()
    sub = None
    try:
        fs = list(itertools.islice(fixes(start=1_790_000_000.0), 20))
        for f in fs[:10]:
            dev.write(epoch_bytes(f))
        wait_until(lambda: status(cfg)["buffer"]["depth"] == 10, 20, "10 buffered")
        mid = time.time()
        wait_until(lambda: time.time() > mid + 0.002, 1, "clock tick")
        for f in fs[10:]:
            dev.write(epoch_bytes(f))
        wait_until(lambda: status(cfg)["buffer"]["depth"] == 20, 20, "20 buffered")

        # 1. status says why: the uplink is down and data is kept.
        st = status(cfg)
        assert st["uplink"]["state"] in ("backoff", "connecting")
        assert "refused" in st["uplink"]["last_error"].lower()
        assert st["uplink"]["last_puback"] is None
        assert st["buffer"]["oldest_age"] >= 0
        r = run_cli("status", "--config", cfg)
        assert r.code == 4, r.err
        human = r.out
        assert f"broker 127.0.0.1:{broker.port}: " in human
        assert "20 readings waiting" in human
        assert "DATA IS BUFFERING" in human and "edge-agent buffer export" in human

        # 2. buffer stats while the agent runs, then with the agent stopped.
        running = run_cli("buffer", "stats", "--config", cfg, "--json").json()
        assert running["depth"] == 20 and running["agent_running"] is True
        assert agent.terminate() == 0
        db = tmp_path / "buffer.db"
        before = hashlib.sha256(db.read_bytes()).hexdigest()
        r = run_cli("buffer", "stats", "--config", cfg, "--json")
        assert r.code == 0, r.err
        bs = r.json()
        assert (bs["depth"], bs["first_seq"], bs["last_seq"], bs["next_seq"]) == (20, 1, 20, 21)
        assert bs["agent_running"] is False and bs["snapshot_only"] is False
        assert bs["epoch"] == running["epoch"] and len(bs["epoch"]) == 16
        assert bs["gateway"] == "gw-test"
        assert bs["devices"]["van-gnss"]["count"] == 20
        assert bs["dropped"] == {} and bs["rejected"] == 0
        assert bs["bytes"] > 0 and bs["max_bytes"] == 256_000_000
        human = run_cli("buffer", "stats", "--config", cfg).out
        assert "20 readings" in human and "seq 1..20" in human and "agent not running" in human
        assert hashlib.sha256(db.read_bytes()).hexdigest() == before  # read-only: nothing written

        # 3. export: all, a time window, CSV.
        out = tmp_path / "usb" / "backlog.jsonl"
        out.parent.mkdir()
        r = run_cli("buffer", "export", "--config", cfg, "--output", out)
        assert r.code == 0, r.err
        assert f"exported 20 readings, seq 1..20 (gateway gw-test, epoch {bs['epoch']})" in r.err
        header, *lines = out.read_text().splitlines()
        assert json.loads(header) == {"v": 1, "gateway": "gw-test", "epoch": bs["epoch"],
                                      "exported": json.loads(header)["exported"]}
        exported = [json.loads(line) for line in lines]
        assert [e["seq"] for e in exported] == list(range(1, 21))
        assert [e["values"] for e in exported] == [expected_values(f) for f in fs]
        assert not (out.parent / "backlog.jsonl.part").exists()
        stamp = (
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(mid)) + f".{int(mid * 1000) % 1000:03d}Z"
        )
        late = run_cli("buffer", "export", "--config", cfg, "--since", stamp)
        assert [json.loads(x)["seq"] for x in late.out.splitlines()[1:]] == list(range(11, 21))
        early = run_cli("buffer", "export", "--config", cfg, "--until", stamp)
        assert [json.loads(x)["seq"] for x in early.out.splitlines()[1:]] == list(range(1, 11))
        assert (
            run_cli("buffer", "export", "--config", cfg, "--since", "1h").out.splitlines()[1:] == lines
        )
        assert run_cli("buffer", "export", "--config", cfg, "--until", "1h").out.splitlines()[1:] == []
        r = run_cli("buffer", "export", "--config", cfg, "--format", "csv")
        rows = list(csv.DictReader(io.StringIO(r.out)))
        assert len(rows) == 20
        assert list(rows[0])[:7] == ["gateway", "epoch", "seq", "ts", "device", "driver", "clock"]
        for row, e in zip(rows, exported, strict=True):
            assert (row["gateway"], row["epoch"], int(row["seq"])) == (
                "gw-test",
                bs["epoch"],
                e["seq"],
            )
            assert row["tag.vehicle"] == "van-3"
            assert float(row["latitude"]) == e["values"]["latitude"]
            assert int(row["satellites"]) == e["values"]["satellites"]
            assert row["fix"] == e["values"]["fix"]
        assert hashlib.sha256(db.read_bytes()).hexdigest() == before

        # 4. round trip: the broker comes back, the platform receives exactly what was exported.
        broker.start()
        sub = Subscriber(broker.host, broker.port, "edge/gw-test/telemetry")
        agent = AgentProcess(cfg).start_and_wait_port(count=2)
        sub.wait_for(lambda: len(sub.readings()) >= 20, 30, "backlog delivered")
        assert sub.readings() == exported
        raw = b"".join(m.payload for m in sub.on("/telemetry"))
        assert all(line.encode() in raw for line in lines)  # byte-identical wire form
        wait_until(lambda: status(cfg)["buffer"]["depth"] == 0, 20, "buffer drained")
        assert run_cli("buffer", "export", "--config", cfg).out.splitlines()[1:] == []
    finally:
        agent.close()
        if sub is not None:
            sub.close()
        broker.close()


def test_buffer_verbs_report_problems_without_tracebacks(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "agent.toml", broker_port=1)
    r = run_cli("buffer", "stats", "--config", cfg)
    assert r.code == 1
    assert f"no buffer database at {tmp_path / 'buffer.db'}" in r.err
    (tmp_path / "buffer.db").write_bytes(b"this is not sqlite" * 100)
    r = run_cli("buffer", "export", "--config", cfg)
    assert r.code == 1 and "cannot read" in r.err and "Traceback" not in r.err
    r = run_cli("buffer", "export", "--config", cfg, "--since", "yesterday-ish")
    assert r.code == 2 and "bad time 'yesterday-ish'" in r.err
    r = run_cli("buffer", "export", "--config", cfg, "--format", "xml")
    assert r.code == 2
    r = run_cli("buffer")
    assert r.code == 2 and "stats,export" in r.err
