"""The platform contract end to end: agent process -> Mosquitto -> schema checks / the receiver."""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from agent.contract import SCHEMA_DIR, validate
from drivers.nmea.simulator import epoch_bytes, fixes
from tests.support.agentproc import AgentProcess, nmea_device, write_config
from tests.support.broker import Broker
from tests.support.mqtt import Subscriber, wait_until
from tests.support.pty import PtyDevice
from tests.support.receiver import ReceiverProcess, persistent_broker

START = 1_790_000_000.0
PREFIX = "edge/gw-test"
TOPIC_SCHEMA = {t: json.loads((SCHEMA_DIR / f"{t}.schema.json").read_text())
                for t in ("telemetry", "status", "health", "events")}


def buffer_state(db: Path) -> tuple[int, int, int]:
    """(accepted = next_seq - 1, rows waiting, events waiting) read from the agent's live database."""
    con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        meta_next = int(con.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()[0])
        top = con.execute("SELECT max(seq) FROM outbox").fetchone()[0] or 0
        nxt = max(meta_next, top + 1)  # meta is written only when the newest row does not imply it
        rows = con.execute("SELECT count(*) FROM outbox").fetchone()[0]
        evs = con.execute("SELECT count(*) FROM events").fetchone()[0]
    finally:
        con.close()
    return nxt - 1, rows, evs


def check_schema(topic: str, payload: bytes) -> None:
    """Both the checked-in JSON Schema file and the pydantic model accept the message."""
    kind = topic.rsplit("/", 1)[-1]
    jsonschema.validate(json.loads(payload), TOPIC_SCHEMA[kind])
    validate(kind, payload)


@pytest.fixture
def pty(pty_factory: type[PtyDevice]) -> PtyDevice:
    return pty_factory()


@pytest.fixture
def fix_source() -> Iterator[bytes]:
    return (epoch_bytes(f) for f in fixes(start=START))


def write(dev: PtyDevice, src: Iterator[bytes], n: int) -> None:
    for b in itertools.islice(src, n):
        dev.write(b)


def test_every_message_validates_and_birth_will_shutdown(tmp_path: Path, broker: Broker, pty: PtyDevice,
                                                       fix_source: Iterator[bytes]) -> None:
    cfg = write_config(tmp_path / "agent.toml", broker_port=broker.port, devices=nmea_device(pty.port),
                       uplink='health_interval = "300ms"')
    sub = Subscriber(broker.host, broker.port, f"{PREFIX}/#")
    agent = AgentProcess(cfg)
    try:
        agent.start_and_wait_port()
        write(pty, fix_source, 5)

        def health_after_ack(h: dict[str, Any]) -> bool:
            # The device is online from its first reading, before that reading is even committed:
            # the first health saying so may well predate the first PUBACK.
            return bool(h["devices"]["van-gnss"]["online"]) and h["uplink"]["acked"] >= 1

        sub.wait_for(lambda: len(sub.readings()) >= 5
                     and any(m.json()["type"] == "device" for m in sub.on("/events"))
                     and any(health_after_ack(m.json()) for m in sub.on("/health")), 20,
                     "readings, the device-online event and health saying so after a PUBACK")
        assert agent.terminate() == 0
        sub.wait_for(lambda: sub.on("/status")[-1].json()["state"] == "offline", 10, "clean offline")
        assert sub.on("/status")[-1].json()["reason"] == "shutdown"
        # second life: birth again, then kill -9 -> the broker publishes the will
        agent.start_and_wait_port(count=2)
        sub.wait_for(lambda: sub.on("/status")[-1].json()["state"] == "online", 10, "second birth")
        agent.kill()
        sub.wait_for(lambda: sub.on("/status")[-1].json()["state"] == "offline", 10, "will")
        late = Subscriber(broker.host, broker.port, f"{PREFIX}/status")
        late.wait_for(lambda: bool(late.on("/status")), 10, "retained status")
        will = late.on("/status")[0]
        late.close()
        assert will.retain and will.json()["state"] == "offline" and will.json()["reason"] == "lost"
        kinds = {m.topic.rsplit("/", 1)[-1] for m in sub.messages}
        assert kinds == {"telemetry", "status", "health", "events"}
        for m in sub.messages:
            check_schema(m.topic, m.payload)
        births = [m.json() for m in sub.on("/status") if m.json()["state"] == "online"]
        assert len(births) == 2 and all(b["version"] and len(b["config_digest"]) == 12 for b in births)
        health = next(h for h in (m.json() for m in sub.on("/health")) if health_after_ack(h))
        assert health["versions"]["sqlite"] == sqlite3.sqlite_version
        assert health["devices"]["van-gnss"]["last_seen"] is not None
        assert health["buffer"]["dropped_total"] == 0 and health["uplink"]["readings_acked"] >= 1
    finally:
        agent.close()
        sub.close()


