"""An outside driver family (tests/plugin/edge-agent-thermo, its own distribution, installed by scripts/test)
is found through the entry point, validated, simulated and delivered end to end through Mosquitto."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from drivers.registry import registry
from tests.support.agentproc import AgentProcess, write_config
from tests.support.broker import Broker
from tests.support.mqtt import Subscriber
from tests.support.pty import PtyDevice

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "tests" / "plugin" / "edge-agent-thermo"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=60)


def test_the_plugin_is_found_through_its_entry_point() -> None:
    reg = registry()
    assert "acme_th1" in reg.drivers, f"edge-agent-thermo is not installed: run scripts/test ({reg.problems})"
    r = reg.drivers["acme_th1"]
    assert (r.plugin, r.dist, r.builtin) == ("thermo", "edge-agent-thermo", False)
    import edge_thermo

    assert Path(edge_thermo.__file__).resolve().is_relative_to(PLUGIN)  # its own package, nothing in the product
    import drivers

    assert "acme_th1" not in drivers.KNOWN_DRIVERS  # the product's own driver table stays DESIGN.md's


def test_the_plugin_is_validated_with_key_and_line(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[gateway]\nid = "gw"\n\n[[devices]]\nid = "th"\ndriver = "acme_th1"\nport = "/dev/ttyUSB0"\n'
                   'address = "C7:F5:2A:A1:B2:C3"\ncolour = "red"\n')
    r = cli("config", "check", str(cfg))
    assert r.returncode == 78
    out = r.stdout + r.stderr
    assert "devices[0].address: not used by serial driver 'acme_th1' (it reads `port`) (line 8)" in out
    assert "devices[0].colour: unknown key (line 9)" in out
    schema = json.loads(cli("config", "schema").stdout)
    th = schema["$defs"]["Device_acme_th1"]
    assert th["description"] == "Acme TH-1 thermo-hygrometer ($TH sentences) (plugin edge-agent-thermo)"
    assert th["required"] == ["id", "driver", "port"]
    assert "Plugin drivers: acme_th1 (edge-agent-thermo)." in " ".join(cli("--help").stdout.split())


def test_the_plugin_simulated_and_on_a_pty_reaches_the_platform(tmp_path: Path, broker: Broker) -> None:
    from edge_thermo.protocol import sentence
    from edge_thermo.simulator import samples

    pty = PtyDevice()
    cfg = write_config(tmp_path / "agent.toml", broker_port=broker.port, devices=f"""
        [[devices]]
        id = "lab-th"
        driver = "acme_th1"
        port = "{pty.port}"
        tags = {{ room = "lab" }}

        [[devices]]
        id = "sim-th"
        driver = "sim"
        family = "acme_th1"
        interval = "100ms"
        """)
    assert cli("config", "check", str(cfg)).returncode == 0
    sub = Subscriber("127.0.0.1", broker.port, "edge/gw-test/#")
    agent = AgentProcess(cfg).start()
    want = list(itertools.islice(samples(), 20))
    try:
        def of(dev: str) -> list[dict[str, Any]]:
            return [r for r in sub.readings() if r["device"] == dev]

        def lab(key: str) -> Any:
            r = cli("devices", "--config", str(cfg), "--json")
            rows = json.loads(r.stdout)["devices"] if r.returncode == 0 else []
            return next((d[key] for d in rows if d["id"] == "lab-th"), None)

        sub.wait_for(lambda: len(of("sim-th")) >= 3, 30, "3 simulated readings")
        sub.wait_for(lambda: lab("link") == "connected", 30, "the acme_th1 driver has the pty open")
        for t, h in want:
            pty.write(sentence(t, h))
        pty.write(b"$TH,99.00,1.0*00\r\n")  # bad checksum: counted, not delivered
        sub.wait_for(lambda: len(of("lab-th")) >= len(want), 30, "every sentence from the pty")
        sub.wait_for(lambda: lab("errors") == {"checksum": 1}, 30, "the bad sentence counted")
        assert agent.terminate() == 0
    finally:
        agent.close()
        sub.close()
        pty.close()
    got = of("lab-th")
    assert [(r["values"]["temperature"], r["values"]["humidity"]) for r in got] == want
    assert {(r["driver"], r["tags"]["room"]) for r in got} == {("acme_th1", "lab")}
    simulated = [(r["values"]["temperature"], r["values"]["humidity"]) for r in of("sim-th")]
    assert simulated == list(itertools.islice(samples(), len(simulated)))
    seqs = [r["seq"] for r in sub.readings()]
    assert seqs == list(range(1, len(seqs) + 1))  # in order, no duplicates, no holes
