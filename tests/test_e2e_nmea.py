"""End to end: NMEA bytes on a pty -> agent process -> Mosquitto -> platform subscriber."""

from __future__ import annotations

import itertools
import signal
import sqlite3
from pathlib import Path

import pytest

from drivers.nmea.simulator import epoch_bytes, expected_values, fixes
from tests.support.agentproc import AgentProcess, nmea_device, write_config
from tests.support.broker import Broker
from tests.support.mqtt import Subscriber, wait_until
from tests.support.pty import PtyDevice

START = 1_790_000_000.0


@pytest.fixture
def setup(tmp_path: Path, broker: Broker, pty_factory: type[PtyDevice]):  # type: ignore[no-untyped-def]
    dev = pty_factory()
    cfg = write_config(tmp_path / "agent.toml", broker_port=broker.port, devices=nmea_device(dev.port))
    sub = Subscriber(broker.host, broker.port, "edge/gw-test/#")
    agent = AgentProcess(cfg)
    yield dev, agent, sub, tmp_path
    agent.close()
    sub.close()


def test_positions_arrive_exactly(setup) -> None:  # type: ignore[no-untyped-def]
    dev, agent, sub, _ = setup
    agent.start_and_wait_port()
    fs = list(itertools.islice(fixes(start=START), 50))
    for f in fs:
        dev.write(epoch_bytes(f))
    sub.wait_for(lambda: len(sub.readings()) >= 50, 30, "50 readings")
    got = sub.readings()
    assert len(got) == 50
    assert [r["seq"] for r in got] == list(range(1, 51))
    for r, f in zip(got, fs, strict=True):
        assert r["device"] == "van-gnss"
        assert r["driver"] == "nmea"
        assert r["tags"] == {"vehicle": "van-3"}
        assert r["values"] == expected_values(f)
    msg = sub.on("/telemetry")[0].json()
    assert msg["v"] == 1 and msg["gateway"] == "gw-test" and len(msg["epoch"]) == 16
    late = Subscriber("127.0.0.1", sub.c._port, "edge/gw-test/status")  # joins later: sees the retained birth
    late.wait_for(lambda: bool(late.on("/status")), 10, "retained status")
    assert late.on("/status")[0].retain and late.on("/status")[0].json()["state"] == "online"
    late.close()
    assert agent.terminate() == 0
    sub.wait_for(lambda: sub.on("/status")[-1].json()["state"] == "offline", 10, "offline status")


def test_noise_and_truncated_sentences_between_valid_ones(setup) -> None:  # type: ignore[no-untyped-def]
    dev, agent, sub, _ = setup
    agent.start_and_wait_port()
    fs = list(itertools.islice(fixes(start=START), 20))
    for i, f in enumerate(fs):
        dev.write(epoch_bytes(f))
        if i % 3 == 0:
            dev.write(b"\x00\xff garbage \xfe")  # line noise
        if i % 4 == 1:
            dev.write(b"$GNRMC,123519.00,A,4807.03")  # truncated: no CRLF, restarted by the next '$'
        if i % 5 == 2:
            bad = bytearray(epoch_bytes(f))
            bad[10] ^= 0x01  # corrupt one RMC byte: checksum fails, that sentence only
            dev.write(b"$GNRMC,000000.00,A,0000.00,N,00000.00,E,0.0,0.0,010100,,,A*00\r\n")
    sub.wait_for(lambda: len(sub.readings()) >= 20, 30, "20 readings")
    got = sub.readings()
    assert [r["values"] for r in got] == [expected_values(f) for f in fs]
    assert all(r["values"]["latitude"] != 0.0 for r in got)


