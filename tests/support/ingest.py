"""`edge-agent ingest` as subprocesses, and gateways replayed from real agent outboxes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from agent.buffer import Outbox
from agent.model import Reading
from tests.support.wait import wait_until


class IngestProcess:
    """`python -m agent ingest …` with a stable client id; restartable after kill -9."""

    def __init__(self, db: str, broker_port: int, workdir: Path, name: str, *extra: str,
                 group: str = "city") -> None:
        self.cmd = [sys.executable, "-m", "agent", "ingest", "--db", db, "--broker",
                    f"mqtt://127.0.0.1:{broker_port}", "--group", group, "--client-id", name,
                    "--log-level", "info", *extra]
        self.log = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> IngestProcess:
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen(self.cmd, stdout=f, stderr=subprocess.STDOUT)
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_log(self, text: str, count: int = 1, timeout: float = 30.0) -> None:
        def seen() -> bool:
            if self.proc is not None and self.proc.poll() is not None and self.output().count(text) < count:
                raise AssertionError(f"ingest exited {self.proc.returncode}:\n{self.output()[-3000:]}")
            return self.output().count(text) >= count

        wait_until(seen, timeout, f"{text!r} in {self.log.name}:\n{self.output()[-2000:]}")

    def start_subscribed(self) -> IngestProcess:
        n = self.output().count("subscribed to")
        self.start()
        self.wait_log("subscribed to", count=n + 1)
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def terminate(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()


def reading(i: int, device: str = "a101-co2") -> Reading:
    return Reading(device=device, driver="senseair_s8", values={"co2": 400 + i % 1000, "temperature": 21.5},
                   ts=1_790_000_000.0 + i, clock="synced", tags={"room": "A101"}, mono=float(i))


class ReplayGateway:
    """A gateway's real SQLite outbox; its telemetry and events, byte for byte as the agent sends them."""

    def __init__(self, workdir: Path, gateway: str, **outbox: Any) -> None:
        self.gateway = gateway
        self.ob = Outbox(workdir / f"{gateway}.db", gateway=gateway, **outbox).open()
        self.accepted = 0

    def accept(self, n: int, per_commit: int = 10) -> None:
        for start in range(0, n, per_commit):
            self.ob.commit([reading(self.accepted + k) for k in range(min(per_commit, n - start))])
            self.accepted += min(per_commit, n - start)

    def messages(self, batch: int = 20) -> list[tuple[str, bytes]]:
        """(topic, payload) for everything still in the outbox, then its events."""
        head = f'{{"v":1,"gateway":{json.dumps(self.gateway)},"epoch":{json.dumps(self.ob.epoch)},"readings":['
        rows = self.ob.fetch(0, 10**9)
        out = [(f"edge/{self.gateway}/telemetry", (head + ",".join(p for _, p in rows[i:i + batch]) + "]}").encode())
               for i in range(0, len(rows), batch)]
        out += [(f"edge/{self.gateway}/events", p.encode()) for _, p in self.ob.fetch_events(10**6)]
        return out

    def close(self) -> None:
        self.ob.close()


class Publisher:
    """A bare paho QoS 1 publisher; `send` returns once the broker acknowledged everything."""

    def __init__(self, port: int, client_id: str = "replay") -> None:
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.c.max_inflight_messages_set(50)
        self.c.max_queued_messages_set(0)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def send(self, msgs: list[tuple[str, bytes]], per_second: float | None = None,
             progress: threading.Event | None = None, timeout: float = 60.0) -> None:
        """Publish in order; at `per_second` messages/s if given; `progress` is set at the halfway mark."""
        infos = []
        t0 = time.monotonic()
        for i, (topic, payload) in enumerate(msgs):
            if per_second:
                delay = t0 + i / per_second - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            infos.append(self.c.publish(topic, payload, qos=1))
            if progress is not None and i == len(msgs) // 2:
                progress.set()
        for info in infos:
            info.wait_for_publish(timeout)
            assert info.is_published(), "broker did not acknowledge a publish"

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()
