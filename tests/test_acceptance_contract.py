"""Acceptance audit against DESIGN.md: contract points an outside acceptance run exercises."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from agent.cli import doctor
from agent.config import load_config
from drivers import KNOWN_DRIVERS
from tests.support.agentproc import AgentProcess, write_config
from tests.support.broker import Broker
from tests.support.mqtt import Subscriber, wait_until

# The configuration block of DESIGN.md, verbatim except the elided serial port path.
DESIGN_EXAMPLE = """\
[gateway]
id = "gw-parken-01"          # required, [a-z0-9][a-z0-9-]{0,63}

[buffer]
path = "buffer.db"
max_bytes = "256MB"          # int bytes or "NNN[KB|MB|GB]"
max_age = "14d"              # "NNs|m|h|d"
on_full = "drop_oldest"      # or "reject_new"

[uplink]                     # MQTT to the city platform
host = "127.0.0.1"
port = 1883
topic_prefix = "edge/gw-parken-01"   # default "edge/<gateway.id>"
qos = 1

[control]
socket = "/run/edge-agent/control.sock"   # local CLI <-> running agent

[[devices]]
id = "a101-co2"              # unique, [a-z0-9][a-z0-9_.-]{0,63}
driver = "senseair_s8"       # see the driver table
port = "/dev/serial/by-id/usb-x"  # serial drivers
baud = 9600                  # serial drivers, driver default when absent
tags = { room = "A101" }
"""


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=60)


def test_config_schema_accepts_the_documented_file_forms(tmp_path: Path) -> None:
    """`config schema` describes the file as written: "256MB", "14d", "500ms" validate; typos do not."""
    r = cli("config", "schema")
    assert r.returncode == 0, r.stderr
    validator = jsonschema.Draft202012Validator(json.loads(r.stdout))
    doc = tomllib.loads(DESIGN_EXAMPLE)
    assert list(validator.iter_errors(doc)) == []
    (tmp_path / "agent.toml").write_text(DESIGN_EXAMPLE)
    assert cli("config", "check", str(tmp_path / "agent.toml")).returncode == 0  # the product agrees
    example = tomllib.loads((Path(__file__).parents[1] / "config" / "example.toml").read_text())
    assert list(validator.iter_errors(example)) == []
    forms = {"max_bytes": [4096, "512KB", "256MB", "1GB", "64MiB"], "max_age": [3600, "90s", "30m", "2h", "14d"],
             "commit_interval": [0.5, "500ms"]}
    for key, values in forms.items():
        for v in values:
            assert list(validator.iter_errors({**doc, "buffer": {key: v}})) == [], (key, v)
    bad = {"max_bytes": ["12XB", "lots", -1], "max_age": ["3w", "soon", -5]}
    for key, values in bad.items():
        for v in values:
            errs = list(validator.iter_errors({**doc, "buffer": {key: v}}))
            assert [list(e.path) for e in errs] == [["buffer", key]], (key, v)


def test_doctor_counts_only_radio_devices_as_bluetooth(tmp_path: Path) -> None:
    """A `sim` device simulating a BLE family (with an address) needs no Bluetooth adapter."""
    cfg_path = tmp_path / "agent.toml"
    cfg_path.write_text(
        '[gateway]\nid = "gw"\n'
        '[[devices]]\nid = "sim-tag"\ndriver = "sim"\nfamily = "ruuvi"\naddress = "C7:F5:2A:A1:B2:C3"\n'
        '[[devices]]\nid = "tag"\ndriver = "ruuvi"\naddress = "C7:F5:2A:A1:B2:C4"\n'
        '[[devices]]\nid = "gnss"\ndriver = "nmea"\nport = "/dev/ttyUSB0"\n'
    )
    assert doctor._ble_devices(load_config(cfg_path)) == ["tag"]


# DESIGN.md driver table: the quantities each family delivers (at least these, canonical units).
DESIGN_QUANTITIES = {
    "nmea": {"latitude", "longitude", "altitude", "speed", "course", "satellites", "hdop", "fix"},
    "pms5003": {"pm1_0", "pm2_5", "pm10"},
    "sds011": {"pm2_5", "pm10"},
    "modbus": {"co2"},  # "as mapped": the simulated slave is an S8
    "senseair_s8": {"co2"},
    "lines": {"temperature", "humidity", "co2"},  # "as mapped": the simulated board's field map
    "ruuvi": {"temperature", "humidity", "pressure", "battery_voltage"},
    "bthome": {"temperature", "humidity", "battery"},  # "as advertised"
    "xiaomi": {"temperature", "humidity", "battery"},
    "aranet4": {"co2", "temperature", "humidity", "pressure"},
    "ble_nus": {"temperature", "humidity", "co2"},  # "via lines format"
    # issue 13 (docs/VEHICLE.md); speed and distance because the simulated ride has a wheel geometry
    "vesc": {"temperature_fet", "temperature_motor", "motor_current", "input_current", "duty", "erpm",
             "input_voltage", "amp_hours", "amp_hours_charged", "watt_hours", "watt_hours_charged", "tachometer",
             "tachometer_abs", "fault", "speed", "distance"},
    "jbd_bms": {"voltage", "current", "power", "remaining_capacity", "nominal_capacity", "cycles", "state_of_charge",
                "cell_voltage_1", "cell_voltage_13", "cell_voltage_min", "cell_voltage_max", "cell_voltage_delta",
                "temperature_1", "temperature_2", "charge_fet", "discharge_fet", "protection", "balancing"},
    "can": set(),  # "as in the DBC": each reading is one message's signals (tests/test_can*.py check them)
    "obd2": {"speed", "rpm", "coolant_temperature", "module_voltage", "pack_remaining_life"},
}
# can: every reading carries some of these, and together they cover the demo DBC's pack and motor
CAN_SIGNALS = {"pack_voltage", "pack_current", "state_of_charge", "bms_state", "motor_speed", "vehicle_speed"}


def test_sim_simulates_every_family_of_the_driver_table(tmp_path: Path, broker: Broker) -> None:
    """`sim` = "simulated device of any family above": each one reaches the platform with its quantities."""
    assert set(DESIGN_QUANTITIES) == KNOWN_DRIVERS - {"sim"}
    devices = "".join(
        f'[[devices]]\nid = "sim-{fam.replace("_", "-")}"\ndriver = "sim"\nfamily = "{fam}"\ninterval = "100ms"\n'
        + (f'address = "C7:F5:2A:A1:B2:{i:02X}"\n' if fam in ("ruuvi", "bthome", "xiaomi", "aranet4") else "")
        for i, fam in enumerate(sorted(DESIGN_QUANTITIES))
    )
    cfg = write_config(tmp_path / "agent.toml", broker_port=broker.port, devices=devices)
    assert cli("config", "check", str(cfg)).returncode == 0
    sub = Subscriber("127.0.0.1", broker.port, "edge/gw-test/#")
    agent = AgentProcess(cfg).start()
    try:
        def per_device() -> dict[str, list[dict[str, Any]]]:
            out: dict[str, list[dict[str, Any]]] = {}
            for r in sub.readings():
                out.setdefault(r["device"], []).append(r)
            return out

        sub.wait_for(lambda: len(per_device()) == len(DESIGN_QUANTITIES)
                     and all(len(v) >= 3 for v in per_device().values()), 30, "3 readings of every family")
        assert agent.terminate() == 0
    finally:
        agent.close()
        sub.close()
    got = per_device()
    for fam, quantities in DESIGN_QUANTITIES.items():
        readings = got[f"sim-{fam.replace('_', '-')}"]
        assert {r["driver"] for r in readings} == {"sim"}
        for r in readings:
            assert quantities <= set(r["values"]), (fam, r["values"])
    assert CAN_SIGNALS <= set().union(*(r["values"] for r in got["sim-can"]))
    seqs = [r["seq"] for r in sub.readings()]
    assert seqs == list(range(1, len(seqs) + 1))  # one connection, no outage: in order, no holes


def test_every_verb_takes_config_and_read_verbs_take_json(tmp_path: Path) -> None:
    """DESIGN: every verb takes `--config PATH`, each read verb `--json`; a bad file is exit 78, not 2."""
    bad = tmp_path / "bad.toml"
    bad.write_text('[gateway]\nid = "gw"\n[uplink]\nport = "x"\n')
    r = cli("config", "schema", "--json", "--config", str(bad))
    assert r.returncode == 0 and json.loads(r.stdout)["title"] == "edge-agent configuration"
    for args in (["config", "show", str(bad)], ["config", "show", "--json", str(bad)], ["demo", "--config", str(bad)]):
        r = cli(*args)
        assert r.returncode == 78, (args, r.stderr)
        assert "uplink.port: " in r.stderr and "(line 4)" in r.stderr
    good = tmp_path / "good.toml"
    good.write_text('[gateway]\nid = "gw-a"\n')
    r = cli("config", "show", "--json", str(good))
    assert r.returncode == 0 and json.loads(r.stdout)["uplink"]["topic_prefix"] == "edge/gw-a"
    r = cli("buffer", "export", "--json", "--config", str(good))  # accepted; no buffer yet -> failure
    assert (r.returncode, r.stderr.startswith("edge-agent buffer: no buffer database at")) == (1, True)
    assert cli("buffer", "export", "--json", "--format", "csv", "--config", str(good)).returncode == 2


def test_demo_runs_a_given_config_against_its_own_broker(tmp_path: Path) -> None:
    """`demo --config PATH`: that file's gateway and sim devices, delivered to the demo's local broker."""
    cfg = tmp_path / "mine.toml"
    cfg.write_text(
        '[gateway]\nid = "gw-mine"\n[uplink]\nhost = "mqtt.city.example"\nport = 8883\n'
        '[buffer]\npath = "/nonexistent/buffer.db"\n[control]\nsocket = "/nonexistent/control.sock"\n'
        '[[devices]]\nid = "co2"\ndriver = "sim"\nfamily = "senseair_s8"\ninterval = "200ms"\n'
    )
    r = subprocess.run([sys.executable, "-m", "agent", "demo", "--config", str(cfg), "--seconds", "3", "--json",
                        "--dir", str(tmp_path / "work")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    msgs = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    readings = [x for m in msgs if m["topic"] == "edge/gw-mine/telemetry" for x in m["payload"]["readings"]]
    assert readings and {x["device"] for x in readings} == {"co2"}
    assert [x["seq"] for x in readings] == list(range(1, len(readings) + 1))
    assert (tmp_path / "work" / "buffer.db").exists()  # the file's own state paths are left alone


def test_receive_that_never_subscribed_is_a_failure() -> None:
    """A receiver that could not reach the broker checked nothing: exit 1 and say why, not "OK"."""
    r = subprocess.run([sys.executable, "-m", "agent", "receive", "--broker", "127.0.0.1:1", "--topic-prefix",
                        "edge/gw", "--seconds", "1", "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    rep = json.loads(r.stdout.splitlines()[-1])
    assert rep["ok"] is False and rep["errors"] == ["never subscribed: broker 127.0.0.1:1 not reachable or refused us"]


def test_first_status_of_a_buffering_agent_shows_its_accept_rate(tmp_path: Path) -> None:
    """Broker unreachable from the start (no health published): the first `status` still has the rate."""
    from agent.mosquitto import free_port

    devices = '[[devices]]\nid = "pm"\ndriver = "sim"\nfamily = "sds011"\ninterval = "100ms"\n'
    cfg = write_config(tmp_path / "agent.toml", broker_port=free_port(), devices=devices)
    agent = AgentProcess(cfg).start()
    try:
        def depth() -> int:  # from SQLite directly: asking the agent would prime its rate meter
            r = cli("buffer", "stats", "--json", "--config", str(cfg))
            return int(json.loads(r.stdout)["depth"]) if r.returncode == 0 else 0

        wait_until(lambda: depth() >= 10, 30, "10 readings buffered")
        r = cli("status", "--json", "--config", str(cfg))
        assert r.returncode == 4, r.stderr  # the uplink is down: data is buffering
        st = json.loads(r.stdout)
        assert st["uplink"]["state"] in ("backoff", "connecting") and st["uplink"]["published"] == 0
        assert 3.0 < st["buffer"]["accept_rate"] < 15.0  # ~10/s since start
        assert st["buffer"]["time_to_full"] is not None and st["buffer"]["time_to_full"] > 0
        assert agent.terminate() == 0
    finally:
        agent.close()


def test_config_show_round_trips_through_config_check(tmp_path: Path) -> None:
    """`config show` prints a file that `config check` accepts and that means the same (mode as 0o660)."""
    src = tmp_path / "agent.toml"
    src.write_text(DESIGN_EXAMPLE.replace('[control]\n', '[control]\nmode = 0o640\n'))
    shown = cli("config", "show", str(src))
    assert shown.returncode == 0 and "\nmode = 0o640\n" in shown.stdout
    again = tmp_path / "again.toml"
    again.write_text(shown.stdout)
    assert cli("config", "check", str(again)).returncode == 0
    assert json.loads(cli("config", "show", "--json", str(again)).stdout) == json.loads(
        cli("config", "show", "--json", str(src)).stdout)


@pytest.mark.parametrize("where", ["gateway", "uplink", "top"])
def test_config_show_has_one_health_interval_whichever_key_set_it(tmp_path: Path, where: str) -> None:
    """The aliases of gateway.health_interval set it: no `health_interval: null` beside it, and the shown file means it."""
    key = 'health_interval = "20s"\n'
    src = tmp_path / "agent.toml"
    src.write_text((key if where == "top" else "") + '[gateway]\nid = "gw-a"\n' + (key if where == "gateway" else "")
                   + "[uplink]\n" + (key if where == "uplink" else ""))
    data = json.loads(cli("config", "show", "--json", str(src)).stdout)
    assert "health_interval" not in data and "health_interval" not in data["uplink"]
    assert data["gateway"]["health_interval"] == 20.0
    shown = cli("config", "show", str(src)).stdout
    assert shown.count("health_interval") == 1 and '\nhealth_interval = "20s"\n' in shown, shown
    again = tmp_path / "again.toml"
    again.write_text(shown)
    assert cli("config", "check", str(again)).returncode == 0
    assert load_config(again).health_every == load_config(src).health_every == 20.0
