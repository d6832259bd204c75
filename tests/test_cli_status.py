"""`status`, `devices` and `tail` against a running agent (real broker, NMEA on a pty)."""

from __future__ import annotations

import itertools
import json
import socket
from pathlib import Path

import pytest

from drivers.nmea.simulator import epoch_bytes, expected_values, fixes
from tests.support.agentproc import AgentProcess, write_config
from tests.support.broker import Broker
from tests.support.cli import Spawned, run_cli
from tests.support.mqtt import Subscriber, wait_until
from tests.support.pty import PtyDevice

START = 1_790_000_000.0


def devices_toml(live_port: str) -> str:
    return f"""
        [[devices]]
        id = "van-gnss"
        driver = "nmea"
        port = "{live_port}"
        expected_interval = "30s"
        tags = {{ vehicle = "van-3" }}

        [[devices]]
        id = "dead-gnss"
        driver = "nmea"
        port = "/dev/serial/by-id/usb-not-plugged-in"
        expected_interval = "1s"

        [[devices]]
        id = "spare-gnss"
        driver = "nmea"
        port = "/dev/ttyUSB9"
        enabled = false
        """


@pytest.fixture
def running(tmp_path: Path, broker: Broker, pty_factory: type[PtyDevice]):  # type: ignore[no-untyped-def]
    dev = pty_factory()
    cfg = write_config(
        tmp_path / "agent.toml", broker_port=broker.port, devices=devices_toml(dev.port)
    )
    sub = Subscriber(broker.host, broker.port, "edge/gw-test/#")
    agent = AgentProcess(cfg).start_and_wait_port()
    yield dev, cfg, sub
    agent.close()
    sub.close()


