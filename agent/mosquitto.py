"""A local Mosquitto broker on a free loopback port (for the demo and the tests)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_taken(port: int) -> bool:
    """Someone holds `port` on loopback (a bind as mosquitto does it, SO_REUSEADDR, fails EADDRINUSE)."""
    import errno

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            return e.errno == errno.EADDRINUSE
    return False


def quiet_port() -> int:
    """A free port below the kernel's ephemeral range, for a broker that starts (or restarts)
    later on a port the agent already knows: no outgoing connection can take it meanwhile."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
    rng = random.Random()  # not seeded: parallel runs must not pick alike
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


def wait_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    """Poll until something accepts connections on host:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def mosquitto_path() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)), None
    )


class LocalBroker:
    """`mosquitto -c <generated conf>`; `extra` lines are appended to the config."""

    def __init__(self, port: int | None = None, extra: str = "", workdir: Path | None = None,
                 persistent: bool = False) -> None:
        exe = mosquitto_path()
        if exe is None:
            raise FileNotFoundError("mosquitto is not installed (Debian: apt-get install mosquitto)")
        self.exe = exe
        self.port = port or free_port()
        self._may_move = port is None  # our own pick: another process may grab it before mosquitto binds
        self.host = "127.0.0.1"
        self.dir = workdir or Path(tempfile.mkdtemp(prefix="mosq-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        # Started as root, mosquitto drops to its own user: it must be able to write its log and
        # persistence file here.
        os.chmod(self.dir, 0o1777)
        self.extra = extra
        self.persistent = persistent
        self.proc: subprocess.Popen[bytes] | None = None

    def write_conf(self) -> Path:
        conf = self.dir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            + (f"persistence true\npersistence_location {self.dir}/\n" if self.persistent else "persistence false\n")
            +
            f"log_dest file {self.dir / 'mosquitto.log'}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            "max_inflight_messages 0\nmax_queued_messages 0\n"
            + self.extra
        )
        return conf

    def start(self, timeout: float = 20.0) -> LocalBroker:
        for attempt in range(3):
            try:
                return self._start(timeout)
            except RuntimeError:
                # Only a first start may move to another port (clients learn the port from us
                # after it); a restart must keep its port, so it fails instead.
                if not (self._may_move and port_taken(self.port)) or attempt == 2:
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> LocalBroker:
        conf = self.write_conf()
        self.proc = proc = subprocess.Popen([self.exe, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                            stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while True:
            # A mosquitto that exited (bad config, port taken meanwhile) fails at once with its
            # own error; a slow one (loaded machine) gets `timeout` seconds.
            if proc.poll() is None:
                try:
                    wait_port(self.port, timeout=0.2)
                    self._may_move = False
                    return self
                except TimeoutError:
                    pass
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                err = proc.stderr.read().decode() if proc.stderr else ""
                log = (self.dir / "mosquitto.log").read_text() if (self.dir / "mosquitto.log").exists() else ""
                self.proc = None
                raise RuntimeError(f"mosquitto did not start on port {self.port}: {err}{log}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
