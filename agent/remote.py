"""The command service: verified P/commands are executed, answered on P/commands/result, audited.

Messages arrive from the uplink session (`Uplink.on_command`) into a bounded queue; one worker
verifies (agent/commands.py) and executes them in order. Every command gets exactly one result,
stored in the audit log (commands.db) before it is published (QoS 1, resent after a reconnect
until acknowledged) and mirrored as a durable `command` event on P/events.

`config.apply` is commit-confirmed: the file is replaced atomically (the previous one kept),
applied through the SIGHUP reload path on a fresh uplink session, and confirmed only once that
session is connected (birth acknowledged, P/commands subscribed) within `confirm_timeout`;
otherwise the previous file is restored and reloaded, and the result is `rolled_back`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.commands import (
    BURST,
    LEEWAY,
    RATE,
    Command,
    CommandStore,
    RateLimiter,
    Refused,
    Verifier,
    claimed_ids,
    load_trusted_keys,
    result_message,
    store_path,
)
from agent.confirm import (
    Pending,
    atomic_write,
    clear_pending,
    done_interrupted,
    keep_version,
    restore,
    sha256_hex,
    take_interrupted,
    write_pending,
)
from agent.errors import ConfigError, UplinkError
from agent.model import format_ts
from edge_common.errors import EdgeAgentError

if TYPE_CHECKING:
    from agent.ports import AgentCommands
    from agent.uplink import Uplink

log = logging.getLogger(__name__)

QUEUE = 4 * BURST  # messages waiting for the worker; past it, dropped unanswered (counted, logged)
DROP_LOG = (1, 10, 100)  # the flood is logged at these counts, then every 1000


class Failed(EdgeAgentError):
    """A verified command that could not be carried out (`failed` result)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


_LATER = object()  # the result comes later (config.apply's confirmation)