def test_status_devices_and_tail_on_a_running_agent(running, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("COLUMNS", "200")  # a wide terminal: LAST VALUES in the table (80: test_cli_screen)
    dev, cfg, sub = running
    tail_json = Spawned("tail", "--config", cfg, "--json", "--count", "10")
    tail_one = Spawned("tail", "--config", cfg, "--device", "van-gnss", "--count", "3")
    try:
        for t in (tail_json, tail_one):
            wait_until(
                lambda t=t: any("following readings" in line for line in t.err),
                20,
                "tail subscribed",
            )
        fs = list(itertools.islice(fixes(start=START), 10))
        for f in fs:
            dev.write(epoch_bytes(f))
        sub.wait_for(lambda: len(sub.readings()) >= 10, 30, "10 readings at the broker")
        assert tail_json.wait() == 0
        assert tail_one.wait() == 0
        tailed = [json.loads(line) for line in tail_json.out]
        assert tailed == sub.readings()  # tail shows exactly what the platform receives
        assert [r["seq"] for r in tailed] == list(range(1, 11))
        assert [r["values"] for r in tailed] == [expected_values(f) for f in fs]
        assert len(tail_one.out) == 3
        for i, line in enumerate(tail_one.out, start=1):
            assert f" {i:>7} van-gnss latitude=" in line and "°, longitude=" in line
        assert any(line == "van-gnss is starting: waiting for its first reading (link up)"
                   or line.startswith("van-gnss is online") for line in tail_one.err), tail_one.err
    finally:
        tail_json.close()
        tail_one.close()

    # Liveness is judged once a second: the live one turns online, the dead one offline after 1 s.
    wait_until(
        lambda: (
            run_cli("status", "--config", cfg, "--json").json()["drivers"]["nmea"]["online"] == 1
        ),
        20,
        "van-gnss online",
    )
    wait_until(
        lambda: (
            run_cli("status", "--config", cfg, "--json").json()["drivers"]["nmea"]["offline"] == 1
        ),
        20,
        "dead-gnss offline",
    )
    wait_until(
        lambda: run_cli("status", "--config", cfg, "--json").json()["buffer"]["depth"] == 0,
        20,
        "acked",
    )
    r = run_cli("status", "--config", cfg, "--json")
    assert r.code == 3, r.err  # degraded: dead-gnss is not delivering (data is leaving)
    st = r.json()
    assert st["gateway"] == "gw-test"
    assert st["uplink"]["state"] == "connected"
    assert st["uplink"]["readings_acked"] == 10
    assert st["uplink"]["last_puback"] is not None
    assert st["buffer"]["next_seq"] == 11
    assert st["buffer"]["dropped"] == {}
    assert st["devices"]["van-gnss"]["readings"] == 10
    assert st["drivers"] == {
        "nmea": {
            "devices": 3,
            "online": 1,
            "offline": 1,
            "starting": 0,
            "disabled": 1,
            "readings": 10,
            "errors": 0,
        }
    }, st["drivers"]
    assert st["clock"] in ("synced", "unsynced")

    human = run_cli("status", "--config", cfg)
    assert human.code == 3
    assert "uplink    connected to 127.0.0.1:" in human.out
    assert "0 readings waiting" in human.out
    assert "nmea         1/3 online, 1 offline, 1 disabled, 10 readings, 0 errors" in human.out
    assert "dead-gnss (link disconnected)" in human.out
    assert "DATA IS BUFFERING" not in human.out
    assert "\x1b[" not in human.out  # no colour without a TTY

    r = run_cli("devices", "--config", cfg, "--json")
    assert r.code == 0
    rows = {d["id"]: d for d in r.json()["devices"]}
    assert list(rows) == ["van-gnss", "dead-gnss", "spare-gnss"]  # config order, one row each
    live, dead, spare = rows["van-gnss"], rows["dead-gnss"], rows["spare-gnss"]
    assert (live["state"], live["link"], live["driver"], live["readings"]) == (
        "online",
        "connected",
        "nmea",
        10,
    )
    assert live["last_values"] == expected_values(fs[-1])
    assert live["errors"] == {} and live["last_reading_age"] >= 0 and live["rate"] > 0
    assert (dead["state"], dead["link"], dead["readings"], dead["last_reading_age"]) == (
        "offline",
        "disconnected",
        0,
        None,
    )
    assert "usb-not-plugged-in" in dead["link_detail"]
    assert (spare["state"], spare["link"]) == ("disabled", "disabled")

    human = run_cli("devices", "--config", cfg).out.splitlines()
    assert human[0].split() == [
        "DEVICE",
        "DRIVER",
        "STATE",
        "LINK",
        "LAST",
        "RATE",
        "ERRORS",
        "LAST",
        "VALUES",
    ]
    assert human[1].split()[:4] == ["van-gnss", "nmea", "online", "connected"]
    assert human[2].split()[:5] == ["dead-gnss", "nmea", "offline", "disconnected", "-"]
    assert human[3].split()[:4] == ["spare-gnss", "nmea", "disabled", "disabled"]
    notes = "\n".join(human[4:])
    assert "not delivering:" in notes
    assert "dead-gnss: offline, link disconnected /dev/serial/by-id/usb-not-plugged-in" in notes
    assert "last reading never (expected every 1s)" in notes


def test_tail_unknown_device_is_refused(running) -> None:  # type: ignore[no-untyped-def]
    _, cfg, _ = running
    r = run_cli("tail", "--config", cfg, "--device", "nope")
    assert r.code == 1
    assert "no device 'nope'" in r.err and "van-gnss" in r.err


def test_status_exits_69_when_agent_is_not_running(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "agent.toml", broker_port=1)
    # A stale socket file left by a killed agent: nothing listens on it.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(tmp_path / "control.sock"))
    s.close()
    for verb in (["status"], ["status", "--json"], ["devices"], ["tail"], ["devices", "--json"]):
        r = run_cli(*verb, "--config", cfg)
        assert r.code == 69, (verb, r)
        if "--json" in verb:  # the error as JSON on stdout, for scripts
            err = r.json()["error"]
            assert (r.json()["ok"], err["exit"], err["kind"]) == (False, 69, "unreachable")
            assert err["message"].startswith("agent not reachable: no agent is listening on ")
        else:
            assert r.out == ""
        assert f"socket tried: {tmp_path / 'control.sock'}" in r.err
        assert "systemctl status edge-agent" in r.err
        assert "Traceback" not in r.err
    (tmp_path / "control.sock").unlink()
    r = run_cli("status", "--config", cfg)
    assert r.code == 69 and "no agent is listening" in r.err


def test_status_with_invalid_config_exits_78(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[gateway]\nid = "gw"\n[control]\nsocket = 5\n')
    r = run_cli("status", "--config", bad)
    assert r.code == 78
    assert "control.socket" in r.err
