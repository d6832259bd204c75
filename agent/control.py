"""Local control API: a Unix socket between the technician CLI and the running agent.

Never a TCP port and no secrets: access is the socket file's owner, group and mode
(`[control]` socket, group, mode; default 0660). The socket is bound under a temporary name,
given its mode and group, then renamed into place, so it is never reachable with wider rights.

Protocol: JSON lines. A request `{"id": X, "cmd": NAME, ...args}` gets exactly one response
`{"id": X, "ok": true, "result": {...}}` or `{"id": X, "ok": false, "error": {"code": C,
"message": M}}`. `tail` answers once, then streams `{"event": "reading", "seq": N,
"reading": R}` lines (R = the wire form of docs/PROTOCOL.md) and, when the client reads too
slowly, `{"event": "dropped", "count": K}` in place of the K readings it missed. Commands:
`ping`, `status`, `devices`, `tail` (args: `device`, `queue`).

A misbehaving client never disturbs ingestion: the accept listener only appends to a bounded
per-client queue (drops are counted, never waited for), lines are size-limited, every client
runs in its own task, and writes to a client that stops reading time out.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import grp
import json
import logging
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.errors import ControlError
from agent.model import Reading, encode_reading, format_ts
from agent.states import LINK_DISABLED, DeviceState, UplinkState

if TYPE_CHECKING:
    from agent.ports import ControlPort

log = logging.getLogger(__name__)

MAX_LINE = 64 * 1024  # longest request line accepted
MAX_CLIENTS = 32
TAIL_QUEUE = 1000  # readings held per tail client before dropping
TAIL_QUEUE_MAX = 10_000
WRITE_TIMEOUT = 10.0  # a client that does not read a response for this long is disconnected
LIVENESS_LOOK = 1.0  # how often `tail --device` looks at the device's liveness (agent/runtime.py ticks)


@dataclass(frozen=True, slots=True)
class RequestError(ControlError):
    """A request the agent refuses (answered as `{"ok": false, "error": ...}`)."""

    code: str
    message: str


class _Dropped:
    """Queue marker: `count` readings were dropped here because the client read too slowly."""

    __slots__ = ("count",)

    def __init__(self, count: int) -> None:
        self.count = count


class TailSubscriber:
    """One `tail` client: a bounded queue filled by the accept listener, drained by a task."""

    def __init__(self, device: str | None, limit: int) -> None:
        self.device = device
        self.limit = limit
        self.queue: collections.deque[tuple[int, Reading] | _Dropped] = collections.deque()
        self.pending_drop = 0
        self.dropped = 0
        self.sent = 0
        self.wake = asyncio.Event()

    def offer(self, seq: int, r: Reading) -> None:
        """Called for every accepted reading; never blocks, never raises."""
        if self.device is not None and r.device != self.device:
            return
        q = self.queue
        if self.pending_drop and len(q) < self.limit:
            q.append(_Dropped(self.pending_drop))
            self.pending_drop = 0
        if len(q) < self.limit:
            q.append((seq, r))
        else:
            self.pending_drop += 1
            self.dropped += 1
        self.wake.set()

    def take(self) -> tuple[int, Reading] | _Dropped | None:
        if self.queue:
            return self.queue.popleft()
        if self.pending_drop:
            d, self.pending_drop = _Dropped(self.pending_drop), 0
            return d
        return None


class ControlServer:
    """Serves the control socket for one agent."""

    def __init__(self, agent: ControlPort) -> None:
        self.agent = agent
        self.cfg = agent.cfg.control
        self.path = Path(self.cfg.socket)
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self._subs: set[TailSubscriber] = set()
        self._inode: tuple[int, int] | None = None
        self.bad_requests = 0
        self.tail_dropped = 0
        self._stopping = False

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Bind the socket (mode and group set before it becomes visible) and serve."""
        sock = self._bind()
        self._server = await asyncio.start_unix_server(self._client, sock=sock, limit=MAX_LINE)
        log.info(
            "control socket %s (mode %04o%s)",
            self.path,
            self.cfg.mode,
            f", group {self.cfg.group}" if self.cfg.group else "",
        )

    def attach(self) -> None:
        """Subscribe to accepted readings (once the pipeline exists)."""
        self.agent.subscribe(self._on_accept)

    def _bind(self) -> socket.socket:
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._remove_stale(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(tmp))
            os.chmod(tmp, self.cfg.mode)
            if self.cfg.group:
                try:
                    gid = grp.getgrnam(self.cfg.group).gr_gid
                except KeyError:
                    log.error(
                        "control.group: no group %r on this system; socket keeps group %d",
                        self.cfg.group,
                        os.getgid(),
                    )
                else:
                    os.chown(tmp, -1, gid)
            os.replace(tmp, path)
            st = path.stat()
            self._inode = (st.st_dev, st.st_ino)
            sock.listen(16)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return sock

    @staticmethod
    def _remove_stale(path: Path) -> None:
        try:
            st = path.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlError(
                f"control.socket: {path} exists and is not a socket; remove it or change the path"
            )
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError as e:
            if e.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise ControlError(f"control.socket: cannot probe {path}: {e.strerror}") from e
            log.info("control: removing stale socket %s", path)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        else:
            raise ControlError(f"control.socket: another agent is already running on {path}")
        finally:
            probe.close()

    async def stop(self) -> None:
        """Stop listening, disconnect every client, remove our socket file."""
        self.agent.unsubscribe(self._on_accept)
        if self._server is not None:
            self._server.close()
        self._stopping = True
        for t in list(self._clients):
            t.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self._server.wait_closed()
            self._server = None
        try:
            st = self.path.stat()
            if self._inode == (st.st_dev, st.st_ino):
                self.path.unlink()
        except OSError:
            pass

    # -- accepted readings ----------------------------------------------------------------
    def _on_accept(self, seq: int, r: Reading) -> None:
        for s in self._subs:
            s.offer(seq, r)

    # -- clients ------------------------------------------------------------------------
    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            if len(self._clients) > MAX_CLIENTS:
                await self._send(
                    writer, _error(None, "busy", f"too many control clients (max {MAX_CLIENTS})")
                )
                return
            await self._serve(reader, writer)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            # Our own stop ends the client normally: CPython 3.11's StreamReaderProtocol logs a
            # cancelled client task as an ERROR with a traceback (`... connection_made ...`).
            task.uncancel()
        except Exception:
            log.exception("control client failed")
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1):
                    await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                line = await reader.readline()
            except (asyncio.LimitOverrunError, ValueError):
                self.bad_requests += 1
                await self._send(
                    writer, _error(None, "line_too_long", f"request longer than {MAX_LINE} bytes")
                )
                return
            if not line:
                return
            if not line.strip():
                continue
            rid: Any = None
            try:
                try:
                    req = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise RequestError("bad_json", f"not a JSON line: {e}") from None
                if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                    raise RequestError(
                        "bad_request", 'expected an object like {"id": 1, "cmd": "status"}'
                    )
                rid = req.get("id")
                if req["cmd"] == "tail":
                    await self._tail(req, writer, reader)
                    return
                result = await self._dispatch(req)
            except RequestError as e:
                self.bad_requests += 1
                await self._send(writer, _error(rid, e.code, e.message))
                continue
            await self._send(writer, {"id": rid, "ok": True, "result": result})

    async def _send(self, writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
        writer.write(
            json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str).encode() + b"\n"
        )
        async with asyncio.timeout(WRITE_TIMEOUT):
            await writer.drain()

    async def _dispatch(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req["cmd"]
        if cmd == "ping":
            return {
                "version": __version__,
                "pid": os.getpid(),
                "gateway": self.agent.cfg.gateway.id,
            }
        if not self.agent.is_ready():
            raise RequestError("starting", "the agent is still starting; try again in a moment")
        if cmd == "status":
            return await self.status()
        if cmd == "devices":
            return {"devices": self.devices()}
        if cmd == "uplink.reconnect":
            return self.reconnect()
        raise RequestError(
            "unknown_command",
            f"unknown command {cmd!r} (known: ping, status, devices, tail, uplink.reconnect)",
        )

    def reconnect(self) -> dict[str, Any]:
        """`uplink.reconnect`: a technician's "try now" (backoff reset; a connected uplink is left alone)."""
        u = self.agent.uplink_snapshot()
        assert u is not None  # the agent is ready
        was = u.state
        if was != UplinkState.CONNECTED:
            log.info("uplink: reconnect asked for on the control socket (was %s)", was)
            self.agent.reconnect_uplink()
        up_cfg = self.agent.cfg.uplink
        return {"was": was, "reconnecting": was != UplinkState.CONNECTED, "broker": f"{up_cfg.host}:{up_cfg.port}"}

    # -- views --------------------------------------------------------------------------
    async def status(self) -> dict[str, Any]:
        a = self.agent
        h = await a.health("status")
        up = a.cfg.uplink
        h["started"] = format_ts(a.started)
        h["pid"] = os.getpid()
        h["config"] = str(a.cfg.source_path) if a.cfg.source_path else None
        h["uplink"]["broker"] = f"{up.host}:{up.port}"
        h["uplink"]["tls"] = up.tls is not None
        drivers: dict[str, dict[str, int]] = {}
        for d in self.devices():
            if d["id"] in h["devices"]:
                h["devices"][d["id"]]["state"] = d["state"]
            s = drivers.setdefault(
                d["driver"],
                {
                    "devices": 0,
                    DeviceState.ONLINE: 0,
                    DeviceState.OFFLINE: 0,
                    DeviceState.STARTING: 0,
                    DeviceState.DISABLED: 0,
                    "readings": 0,
                    "errors": 0,
                },
            )
            s["devices"] += 1
            s[d["state"]] += 1
            s["readings"] += d["readings"]
            s["errors"] += sum(d["errors"].values())
        h["drivers"] = drivers
        if (commands := a.commands_summary()) is not None:  # remote commands (agent/remote.py)
            h["commands"] = commands
        h["control"] = {
            "clients": len(self._clients),
            "tail_clients": len(self._subs),
            "tail_dropped": self.tail_dropped,
            "bad_requests": self.bad_requests,
        }
        return h

    def devices(self) -> list[dict[str, Any]]:
        """One row per configured device (disabled ones included)."""
        a = self.agent
        running = {d.id: d for d in a.device_snapshots()}
        rows = []
        for dev in a.cfg.devices:
            d = running.get(dev.id)
            if d is None:
                rows.append(
                    {
                        "id": dev.id,
                        "driver": dev.driver,
                        "state": DeviceState.DISABLED,
                        "online": False,
                        "link": LINK_DISABLED,
                        "link_detail": "",
                        "readings": 0,
                        "last_reading_age": None,
                        "rate": 0.0,
                        "errors": {},
                        "restarts": 0,
                        "last_error": "",
                        "last_values": {},
                        "expected_interval": dev.expected_interval,
                        "port": dev.port,
                        "address": dev.address,
                    }
                )
                continue
            rows.append({
                "id": d.id, "driver": d.driver,
                "online": bool(d.online), "link": d.link, "link_detail": d.link_detail,
                "readings": d.readings, "last_reading_age": d.last_reading_age,
                "rate": d.rate, "errors": dict(d.errors),
                "restarts": d.restarts, "last_error": d.last_error,
                "last_values": dict(d.last_values),
                "state": d.state,
                "expected_interval": d.expected_interval,
                "port": dev.port,
                "address": dev.address,
                "last_reading": d.last_reading and format_ts(d.last_reading),
            })
        return rows

    # -- tail -------------------------------------------------------------------------------
    async def _tail(
        self, req: dict[str, Any], writer: asyncio.StreamWriter, reader: asyncio.StreamReader
    ) -> None:
        rid = req.get("id")
        device = req.get("device")
        known = [d.id for d in self.agent.cfg.devices]
        if device is not None and device not in known:
            raise RequestError("unknown_device", f"no device {device!r} on {self.agent.cfg.gateway.id} "
                                                 f"(configured: {', '.join(known) or 'none'})")
        limit = req.get("queue", TAIL_QUEUE)
        if not isinstance(limit, int) or not 1 <= limit <= TAIL_QUEUE_MAX:
            raise RequestError("bad_request", f"queue must be an integer 1..{TAIL_QUEUE_MAX}")
        self.attach()
        sub = TailSubscriber(device, limit)
        self._subs.add(sub)
        # The client sends nothing more; its EOF (or anything else) ends the subscription.
        closed = asyncio.ensure_future(reader.read(1))
        try:
            await self._send(
                writer,
                {
                    "id": rid,
                    "ok": True,
                    "result": {"subscribed": True, "device": device, "queue": limit},
                },
            )
            told: tuple[str, str] | None = None  # the device's (state, link) as last told
            while True:
                if device is not None and (now := self._liveness(device))[0] != told:
                    told = now[0]
                    writer.write(json.dumps(now[1]).encode() + b"\n")
                item = sub.take()
                if item is None:
                    sub.wake.clear()
                    waiter = asyncio.ensure_future(sub.wake.wait())
                    try:
                        # with a device: look at its liveness as often as the agent judges it
                        await asyncio.wait([waiter, closed], return_when=asyncio.FIRST_COMPLETED,
                                           timeout=None if device is None else LIVENESS_LOOK)
                    finally:
                        waiter.cancel()
                    if closed.done():
                        return
                    continue
                if isinstance(item, _Dropped):
                    self.tail_dropped += item.count
                    msg: dict[str, Any] = {"event": "dropped", "count": item.count}
                    writer.write(json.dumps(msg).encode() + b"\n")
                else:
                    seq, r = item
                    writer.write(
                        b'{"event":"reading","seq":%d,"reading":' % seq
                        + encode_reading(seq, r).encode()
                        + b"}\n"
                    )
                    sub.sent += 1
                # Back-pressure lands here, on this client's task only: the queue meanwhile drops.
                drain = asyncio.ensure_future(writer.drain())
                try:
                    await asyncio.wait([drain, closed], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    if not drain.done():
                        drain.cancel()
                if closed.done():
                    return
                drain.result()
        finally:
            self._subs.discard(sub)
            closed.cancel()
            with contextlib.suppress(BaseException):
                await closed


    def _liveness(self, device: str) -> tuple[tuple[str, str], dict[str, Any]]:
        """((state, link), the `device` event) of one configured device, for `tail --device`."""
        d = self.agent.device_snapshot(device)
        ev: dict[str, Any] = {"event": "device", "device": device}
        if d is None:
            ev.update(state=DeviceState.DISABLED, link=LINK_DISABLED, detail="", since=None, last_reading=None)
            return (DeviceState.DISABLED, LINK_DISABLED), ev
        state = d.state
        key = (state, "" if state == DeviceState.ONLINE else d.link)  # a dead device's link changing is news
        last = d.last_reading
        since = None
        if state == DeviceState.OFFLINE:  # it went offline `expected_interval` after its last reading
            since = (last if last is not None else self.agent.started) + d.expected_interval
        ev.update(state=state, link=d.link, detail=d.link_detail[:200],
                  since=since and format_ts(since), last_reading=last and format_ts(last))
        return key, ev


def _error(rid: Any, code: str, message: str) -> dict[str, Any]:
    return {"id": rid, "ok": False, "error": {"code": code, "message": message}}


async def start_control(agent: ControlPort) -> ControlServer | None:
    """Start the control API; None (logged) when the socket cannot be made, the agent runs on.

    Raises ControlError when another agent already answers on the socket (two agents on one
    buffer would corrupt seq), or the path is taken by something that is not a socket.
    """
    server = ControlServer(agent)
    try:
        await server.start()
    except OSError as e:
        log.error(
            "control socket %s unavailable (%s): `edge-agent status` will not reach this agent",
            server.path,
            e.strerror or e,
        )
        return None
    return server
