"""The hardware-free demo shows data from every simulated device arriving at the platform."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent.demo import demo_devices
from agent.paths import DEFAULT_CONFIG_PATH
from tests.support.cli import Spawned
from tests.support.wait import wait_until


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


def test_the_cli_finds_a_running_demo(tmp_path: Path) -> None:
    """No config given and none at the default path: `edge-agent status` talks to this user's demo."""
    if Path(DEFAULT_CONFIG_PATH).exists():
        pytest.skip(f"{DEFAULT_CONFIG_PATH} exists here: the CLI rightly uses it")
    env = {k: v for k, v in os.environ.items() if k != "EDGE_AGENT_CONFIG"}
    env.update(XDG_RUNTIME_DIR=str(tmp_path), COLUMNS="80")
    demo = Spawned("demo", "--seconds", "60", env=env)
    try:
        wait_until(lambda: any("in another terminal: " in line for line in demo.err), 60, f"hint: {demo.err}")
        hint = next(line for line in demo.err if "in another terminal: " in line)
        assert hint.split("in another terminal: ")[1].split("   ")[0].endswith("edge-agent status"), hint
        ptr = tmp_path / "edge-agent-demo.json"
        assert json.loads(ptr.read_text())["pid"] == demo.proc.pid
        # Data flowing (the uplink is connected: else status rightly says 4) and a device event shown.
        wait_until(lambda: any(line.startswith("platform <- event: ") for line in demo.out), 60,
                   f"a device event at the platform: {demo.out[-5:]}")
        r = subprocess.run([sys.executable, "-m", "agent", "status"], env=env, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode in (0, 3), r  # 3: this machine's clock may be unsynchronised
        assert r.stdout.startswith("gw-demo  edge-agent ") and "using the running demo's " in r.stderr
        demo.proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert demo.wait(60) == 0, demo.err[-20:]
        assert not ptr.exists()  # gone with the demo
        assert sum(line.startswith("platform <- status: offline") for line in demo.out) == 1, demo.out[-5:]
        events = [line for line in demo.out if line.startswith("platform <- event: ")]
        assert events and all(len(line) <= 80 and "{" not in line for line in events), events[:3]
    finally:
        demo.close()
    r = subprocess.run([sys.executable, "-m", "agent", "status"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 78 and "file not found" in r.stderr  # no demo, no config: as before


def test_the_live_view_aligns_ids_longer_than_twelve_characters() -> None:
    from agent.demo import _fmt_reading

    ids = [d.id for d in demo_devices()]
    assert max(len(i) for i in ids) > 12, "the scene has long ids (cargo-1-battery)"
    width = max(12, *(len(i) for i in ids))
    lines = [_fmt_reading({"seq": n, "device": i, "ts": "2026-11-27T07:49:54.480Z", "values": {"x": 1}}, width, 100)
             for n, i in enumerate(ids, 1)]
    assert len({line.index("07:49:54.480") for line in lines}) == 1, "\n".join(lines)
    assert all(f" {i} " in line for i, line in zip(ids, lines, strict=True))