class CommandService:
    """Runs for an agent with `[commands]`."""

    def __init__(self, agent: AgentCommands) -> None:
        assert agent.cfg.commands is not None
        self.agent = agent
        self._commands_cfg = agent.cfg.commands
        self.verifier = self._make_verifier()
        self.store = CommandStore(store_path(agent.cfg.buffer.path))
        if self.store.quarantined is not None:
            log.error("commands: %s was corrupt (%s), moved aside as %s; commands issued before now are refused "
                      "as possible replays", self.store.path, self.store.quarantine_reason, self.store.quarantined)
        self.rate = RateLimiter(RATE, BURST)
        self.refusals = RateLimiter(RATE, BURST)  # rate_limited answers: past these, a flood is dropped unanswered
        self.queue: asyncio.Queue[tuple[bytes, bool, bool]] = asyncio.Queue(QUEUE)
        self.dropped = 0
        self.received = 0
        self.last: dict[str, Any] | None = None  # the newest result (status view)
        self._results = asyncio.Event()
        self._apply: asyncio.Task[None] | None = None
        self.applying: Pending | None = None

    def _make_verifier(self) -> Verifier:
        c = self.agent.cfg.commands
        assert c is not None
        return Verifier(load_trusted_keys(c.trusted_keys), self.agent.cfg.gateway.id,
                        max_lifetime=c.max_lifetime, allow=c.allow)

    def summary(self) -> dict[str, Any]:
        """The `commands` part of `status`."""
        p = self.applying
        return {"trusted_kids": sorted(self.verifier.keys), "received": self.received, "dropped": self.dropped,
                "applying": None if p is None else {"jti": p.jti, "kid": p.kid, "since": format_ts(p.started)},
                "last": self.last}

    # -- intake (the uplink's message loop: never blocks) -------------------------------------
    def offer(self, payload: bytes, retained: bool) -> None:
        if not payload:
            return  # a zero-length message clears a retained one: nothing to answer
        self.received += 1
        limited = not self.rate.take()
        try:
            if limited and not self.refusals.take():
                raise asyncio.QueueFull  # answering a flood would only multiply it (results, audit, events)
            self.queue.put_nowait((payload, retained, limited))
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped in DROP_LOG or self.dropped % 1000 == 0:
                log.warning("commands: flooded; %d messages on P/commands dropped unanswered", self.dropped)

    # -- the worker ---------------------------------------------------------------------------
    async def run(self) -> None:
        sender = asyncio.create_task(self._send_results(), name="commands:results")
        try:
            await self._report_interrupted()
            while True:
                payload, retained, limited = await self.queue.get()
                try:
                    await self._handle(payload, retained, limited)
                except Exception:  # e.g. commands.db unwritable: never the end of the agent
                    log.exception("commands: a command could not be recorded")
        finally:
            tasks = [t for t in (sender, self._apply) if t is not None]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.store.close()

    def _refresh(self) -> None:
        """A reload changed [commands]: new keys, allow list, lifetime."""
        c = self.agent.cfg.commands
        if c is not None and c is not self._commands_cfg:
            try:
                self.verifier = self._make_verifier()
            except ConfigError as e:
                log.error("commands: new trusted keys rejected, keeping the previous ones: %s", "; ".join(e.problems))
            self._commands_cfg = c

    async def _handle(self, payload: bytes, retained: bool, limited: bool) -> None:
        cmd: Command | None = None
        try:
            if limited:
                raise Refused("rate_limited", f"more than {RATE:g} commands per second (burst {BURST})",
                              **claimed_ids(payload))
            if self.agent.cfg.commands is None:
                raise Refused("not_allowed", "[commands] was removed by a reload: remote commands are off",
                              **claimed_ids(payload))
            self._refresh()
            synced = self.agent.clock_state() == "synced"
            cmd = self.verifier.verify(payload, retained=retained, clock_synced=synced)
            if cmd.iat < self.store.replay_floor - LEEWAY:
                raise Refused("replay", "issued before the replay memory was reset (a corrupt commands.db was "
                              "moved aside): it cannot be told from a replay; sign it again")
            if not await asyncio.to_thread(self.store.claim, cmd.jti, cmd.exp):
                raise Refused("replay", f"jti {cmd.jti!r} was already received")
            log.debug("command %s (jti %s, signed by %s): executing", cmd.cmd, cmd.jti, cmd.kid)
            result = await self._execute(cmd)
            if result is _LATER:
                return
            await self._finish(cmd, "ok", result=result)
        except Refused as r:
            await self._finish(cmd, "refused", r.reason, r.detail, r.result,
                               ids=(r.jti, r.cmd, r.kid))
        except Failed as f:
            await self._finish(cmd, "failed", f.reason, f.detail)
        except Exception as e:
            log.exception("command %s failed", cmd.cmd if cmd else "?")
            await self._finish(cmd, "failed", "error", f"{type(e).__name__}: {e}")
        if self.agent.clock_state() == "synced":  # an unsynced clock could forget jtis too early
            await asyncio.to_thread(self.store.prune, time.time())

    async def _finish(self, cmd: Command | None, status: str, reason: str | None = None, detail: str = "",
                      result: Any = None, ids: tuple[str | None, str | None, str | None] = (None, None, None)) -> None:
        jti, verb, kid = (cmd.jti, cmd.cmd, cmd.kid) if cmd is not None else ids
        msg = result_message(self.agent.cfg.gateway.id, jti=jti, cmd=verb, kid=kid, status=status,
                             reason=reason, detail=detail, result=result)
        await asyncio.to_thread(self.store.record, msg)
        self.last = {k: msg[k] for k in ("jti", "cmd", "kid", "status", "reason", "ts")}
        self._results.set()
        level = logging.INFO if status == "ok" else logging.WARNING
        log.log(level, "command %s (jti %s, kid %s): %s%s", verb, jti, kid, status,
                f" ({reason}: {detail})" if reason else "")
        await self.agent.add_event("command", {
            "jti": jti, "cmd": verb, "kid": kid, "status": status, "reason": reason, "detail": detail[:200]})

    async def _send_results(self) -> None:
        """Publish audit rows not yet acknowledged, oldest first, whenever the uplink is connected."""
        while True:
            self._results.clear()
            rows = await asyncio.to_thread(self.store.unsent)
            if not rows:
                await self._results.wait()
                continue
            up = self.agent.uplink
            if not up.connected.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):  # the uplink object may be replaced meanwhile
                        await up.connected.wait()
                continue
            for row_id, payload in rows:
                try:
                    await up.publish("commands/result", payload)
                    await asyncio.to_thread(self.store.mark_sent, row_id)
                except (UplinkError, TimeoutError):
                    await asyncio.sleep(0.2)  # lost the session: wait for the next one
                    break
                except Exception:
                    log.exception("commands: results cannot be published")
                    await asyncio.sleep(1.0)
                    break

    # -- verbs ----------------------------------------------------------------------------------
    async def _execute(self, cmd: Command) -> Any:
        a = self.agent
        if cmd.cmd == "ping":
            return {"pong": True, "version": __version__, "gateway": a.cfg.gateway.id, "time": format_ts(time.time()),
                    "clock": a.clock_state(), "pid": os.getpid()}
        if cmd.cmd == "status":
            return await a.status()
        if cmd.cmd == "devices":
            return {"devices": a.device_rows()}
        if cmd.cmd == "config.get":
            return await asyncio.to_thread(self._config_get)
        if (reader := a.command_reader(cmd.cmd)) is not None:  # buffer.stats: lent by `edge-agent run`
            stats = await asyncio.to_thread(reader, a.cfg)
            return json.loads(json.dumps(stats, default=str))
        if cmd.cmd == "buffer.stats":
            raise Failed("unavailable", "buffer.stats is served by `edge-agent run` only")
        if cmd.cmd == "device.restart":
            dev = cmd.args.get("device")
            running = a.running_devices()
            if not isinstance(dev, str) or dev not in running:
                raise Refused("bad_args", f"args.device must name a running device (running: {', '.join(running)})")
            await a.remove_device(dev)
            a.add_device(a.cfg.device(dev))
            return {"device": dev, "restarted": True}
        if cmd.cmd == "uplink.reconnect":
            a.reconnect_uplink()
            return {"reconnecting": True, "broker": f"{a.cfg.uplink.host}:{a.cfg.uplink.port}"}
        if cmd.cmd == "config.apply":
            return await self._config_apply(cmd)
        raise Failed("unknown_verb", cmd.cmd)  # Verifier only passes VERBS

    def _config_get(self) -> dict[str, Any]:
        from agent.config import masked_dump

        cfg = self.agent.cfg
        path = cfg.source_path
        sha = sha256_hex(path.read_bytes()) if path is not None else None
        return {"path": str(path) if path else None, "sha256": sha, "config_digest": cfg.digest(),
                "config": masked_dump(cfg)}

    # -- config.apply ---------------------------------------------------------------------------
    async def _config_apply(self, cmd: Command) -> Any:
        a = self.agent
        if self._apply is not None and not self._apply.done():
            assert self.applying is not None
            raise Refused("busy", f"config.apply {self.applying.jti!r} is waiting for its confirmation")
        text, base = cmd.args.get("config"), cmd.args.get("base")
        if not isinstance(text, str) or not isinstance(base, str):
            raise Refused("bad_args", "config.apply needs args.config (the complete TOML text) and "
                          "args.base (sha256 hex of the file it replaces, from config.get)")
        path = a.cfg.source_path
        if path is None:
            raise Failed("no_file", "the running configuration was not loaded from a file")
        current = await asyncio.to_thread(path.read_bytes)
        cur_sha = sha256_hex(current)
        if base.strip().lower() != cur_sha:
            raise Refused("base_mismatch", f"the file on the gateway has sha256 {cur_sha}, not {base[:64]}",
                          result={"sha256": cur_sha})
        new = text.encode()
        try:
            problems = await asyncio.to_thread(self._check_candidate, path, new, cmd.kid)
        except OSError as e:
            raise Failed("not_writable", f"cannot write in {path.parent}: {e.strerror} (remote configuration "
                         "needs a writable config folder: docs/DEPLOY.md)") from None
        if problems:
            raise Refused("invalid_config", f"{len(problems)} problem(s): {'; '.join(problems)}",
                          result={"problems": problems})
        new_sha = sha256_hex(new)
        if new_sha == cur_sha:
            return {"changed": False, "sha256": cur_sha}
        c = a.cfg.commands
        assert c is not None

        def commit() -> Pending:
            backup = keep_version(path, current, c.keep_versions)
            p = Pending(jti=cmd.jti, kid=cmd.kid, base=cur_sha, new=new_sha, backup=str(backup), started=time.time())
            write_pending(path, p)
            atomic_write(path, new)
            return p

        pending = await asyncio.to_thread(commit)
        self.applying = pending
        log.warning("config.apply %s: %s replaced (previous kept as %s); confirming within %.0f s", cmd.jti,
                    path, pending.backup, c.confirm_timeout)
        up = await self._reload(path)
        if up is None:
            await self._roll_back(path, pending)
            raise Failed("reload_failed", "the new file was rejected by the reload; previous configuration restored")
        self._apply = asyncio.create_task(self._confirm(cmd, path, pending, up, c.confirm_timeout),
                                          name="commands:confirm")
        return _LATER

    def _check_candidate(self, path: Path, new: bytes, kid: str) -> list[str]:
        """Every problem `config check` finds in the new text (read beside the real file: same relative paths)."""
        from agent.config import load_config
        from agent.reload import plan

        tmp = path.with_name(f".{path.name}.candidate-{os.getpid()}")
        try:
            atomic_write(tmp, new, mode=0o600)  # it may hold secrets (bindkeys)
            try:
                cfg = load_config(tmp)
            except ConfigError as e:
                return list(e.problems)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        out = [f"{k}: takes effect only after a restart, which config.apply cannot confirm (change it on site)"
               for k in plan(self.agent.cfg, cfg, set(self.agent.running_devices())).needs_restart]
        if cfg.commands is None:
            out.append("commands: removing [commands] remotely would end remote management (do it on site)")
            return out
        if cfg.commands.allow is not None and "config.apply" not in cfg.commands.allow:
            out.append("commands.allow: dropping config.apply remotely would end remote configuration (do it on site)")
        signer = self.verifier.keys[kid].public_bytes_raw()
        if all(k.public_bytes_raw() != signer for k in load_trusted_keys(cfg.commands.trusted_keys).values()):
            out.append(f"commands.trusted_keys: the new file does not trust the key that signed this config.apply "
                       f"({kid!r}): the platform would lock itself out (sign it with a key that stays trusted)")
        return out

    async def _reload(self, path: Path) -> Uplink | None:
        """Apply the file through the reload path on a fresh uplink session; that session, or None if rejected."""
        a = self.agent
        before = a.uplink
        if not await a.reload_config():
            return None
        if a.uplink is before:  # uplink settings unchanged: confirm on a new session all the same
            await a.restart_uplink(a.new_uplink(a.cfg))
        return a.uplink

    async def _confirm(self, cmd: Command, path: Path, pending: Pending, up: Uplink, window: float) -> None:
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(window):
                await up.connected.wait()  # set after the birth's PUBACK and the P/commands subscription
            confirmed = self.agent.uplink is up
        except TimeoutError:
            confirmed = False
        try:
            if confirmed:
                await asyncio.to_thread(clear_pending, path)
                log.info("config.apply %s confirmed after %.1f s", cmd.jti, time.monotonic() - t0)
                await self._finish(cmd, "ok", result={"sha256": pending.new, "previous": pending.base,
                                                      "backup": pending.backup,
                                                      "config_digest": self.agent.cfg.digest(),
                                                      "confirmed_after": round(time.monotonic() - t0, 3)})
                return
            u = self.agent.cfg.uplink
            cause = up.stats.last_error or "no connection"
            await self._roll_back(path, pending)
            await self._finish(cmd, "rolled_back", "not_confirmed",
                               f"the uplink did not connect to {u.host}:{u.port} with the new settings within "
                               f"{window:g} s ({cause}); previous configuration restored")
        finally:
            self.applying = None

    async def _roll_back(self, path: Path, pending: Pending) -> None:
        a = self.agent
        await asyncio.to_thread(restore, path, pending)
        before = a.uplink
        if not await a.reload_config():
            log.error("config.apply %s: the restored previous file did not reload; restart the agent", pending.jti)
        if a.uplink is before:
            await a.restart_uplink(a.new_uplink(a.cfg))
        await asyncio.to_thread(clear_pending, path)
        log.warning("config.apply %s rolled back to %s", pending.jti, pending.base[:12])

    async def _report_interrupted(self) -> None:
        """A config.apply the previous process left unconfirmed, rolled back at start (agent/confirm.py)."""
        path = self.agent.cfg.source_path
        if path is None:
            return
        p = await asyncio.to_thread(take_interrupted, path)
        if p is None:
            return
        cmd = Command(jti=p.jti, cmd="config.apply", args={}, kid=p.kid, iat=p.started, exp=p.started)
        await self._finish(cmd, "rolled_back", "interrupted",
                           "the agent stopped during the confirmation window (power cut, crash or restart); "
                           f"the previous configuration ({p.base[:12]}) was restored at start")
        await asyncio.to_thread(done_interrupted, path)