def test_overflow_while_broker_down_gap_counts_equal_missing(tmp_path: Path, pty: PtyDevice,
                                                             fix_source: Iterator[bytes]) -> None:
    broker = persistent_broker().start()
    rx = ReceiverProcess(broker.port, PREFIX, tmp_path)
    cfg = write_config(tmp_path / "agent.toml", broker_port=broker.port, devices=nmea_device(pty.port),
                       buffer='max_bytes = 3000')
    agent = AgentProcess(cfg)
    try:
        rx.wait_subscribed()
        agent.start_and_wait_port()
        write(pty, fix_source, 5)
        rx.wait_report(lambda r: r["received"] == 5, 20, "first 5 readings")
        broker.stop()
        write(pty, fix_source, 60)
        agent.wait_log("buffer: dropped")
        wait_until(lambda: buffer_state(tmp_path / "buffer.db")[0] == 65, 20, "65 accepted")
        broker.start()
        rep = rx.wait_report(lambda r: r["received"] + r["gap_readings"] == 65 and r["unexplained"] == 0,
                             30, "every seq received or reported lost")
        assert 0 < rep["received"] < 65 and rep["gap_readings"] == 65 - rep["received"]
        rc, final = rx.stop()
        assert (final["invalid"], final["conflicts"], final["unexplained"], final["gap_balance"]) == (0, 0, 0, 0)
        assert final["missing"] == final["gap_readings"] and rc == 0
        reasons = {json.loads(p)["reason"] for (p,) in sqlite3.connect(rx.db).execute(
            "SELECT payload FROM gaps")}
        assert reasons == {"buffer_full"}
    finally:
        agent.close()
        rx.close()
        broker.close()


def test_done_receiver_reports_nothing_unexplained_after_bounces_overflow_and_kill(
        tmp_path: Path, pty: PtyDevice, fix_source: Iterator[bytes]) -> None:
    """Issue 7's definition of done, with the receiver CLI as the oracle."""
    broker = persistent_broker().start()
    rx = ReceiverProcess(broker.port, PREFIX, tmp_path)
    cfg = write_config(tmp_path / "agent.toml", broker_port=broker.port, devices=nmea_device(pty.port),
                       buffer='max_bytes = 4000', uplink='health_interval = "500ms"')
    agent = AgentProcess(cfg)
    db = tmp_path / "buffer.db"

    def drained() -> bool:
        accepted, rows, evs = buffer_state(db)
        rep = rx.latest() or {}
        return rows == 0 and evs == 0 and rep.get("received", 0) + rep.get("gap_readings", 0) == accepted

    try:
        rx.wait_subscribed()
        agent.start_and_wait_port()
        write(pty, fix_source, 10)
        rx.wait_report(lambda r: r["received"] == 10, 20, "10 readings")
        # bounce 1: overflow while the broker is down
        broker.stop()
        write(pty, fix_source, 50)
        agent.wait_log("buffer: dropped")
        wait_until(lambda: buffer_state(db)[0] == 60, 20, "60 accepted")
        broker.start()
        wait_until(drained, 30, "backlog delivered after bounce 1")
        # bounce 2: overflow, then kill -9 while the broker is still down; gaps must survive
        broker.stop()
        write(pty, fix_source, 40)
        wait_until(lambda: buffer_state(db)[0] == 100, 20, "100 accepted")
        agent.kill()
        agent.start_and_wait_port(count=2)
        write(pty, fix_source, 10)
        wait_until(lambda: buffer_state(db)[0] == 110, 20, "110 accepted")
        broker.start()
        wait_until(drained, 30, "backlog delivered after bounce 2")
        write(pty, fix_source, 5)
        wait_until(lambda: buffer_state(db)[0] == 115 and drained(), 20, "tail delivered")
        assert agent.terminate() == 0
        rx.wait_report(lambda r: r["status"].get(f"{PREFIX}/status") == "offline", 10, "offline status")
        rc, final = rx.stop()
        assert final["invalid"] == 0, final["errors"]
        assert final["unexplained"] == 0 and final["gap_balance"] == 0
        assert final["conflicts"] == 0 and final["out_of_order"] == 0 and final["gap_conflicts"] == 0
        assert final["received"] + final["gap_readings"] == 115
        assert final["gap_readings"] == final["missing"] > 0
        assert final["births"] >= 3 and final["health"] >= 1 and final["ok"] and rc == 0
        assert len(final["epochs"]) == 1
    finally:
        agent.close()
        rx.close()
        broker.close()