def test_broker_outage_loses_nothing(tmp_path: Path, pty_factory: type[PtyDevice]) -> None:
    # A durable broker and a durable platform session, as in production: after the restart the
    # agent may reconnect and publish before the platform has subscribed again. A non-durable
    # broker would then deliver those readings to nobody (acknowledged, deleted, never received).
    broker = Broker(persistent=True).start()
    dev = pty_factory()
    cfg = write_config(tmp_path / "agent.toml", broker_port=broker.port, devices=nmea_device(dev.port))
    sub = Subscriber(broker.host, broker.port, "edge/gw-test/#", persistent=True)
    agent = AgentProcess(cfg)
    try:
        agent.start_and_wait_port()
        fs = iter(fixes(start=START))
        for f in itertools.islice(fs, 10):
            dev.write(epoch_bytes(f))
        sub.wait_for(lambda: len(sub.readings()) >= 10, 30, "first 10")
        broker.stop()
        for f in itertools.islice(fs, 30):
            dev.write(epoch_bytes(f))
        broker.start()
        sub.wait_for(lambda: len({r["seq"] for r in sub.readings()}) >= 40, 30, "all 40 after outage")
        got = sub.readings()
        by_seq: dict[int, dict[str, object]] = {}
        for r in got:
            prev = by_seq.setdefault(r["seq"], r)
            assert prev == r, "a redelivered seq must carry identical content"
        assert sorted(by_seq) == list(range(1, 41))
    finally:
        agent.close()
        sub.close()
        broker.close()


def test_sigkill_mid_stream_keeps_seq_without_holes(setup) -> None:  # type: ignore[no-untyped-def]
    dev, agent, sub, tmp = setup
    agent.start_and_wait_port()
    fs = iter(fixes(start=START))
    for f in itertools.islice(fs, 20):
        dev.write(epoch_bytes(f))
    sub.wait_for(lambda: len(sub.readings()) >= 5, 30, "some readings")
    agent.kill()
    epoch1 = sub.on("/telemetry")[0].json()["epoch"]
    agent.start_and_wait_port(count=2)
    after = list(itertools.islice(fs, 20))
    for f in after:
        dev.write(epoch_bytes(f))
    last = expected_values(after[-1])
    sub.wait_for(lambda: any(r["values"] == last for r in sub.readings()), 30, "the last fix after restart")
    seqs = sorted({r["seq"] for r in sub.readings()})
    assert seqs == list(range(1, seqs[-1] + 1)), "no holes in seq"
    assert {m.json()["epoch"] for m in sub.on("/telemetry")} == {epoch1}
    db = sqlite3.connect(tmp / "buffer.db")
    # Every delivered row is deleted once its PUBACK is committed (acks linger at most 5 s).
    wait_until(lambda: db.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0, 15, "outbox emptied by acks")
    assert agent.terminate() == 0
    assert db.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0


def test_sigterm_flushes_and_exits_zero(setup) -> None:  # type: ignore[no-untyped-def]
    dev, agent, sub, tmp = setup
    agent.start_and_wait_port()
    for f in itertools.islice(fixes(start=START), 5):
        dev.write(epoch_bytes(f))
    sub.wait_for(lambda: len(sub.readings()) >= 5, 30, "5 readings")
    agent.signal(signal.SIGTERM)
    assert agent.wait(10) == 0


def test_sigterm_delivers_everything_accepted_before_exit(setup) -> None:  # type: ignore[no-untyped-def]
    dev, agent, sub, tmp = setup
    agent.start_and_wait_port()
    fs = iter(fixes(start=START))
    dev.write(epoch_bytes(next(fs)))
    sub.wait_for(lambda: len(sub.readings()) >= 1, 30, "the first reading")
    for f in itertools.islice(fs, 10):
        dev.write(epoch_bytes(f))
    agent.signal(signal.SIGTERM)  # epochs still in the driver or in flight: flushed, sent, acked
    assert agent.wait(10) == 0
    db = sqlite3.connect(tmp / "buffer.db")
    left = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
    assert left == 0, f"nothing left to send again ({left} left); the agent's log:\n{agent.output()[-3000:]}"
    accepted = int(db.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()[0]) - 1
    sub.wait_for(lambda: len({r["seq"] for r in sub.readings()}) >= accepted, 10, "every accepted reading")
    assert sorted(r["seq"] for r in sub.readings()) == list(range(1, accepted + 1))  # once each
    assert "every accepted reading is acknowledged" in agent.output()


def test_bad_config_exits_78_before_touching_anything(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[gateway]\nid = "gw"\n[buffer]\npath = "buf.db"\non_full = "explode"\n')
    agent = AgentProcess(cfg).start()
    try:
        assert agent.wait(20) == 78
        assert "buffer.on_full" in agent.output()
        assert not (tmp_path / "buf.db").exists()
    finally:
        agent.close()
