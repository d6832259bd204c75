"""CLI side of the control socket (agent/control.py): blocking JSON-lines client."""

from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.cli.common import EXIT_FAILURE, EXIT_UNREACHABLE, CliExit, config_path, load
from agent.errors import AgentNotReachable, AgentRefused, AgentWentAway, ControlError

TIMEOUT = 10.0
DEFAULT_SOCKET = "/run/edge-agent/control.sock"  # agent/config.py ControlConfig.socket


@dataclass(frozen=True, slots=True)
class Target:
    """Where the running agent answers, read from the config file without the config layer."""

    socket: Path
    config: Path
    gateway: str


def target(args: argparse.Namespace) -> Target:
    """[control].socket and [gateway].id of --config; anything unclear gets the full check (78)."""
    path = config_path(args)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        ctl, gw = data.get("control", {}), data.get("gateway", {})
        sock, gid = ctl.get("socket", DEFAULT_SOCKET), gw.get("id")
        if isinstance(sock, str) and sock and isinstance(gid, str):
            p = Path(sock).expanduser()
            base = path.resolve().parent
            return Target(p if p.is_absolute() else base / p, path.resolve(), gid)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, AttributeError):
        pass
    cfg = load(args)  # exits 78 naming the problem; a file it accepts is used as it read it
    return Target(Path(cfg.control.socket), cfg.source_path or path, cfg.gateway.id)


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
                raise AgentWentAway(f"the agent on {self.path} closed the connection")
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
            raise AgentRefused(str(err.get("code", "error")), str(err.get("message", "")))
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
        what = "permission denied"
    else:
        what = e.strerror or str(e)
    return f"{what} on {path}"


def socket_access(path: Path) -> str:
    """'' when this user may connect to the socket file; else why not, with the fix."""
    try:
        st = path.stat()
    except OSError:
        return ""
    if os.access(path, os.R_OK | os.W_OK):
        return ""
    import grp

    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    mode = st.st_mode & 0o777
    if mode & 0o060 != 0o060:
        return (f"{path} is mode {mode:04o}: only its owner may connect; "
                "use sudo, or set [control].group and mode = 0o660")
    if st.st_gid == 0:  # joining root is no answer: the socket needs a group of its own
        return (f"{path} belongs to group root (mode {mode:04o}): set [control].group to the "
                "technicians' group (e.g. edge-agent) and restart the agent, or use sudo")
    return (f"{path} belongs to group {group} (mode {mode:04o}) and you are not in it: "
            f"`sudo usermod -aG {group} $USER`, then log in again (or use sudo)")


def unreachable_exit(t: Target, e: AgentNotReachable) -> CliExit:
    """Exit 69 with the one hint that fits: not running, or not allowed."""
    denied = socket_access(t.socket)
    if denied:
        return CliExit(EXIT_UNREACHABLE,
                       f"edge-agent: agent not reachable: permission denied\n  {denied}")
    return CliExit(
        EXIT_UNREACHABLE,
        (
            f"edge-agent: agent not reachable: {e}\n"
            f"  is the service running?  systemctl status edge-agent\n"
            f"  socket tried: {t.socket} (from [control].socket in {t.config})\n"
            f"  without the agent: edge-agent buffer stats, edge-agent doctor"
        ),
    )


def ask(t: Target, cmd: str, **args: Any) -> dict[str, Any]:
    """One request to the running agent, CLI errors mapped to exit codes."""
    try:
        with ControlClient(t.socket) as c:
            return c.request(cmd, **args)
    except AgentNotReachable as e:
        raise unreachable_exit(t, e) from None
    except ControlError as e:
        raise CliExit(EXIT_FAILURE, f"edge-agent: the agent refused {cmd!r}: {e}") from None
