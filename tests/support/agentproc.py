"""The agent as a real subprocess (`python -m agent run`), for kill -9 and signal tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any


def write_config(path: Path, *, gateway: str = "gw-test", broker_port: int, devices: str = "",
                 buffer: str = "", uplink: str = "", extra: str = "") -> Path:
    path.write_text(textwrap.dedent(f"""\
        [gateway]
        id = "{gateway}"
        health_interval = "60s"

        [buffer]
        path = "buffer.db"
        commit_interval = "100ms"
        {buffer}

        [uplink]
        host = "127.0.0.1"
        port = {broker_port}
        backoff_initial = "100ms"
        backoff_max = "1s"
        {uplink}

        [control]
        socket = "control.sock"
        {extra}
        """) + textwrap.dedent(devices))
    return path


def nmea_device(port: str, dev_id: str = "van-gnss", *, tags: str = 'vehicle = "van-3"',
                expected_interval: str = "30s") -> str:
    """A `[[devices]]` block: an NMEA receiver on `port` (tags/expected_interval "" to leave out)."""
    lines = ["[[devices]]", f'id = "{dev_id}"', 'driver = "nmea"', f'port = "{port}"']
    if expected_interval:
        lines.append(f'expected_interval = "{expected_interval}"')
    if tags:
        lines.append(f"tags = {{ {tags} }}")
    return "\n" + "\n".join(lines) + "\n"


class AgentProcess:
    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log = config.with_name("agent.log")
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        if hasattr(self, "_logf"):
            self._logf.close()  # the previous life's handle (restarts append to the same log)
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(self.config), "--log-level", "debug"],
            stdout=self._logf, stderr=subprocess.STDOUT, env=self.env,
        )
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def wait(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def wait_log(self, text: str, timeout: float = 20.0, count: int = 1) -> None:
        """Poll the agent's log until `text` appeared `count` times (e.g. a port was opened)."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.output().count(text) >= count:
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {text!r} in the agent log:\n{self.output()[-3000:]}")

    def start_and_wait_port(self, device: str = "van-gnss", count: int = 1) -> AgentProcess:
        """Start, then wait until the device's port is open (pyserial flushes input on open)."""
        self.start()
        try:
            self.wait_log(f"{device}: opened", count=count)
        except BaseException:
            self.close()  # the caller may not hold this object yet: leave no agent running behind
            raise
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def close(self) -> Any:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if hasattr(self, "_logf"):
            self._logf.close()
