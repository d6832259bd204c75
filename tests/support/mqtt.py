"""A platform-side subscriber (paho in its own thread) that records every message."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from tests.support.wait import wait_until

__all__ = ["Msg", "Subscriber", "wait_until"]


@dataclass(frozen=True)
class Msg:
    topic: str
    payload: bytes
    retain: bool
    qos: int

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    def __init__(self, host: str, port: int, topic: str = "#", persistent: bool = False) -> None:
        self.messages: list[Msg] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        # persistent: a platform consumer with a durable session gets what was queued while it was away
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{id(self)}",
                             clean_session=not persistent)
        self.c.on_message = self._on_message
        self.c.on_connect = lambda c, u, f, rc, p=None: c.subscribe(topic, qos=1)
        self.c.on_subscribe = lambda *a: self._subscribed.set()
        self.c.reconnect_delay_set(0.05, 0.5)
        self.c.connect_async(host, port, keepalive=10)
        self.c.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("subscriber could not subscribe")

    def _on_message(self, c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Msg(m.topic, m.payload, bool(m.retain), m.qos))

    def on(self, suffix: str) -> list[Msg]:
        with self._lock:
            return [m for m in self.messages if m.topic.endswith(suffix)]

    def readings(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for m in self.on("/telemetry"):
            out.extend(m.json()["readings"])
        return out

    def wait_for(self, pred: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
        wait_until(pred, timeout, what)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


