"""Acceptance audit against DESIGN.md: contract points an outside acceptance run exercises."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema

from agent.cli import doctor
from agent.config import load_config

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
