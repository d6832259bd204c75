"""`edge-agent receive` as a subprocess: the platform-side oracle of end-to-end tests."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.broker import Broker


def persistent_broker(extra: str = "") -> Broker:
    """A broker that keeps sessions and queued messages across a clean restart (SIGTERM)."""
    b = Broker(extra=extra)
    b.extra += f"persistence true\npersistence_location {b.dir}/\nuser root\n"
    return b


class ReceiverProcess:
    """Runs `edge-agent receive --json --every 0.2`; `latest()` is its newest report."""

    def __init__(self, port: int, prefix: str, workdir: Path, *extra: str) -> None:
        self.out = workdir / "receiver.jsonl"
        self.err = workdir / "receiver.log"
        self.db = workdir / "receiver.db"
        self._out = open(self.out, "wb")
        self._err = open(self.err, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "receive", "--broker", f"127.0.0.1:{port}",
             "--topic-prefix", prefix, "--db", str(self.db), "--json", "--every", "0.2",
             "--since-epoch-start", *extra],
            stdout=self._out, stderr=self._err,
        )

    def reports(self) -> list[dict[str, Any]]:
        out = []
        for line in self.out.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass  # a line being written
        return out

    def latest(self) -> dict[str, Any] | None:
        reps = self.reports()
        return reps[-1] if reps else None

    def log(self) -> str:
        return self.err.read_text(errors="replace")

    def wait_subscribed(self, count: int = 1, timeout: float = 20.0) -> None:
        self.wait(lambda: self.log().count("subscribed to") >= count, timeout, "receiver subscribed")

    def wait_report(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 30.0,
                    what: str = "report") -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def check() -> bool:
            rep = self.latest()
            if rep is not None and pred(rep):
                found.append(rep)
                return True
            return False

        self.wait(check, timeout, what)
        return found[0]

    def wait(self, pred: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"receiver exited {self.proc.returncode}: {self.log()[-2000:]}")
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; latest report: {self.latest()}\n"
                             f"{self.log()[-2000:]}")

    def stop(self) -> tuple[int, dict[str, Any]]:
        """SIGTERM; returns (exit status, final report)."""
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(15)
        final = [r for r in self.reports() if r.get("final")]
        assert final, f"no final report; stderr: {self.log()[-2000:]}"
        return rc, final[-1]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._out.close()
        self._err.close()
