"""SIGHUP: re-read the configuration and apply what can change while running.

An invalid new file is rejected as a whole (logged, the running configuration kept). A valid
one is applied without losing buffered data: devices are added, removed or restarted (the
in-memory queue and the SQLite outbox are shared and untouched), buffer limits and the log
level change in place, and the MQTT session is restarted when the uplink settings (or the
password / TLS files) changed: unacknowledged readings are simply sent again, byte-identical.
Keys that need a process restart (buffer.path, buffer.synchronous, buffer.queue_size,
control.*, gateway.id) keep their running value and are logged as such.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent.config import AgentConfig, load_config
from agent.errors import ConfigError
from agent.notify import notifier, status_line

if TYPE_CHECKING:
    from agent.ports import AgentCommands
    from agent.uplink import Uplink

log = logging.getLogger(__name__)

RESTART_ONLY = ("buffer.path", "buffer.synchronous", "buffer.queue_size", "gateway.id", "control")
LIVE_BUFFER = ("max_bytes", "max_age", "on_full")


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """What a reload changes (device ids and key names only: never values, never secrets)."""

    config: AgentConfig  # the effective configuration after the reload
    remove: tuple[str, ...] = ()
    add: tuple[str, ...] = ()
    restart: tuple[str, ...] = ()
    uplink: bool = False
    buffer: tuple[str, ...] = ()
    needs_restart: tuple[str, ...] = ()
    log_level: bool = False

    @property
    def empty(self) -> bool:
        return not (
            self.remove
            or self.add
            or self.restart
            or self.uplink
            or self.buffer
            or self.needs_restart
            or self.log_level
        )

    def summary(self) -> str:
        parts = [
            f"{k} {','.join(v)}"
            for k, v in (("removed", self.remove), ("added", self.add), ("restarted", self.restart))
            if v
        ]
        if self.uplink:
            parts.append("uplink restarted")
        if self.buffer:
            parts.append("buffer " + ",".join(self.buffer))
        if self.log_level:
            parts.append("log_level")
        return "; ".join(parts) or "no changes"


def _files_digest(cfg: AgentConfig) -> str:
    """Digest of the uplink's secret files (password, TLS): rotating them restarts the session."""
    up = cfg.uplink
    paths = [up.password_file] + (
        [up.tls.ca_file, up.tls.cert_file, up.tls.key_file] if up.tls else []
    )
    h = hashlib.sha256()
    for p in paths:
        h.update(str(p).encode() + b"\0")
        if p is not None:
            try:
                h.update(Path(p).read_bytes())
            except OSError as e:
                h.update(f"<{e.errno}>".encode())
    return h.hexdigest()


def plan(old: AgentConfig, new: AgentConfig, running: set[str]) -> ReloadPlan:
    """Compare configurations; restart-only keys keep their old value in the result."""
    needs: list[str] = []
    if new.buffer.path != old.buffer.path:
        needs.append("buffer.path")
    for k in ("synchronous", "queue_size"):
        if getattr(new.buffer, k) != getattr(old.buffer, k):
            needs.append(f"buffer.{k}")
    if new.gateway.id != old.gateway.id:
        needs.append("gateway.id")
    if new.control != old.control:
        needs.append("control")
    eff = new.model_copy(
        update={
            "buffer": new.buffer.model_copy(
                update={
                    "path": old.buffer.path,
                    "synchronous": old.buffer.synchronous,
                    "queue_size": old.buffer.queue_size,
                }
            ),
            "gateway": new.gateway.model_copy(update={"id": old.gateway.id}),
            "control": old.control,
        }
    )
    wanted = {d.id: d for d in eff.devices if d.enabled}
    remove = tuple(sorted(i for i in running if i not in wanted))
    add = tuple(i for i in wanted if i not in running)
    before = {d.id: d for d in old.devices}
    restart = tuple(i for i in wanted if i in running and before.get(i) != wanted[i])
    buf = tuple(
        k
        for k in (*LIVE_BUFFER, "commit_interval", "sync_interval")
        if getattr(eff.buffer, k) != getattr(old.buffer, k)
    )
    uplink = eff.uplink != old.uplink or eff.health_every != old.health_every
    return ReloadPlan(
        config=eff,
        remove=remove,
        add=add,
        restart=restart,
        uplink=uplink,
        buffer=buf,
        needs_restart=tuple(needs),
        log_level=eff.log_level != old.log_level,
    )


class Reloader:
    """Re-reads and applies one agent's configuration file; remembers the uplink files it runs with."""

    def __init__(self, agent: AgentCommands) -> None:
        self.agent = agent
        self.uplink_files: str | None = None  # digest of the running session's files; None: not recorded

    def remember_uplink_files(self) -> None:
        """Record the uplink files as started (call once the agent runs)."""
        self.uplink_files = _files_digest(self.agent.cfg)

    async def reload(self) -> bool:
        """Re-read agent.cfg.source_path and apply it; False when rejected (old config kept)."""
        agent = self.agent
        sd = notifier()
        path = agent.cfg.source_path
        if path is None:
            log.warning("reload: the configuration was not loaded from a file; nothing to re-read")
            return False
        sd.reloading()
        ok = False
        try:
            ok = await self._reload(path)
        finally:
            sd.ready(
                status_line(agent)
                if ok
                else f"reload rejected; running the previous configuration; {status_line(agent)}"
            )
        return ok

    async def _reload(self, path: Path) -> bool:
        agent = self.agent
        log.info("reload: reading %s", path)
        try:
            new = await asyncio.to_thread(load_config, path)
        except ConfigError as e:
            log.error(
                "reload: %s is invalid, keeping the running configuration: %s",
                path,
                "; ".join(e.problems),
            )
            return False
        p = plan(agent.cfg, new, set(agent.running_devices()))
        files = _files_digest(p.config)
        uplink_restart = p.uplink or files != (files if self.uplink_files is None else self.uplink_files)
        candidate: Uplink | None = None
        if uplink_restart:
            try:
                candidate = agent.new_uplink(p.config)
            except ConfigError as e:
                log.error(
                    "reload: uplink settings rejected, keeping the running configuration: %s",
                    "; ".join(e.problems),
                )
                return False
        if agent.is_stopping():
            return False
        for key in p.needs_restart:
            log.warning(
                "reload: %s changed; takes effect only after a restart (systemctl restart edge-agent)",
                key,
            )
        for dev_id in (*p.remove, *p.restart):
            await agent.remove_device(dev_id)
        agent.set_config(p.config)
        for dev_id in (*p.restart, *p.add):
            agent.add_device(p.config.device(dev_id))
        if p.buffer:
            await agent.set_buffer_limits(p.config.buffer)
        if p.log_level:
            logging.getLogger().setLevel(p.config.log_level.upper())
        if candidate is not None:
            await agent.restart_uplink(candidate)
            self.uplink_files = files
        summary = p.summary()
        if uplink_restart and not p.uplink:
            extra = "uplink restarted (credential files changed)"
            summary = extra if p.empty else f"{summary}; {extra}"
        log.info("reload: applied: %s", summary)
        return True
