"""The hardware-free demo shows data from every simulated device arriving at the platform."""

from __future__ import annotations

import json
import subprocess
import sys

from agent.demo import demo_devices


def test_demo_delivers_every_simulated_device() -> None:
    r = subprocess.run([sys.executable, "-m", "agent", "demo", "--seconds", "7", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    msgs = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    readings = [x for m in msgs if m["topic"].endswith("/telemetry") for x in m["payload"]["readings"]]
    seen = {x["device"] for x in readings}
    assert seen == {d.id for d in demo_devices()}
    assert [x["seq"] for x in readings] == list(range(1, len(readings) + 1))
    states = [m["payload"]["state"] for m in msgs if m["topic"].endswith("/status")]
    assert states[0] == "online" and states[-1] == "offline"
    assert "readings reached the platform" in r.stderr
