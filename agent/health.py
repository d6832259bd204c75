"""The `P/health` body (also the core of `status`): buffer, uplink, devices, process, versions.

Built by hand as plain dicts (no pydantic on the agent's path); agent/contract.py `Health`
describes it and a test validates real messages against the schema.
"""

from __future__ import annotations

import functools
import os
import platform
import resource
import shutil
import sqlite3
import time
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.model import format_ts
from edge_common import installed

if TYPE_CHECKING:
    from agent.ports import AgentView


class RateMeter:
    """Readings accepted per second over a sliding window (default 5 minutes).

    `start`: monotonic time when the count was 0, so the first call already has a rate (the first
    `status` of an agent that was never connected, hence never published health, is such a call).
    """

    def __init__(self, window: float = 300.0, start: float | None = None) -> None:
        self.window = window
        self._hist: list[tuple[float, int]] = [] if start is None else [(start, 0)]

    def rate(self, total: int, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        self._hist.append((now, total))
        while len(self._hist) > 2 and now - self._hist[0][0] > self.window:
            self._hist.pop(0)
        t0, n0 = self._hist[0]
        return (total - n0) / (now - t0) if now - t0 > 0.5 else 0.0


class CpuMeter:
    """Process CPU in percent of one core since the previous call."""

    def __init__(self) -> None:
        self._last = (time.process_time(), time.monotonic())

    def percent(self) -> float:
        cpu, wall = time.process_time(), time.monotonic()
        pct = (cpu - self._last[0]) / max(1e-9, wall - self._last[1]) * 100
        self._last = (cpu, wall)
        return max(0.0, pct)


@functools.cache
def versions() -> dict[str, str | None]:
    """Versions of the agent and of what it runs on (for the platform and bug reports)."""
    dist = installed.versions(["aiomqtt", "paho-mqtt", "bleak", "pydantic"])  # no importlib.metadata
    return {
        "agent": __version__,
        "python": platform.python_version(),
        "aiomqtt": dist["aiomqtt"],
        "paho_mqtt": dist["paho-mqtt"],
        "bleak": dist["bleak"],
        "pydantic": dist["pydantic"],
        "sqlite": sqlite3.sqlite_version,
    }


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _ts(t: float | None) -> str | None:
    return None if t is None else format_ts(t)


def time_to_full(room: int, bytes_per_reading: float, rate: float) -> float | None:
    """Seconds until max_bytes at `rate` readings/s; None when not filling."""
    if rate <= 0 or bytes_per_reading <= 0:
        return None
    return round(room / bytes_per_reading / rate, 1)


class HealthReporter:
    """Builds `P/health` bodies for one agent, keeping each reader's sampling windows."""

    def __init__(self, view: AgentView) -> None:
        self.view = view
        # Per reader: a technician's `status` must not restart the CPU window of P/health.
        self.meters: dict[str, tuple[RateMeter, CpuMeter]] = {}

    async def build(self, reader: str = "health") -> dict[str, Any]:
        """One `P/health` message body (`reader`: whose sampling windows)."""
        from agent.buffer import ROW_OVERHEAD

        view = self.view
        meters = self.meters.get(reader)
        if meters is None:
            meters = self.meters[reader] = (RateMeter(start=view.started_monotonic), CpuMeter())
        rate_meter, cpu_meter = meters
        st = await view.buffer_stats()
        pipe, u = view.pipeline_snapshot(), view.uplink_snapshot()
        assert pipe is not None and u is not None, "health of an agent that has not started"
        cfg = view.cfg
        now = time.time()
        try:
            du = shutil.disk_usage(cfg.buffer.path.parent)
            disk: dict[str, int | None] = {"free": du.free, "total": du.total}
        except OSError:
            disk = {"free": None, "total": None}
        rate = rate_meter.rate(pipe.accepted)
        per = st.bytes / st.depth if st.depth else 250 + ROW_OVERHEAD
        return {
            "v": 1,
            "gateway": cfg.gateway.id,
            "ts": format_ts(now),
            "version": __version__,
            "uptime": round(max(0.0, now - view.started), 1),
            "clock": view.clock_state(),
            "buffer": {
                "epoch": st.epoch, "depth": st.depth, "bytes": st.bytes, "max_bytes": st.max_bytes,
                "oldest_age": None if st.oldest_ts is None else round(max(0.0, now - st.oldest_ts), 1),
                "time_to_full": time_to_full(max(0, st.max_bytes - st.bytes), per, rate),
                "next_seq": st.next_seq, "dropped": dict(st.dropped),
                "dropped_total": sum(st.dropped.values()), "rejected": st.rejected,
                "queue_overflow": pipe.overflow, "queued": pipe.queued, "file_bytes": st.file_bytes,
                "accept_rate": round(rate, 2), "events_pending": st.events_pending,
                "writer": pipe.writer, "writer_detail": pipe.writer_detail,
            },
            "uplink": {
                "state": u.state, "connected_since": _ts(u.connected_since), "last_error": u.last_error,
                "published": u.published, "acked": u.acked, "readings_published": u.readings_published,
                "readings_acked": u.readings_acked, "events_published": u.events_published,
                "reconnects": u.reconnects, "last_puback": _ts(u.last_puback), "inflight": max(0, u.inflight),
                "backoff_until": _ts(u.backoff_until),
            },
            "devices": {d.id: {
                "driver": d.driver, "online": bool(d.online), "link": d.link,
                "last_seen": _ts(d.last_reading), "readings": d.readings,
                "errors": sum(d.errors.values()), "restarts": d.restarts,
            } for d in view.device_snapshots()},
            "process": {
                "cpu_percent": round(cpu_meter.percent(), 2),
                "rss_bytes": rss_bytes(),
                "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "pid": os.getpid(),
            },
            "disk_free": disk["free"],
            "disk": disk,
            "versions": versions(),
            # shared services (e.g. the BLE scanner: mode, passive refused, healthy)
            **{s.name: dict(s.status) for s in view.service_snapshots(with_status=True) if s.status is not None},
        }
