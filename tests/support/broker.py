"""A real Mosquitto broker on a free loopback port, stoppable to simulate outages."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.mosquitto import LocalBroker, free_port, mosquitto_path, quiet_port, wait_port

__all__ = ["Broker", "free_port", "mosquitto_path", "quiet_port", "wait_port"]



class Broker(LocalBroker):
    """LocalBroker that fails the test (not errors) when mosquitto is missing."""

    def __init__(self, port: int | None = None, extra: str = "", workdir: Path | None = None,
                 persistent: bool = False) -> None:
        if mosquitto_path() is None:
            pytest.fail("mosquitto is not installed (scripts/test installs the Debian package)")
        super().__init__(port, extra, workdir, persistent)
