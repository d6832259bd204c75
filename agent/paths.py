"""Well-known paths, importable without the config layer (the CLI's fast start depends on it)."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_CONFIG_PATH = "/etc/edge-agent/agent.toml"
CONFIG_ENV = "EDGE_AGENT_CONFIG"


def default_config_path() -> Path:
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


def demo_pointer() -> Path:
    """Where a running `edge-agent demo` names its config, for this user's CLI to find it."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "edge-agent-demo.json"
    return Path(os.environ.get("TMPDIR") or "/tmp") / f"edge-agent-demo-{os.getuid()}.json"
