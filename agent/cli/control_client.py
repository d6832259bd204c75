"""CLI side of the control socket (agent/control.py): blocking JSON-lines client."""

from __future__ import annotations

import errno
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.cli.common import EXIT_FAILURE, EXIT_UNREACHABLE, CliExit
from agent.config import AgentConfig
from agent.errors import AgentNotReachable, ControlError

TIMEOUT = 10.0


class ControlClient:
    """One connection to a running agent."""

    def __init__(self, path: Path, timeout: float = TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = b""
        self._id = 0

    def connect(self) -> ControlClient:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(str(self.path))
        except OSError as e:
            s.close()
            raise AgentNotReachable(_why(self.path, e)) from None
        self._sock = s
        return self

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> ControlClient:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, obj: dict[str, Any]) -> None:
        assert self._sock is not None
        try:
            self._sock.sendall(json.dumps(obj).encode() + b"\n")
        except OSError as e:
            raise AgentNotReachable(f"lost the agent on {self.path}: {e.strerror or e}") from None

    def _line(self) -> dict[str, Any]:
        assert self._sock is not None
        while b"\n" not in self._buf:
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                raise AgentNotReachable(
                    f"the agent on {self.path} did not answer within {self.timeout:g} s"
                ) from None
            except OSError as e:
                raise AgentNotReachable(
                    f"lost the agent on {self.path}: {e.strerror or e}"
                ) from None
            if not chunk:
                raise AgentNotReachable(f"the agent on {self.path} closed the connection")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return json.loads(line)  # type: ignore[no-any-return]

    def request(self, cmd: str, **args: Any) -> dict[str, Any]:
        """Send one command; its result, or ControlError carrying the agent's error code."""
        self._id += 1
        self._send({"id": self._id, "cmd": cmd, **args})
        resp = self._line()
        if not resp.get("ok"):
            err = resp.get("error") or {}
            raise ControlError(f"{err.get('code', 'error')}: {err.get('message', '')}")
        return resp.get("result") or {}

    def subscribe(self, device: str | None = None) -> dict[str, Any]:
        """Start a `tail` subscription on this connection (no further requests on it)."""
        args: dict[str, Any] = {} if device is None else {"device": device}
        result = self.request("tail", **args)
        assert self._sock is not None
        self._sock.settimeout(None)
        return result

    def events(self) -> Iterator[dict[str, Any]]:
        """After `subscribe`: `reading` and `dropped` events until the agent goes away."""
        while True:
            yield self._line()


def _why(path: Path, e: OSError) -> str:
    if e.errno in (errno.ENOENT, errno.ECONNREFUSED):
        what = "no agent is listening"
    elif e.errno == errno.EACCES:
        what = "permission denied (join the socket's group, see [control].group, or use sudo)"
    else:
        what = e.strerror or str(e)
    return f"{what} on {path}"


def unreachable_exit(cfg: AgentConfig, e: AgentNotReachable) -> CliExit:
    """Exit 69 with a hint for the technician."""
    return CliExit(
        EXIT_UNREACHABLE,
        (
            f"edge-agent: agent not reachable: {e}\n"
            f"  is the service running?  systemctl status edge-agent\n"
            f"  socket tried: {cfg.control.socket} (from [control].socket in {cfg.source_path})\n"
            f"  without the agent: edge-agent buffer stats, edge-agent doctor"
        ),
    )


def ask(cfg: AgentConfig, cmd: str, **args: Any) -> dict[str, Any]:
    """One request to the running agent, CLI errors mapped to exit codes."""
    try:
        with ControlClient(Path(cfg.control.socket)) as c:
            return c.request(cmd, **args)
    except AgentNotReachable as e:
        raise unreachable_exit(cfg, e) from None
    except ControlError as e:
        raise CliExit(EXIT_FAILURE, f"edge-agent: the agent refused {cmd!r}: {e}") from None
