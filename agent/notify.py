"""systemd integration: sd_notify over $NOTIFY_SOCKET, READY/STATUS/STOPPING, progress watchdog.

Hand-written (about 100 lines) because the protocol is one datagram per message and the
maintained bindings are either C extensions (python-systemd, not on PyPI wheels for the Pi)
or whole frameworks. Outside systemd (no NOTIFY_SOCKET) every call is a cheap no-op.

Watchdog: `WATCHDOG=1` is sent from the event loop, only while the pipeline makes progress:
the loop is alive (the ping task runs) and the buffer writer is not stuck (no commit has been
outstanding for longer than `stall_after`, and queued readings do not wait for a commit for
longer than that). A wedged agent therefore stops pinging and systemd restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from agent.ticks import next_tick, sleep_to_tick

if TYPE_CHECKING:
    from agent.ports import AgentView, PipelineSnapshot, ServiceSnapshot, Supervised

log = logging.getLogger(__name__)

STATUS_INTERVAL = 10.0  # seconds between STATUS= refreshes (sent earlier when it changes)


def _monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """sd_notify(3) client: one AF_UNIX datagram per message; abstract '@' sockets supported."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ) if env is None else env
        self.address: str | bytes | None = None
        path = env.get("NOTIFY_SOCKET", "")
        if path.startswith("@"):
            self.address = b"\0" + path[1:].encode()
        elif path.startswith("/"):
            self.address = path
        elif path:
            log.warning(
                "NOTIFY_SOCKET=%r is not supported (only AF_UNIX paths); not notifying", path
            )
        self.watchdog_usec = 0
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_usec = int(usec)
        self._sock: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half of WatchdogSec=), or None when the watchdog is off."""
        return self.watchdog_usec / 2e6 if self.enabled and self.watchdog_usec else None

    def send(self, *fields: str) -> bool:
        """Send `KEY=value` fields as one message; False when not under systemd or it failed."""
        if self.address is None:
            return False
        msg = (
            "\n".join(f.replace("\n", " ") if f.startswith("STATUS=") else f for f in fields) + "\n"
        )
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(msg.encode(), self.address)
        except OSError as e:
            if not self._warned or e.errno not in (errno.EAGAIN, errno.ECONNREFUSED, errno.ENOENT):
                log.warning("sd_notify to %r failed: %s", self.address, e)
                self._warned = True
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self, status: str = "reloading configuration") -> bool:
        # MONOTONIC_USEC is required by Type=notify-reload (systemd >= 253), ignored before.
        return self.send("RELOADING=1", f"MONOTONIC_USEC={_monotonic_usec()}", f"STATUS={status}")

    def stopping(self, status: str = "stopping: flushing to the buffer") -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


_notifier: Notifier | None = None


def notifier() -> Notifier:
    """The process-wide notifier (built from the environment on first use)."""
    global _notifier
    if _notifier is None:
        _notifier = Notifier()
    return _notifier


def stall_reason(pipe: PipelineSnapshot | None, services: Sequence[ServiceSnapshot], stall_after: float,
                 now: float | None = None) -> str | None:
    """Why the pipeline is not making progress, or None when it is."""
    if pipe is None:
        return None
    now = time.monotonic() if now is None else now
    if pipe.busy_since is not None and now - pipe.busy_since > stall_after:
        return f"buffer commit stuck for {now - pipe.busy_since:.0f}s"
    if (
        pipe.queued
        and pipe.writer == "ok"  # a refusing disk is reported and retried: a restart loses the queue
        and pipe.busy_since is None
        and now - pipe.last_commit > stall_after + pipe.commit_interval
    ):
        return f"{pipe.queued} readings waiting {now - pipe.last_commit:.0f}s for a commit"
    for svc in services:
        # A service at the end of its own recovery ladder (e.g. the BLE scanner after restarts
        # and an adapter power-cycle) asks systemd's watchdog to restart the agent.
        if not svc.healthy:
            return f"{svc.name}: {svc.unhealthy_reason or 'unhealthy'}"
    return None


def status_line(view: AgentView) -> str:
    """One-line summary for `systemctl status` (never awaits the buffer thread)."""
    devices = view.device_snapshots()
    online = sum(1 for d in devices if d.online)
    parts = [f"{online}/{len(devices)} devices online"]
    pipe = view.pipeline_snapshot()
    if pipe is not None:
        parts.append(f"buffer {pipe.depth} readings"
                     + ("" if pipe.writer == "ok" else f" ({pipe.writer.replace('_', ' ')})"))
    if (u := view.uplink_snapshot()) is not None:
        parts.append(f"uplink {u.state}")
    parts.append(f"clock {view.clock_state()}")
    return ", ".join(parts)


class Supervision:
    """Runs next to an Agent: READY once started, STATUS, progress-gated WATCHDOG, STOPPING."""

    def __init__(
        self,
        agent: Supervised,
        sd: Notifier | None = None,
        *,
        stall_after: float | None = None,
        status_interval: float = STATUS_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.agent = agent
        self.sd = sd or notifier()
        wd = self.sd.watchdog_interval
        # A commit outstanding for half of WatchdogSec= counts as stuck (SQLite's own busy
        # timeout is 5 s); systemd then restarts us at most one WatchdogSec= later.
        self.stall_after = stall_after if stall_after is not None else max(1.0, wd if wd else 30.0)
        self.period = min(wd, status_interval) if wd else status_interval
        self.status_interval = status_interval
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._last_status = ""
        self._status_at = -1e9
        self.stalled: str | None = None
        self.pings = 0
        agent.when_ready(self._on_ready)

    def _on_ready(self) -> None:
        self.sd.ready(status_line(self.agent))
        self._last_status, self._status_at = status_line(self.agent), self._clock()

    async def __aenter__(self) -> Supervision:
        if self.sd.enabled:
            self._task = asyncio.create_task(self._run(), name="sd-notify")
            if self.sd.watchdog_interval:
                import faulthandler

                faulthandler.enable()  # the watchdog's SIGABRT dumps every thread's stack
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def tick(self) -> None:
        """One round: ping if progressing, refresh STATUS when due or changed."""
        now = self._clock()
        a = self.agent
        stopping = a.is_stopping()
        reason = None
        if a.is_ready():
            reason = stall_reason(a.pipeline_snapshot(), a.service_snapshots(), self.stall_after, now)
        if reason != self.stalled:
            if reason:
                log.error("watchdog: %s; no longer telling systemd we are alive", reason)
            elif self.stalled:
                log.warning("watchdog: progress again (%s cleared)", self.stalled)
            self.stalled = reason
        if self.sd.watchdog_interval and reason is None:
            self.sd.watchdog()
            self.pings += 1
        if stopping or not a.is_ready():
            return
        text = f"STALLED: {reason}" if reason else status_line(self.agent)
        if text != self._last_status or now - self._status_at >= self.status_interval:
            self.sd.status(text)
            self._last_status, self._status_at = text, now

    async def _run(self) -> None:
        stop_sent = False
        while True:
            if self.agent.is_stopping() and not stop_sent:
                self.sd.stopping()
                stop_sent = True
            self.tick()
            if stop_sent:
                await sleep_to_tick(self.period)  # keep pinging while stop() drains
                continue
            with contextlib.suppress(TimeoutError):  # on the shared timer grid (agent/ticks.py)
                async with asyncio.timeout_at(next_tick(self.period)):
                    await self.agent.wait_stopping()
