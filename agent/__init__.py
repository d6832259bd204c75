"""edge-agent: serial and BLE sensors to a durable SQLite outbox to MQTT."""

from __future__ import annotations

__version__ = "0.1.0"
