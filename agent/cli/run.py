"""`edge-agent run` and `edge-agent demo`."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from agent.cli.common import EXIT_BUFFER, EXIT_CONFIG, CliExit, add_config_arg, config_exit, load

if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

    from agent.config import AgentConfig


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="run the agent in the foreground (what the systemd unit starts)")
    add_config_arg(p)
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="override log_level")
    p.set_defaults(func=run)
    d = sub.add_parser("demo", help="simulated devices + local broker + live view, no hardware needed")
    d.add_argument("--seconds", type=float, default=None, help="stop after this long (default: until Ctrl-C)")
    d.add_argument("--dir", help="working folder (default: a temporary one)")
    d.add_argument("--json", action="store_true", help="print received messages as JSON lines")
    d.add_argument("--config", "-c", metavar="PATH", default=None,
                   help="run this config's gateway and devices (e.g. `sim` ones) instead of the built-in demo; "
                        "the uplink goes to the demo's local broker, buffer and control socket to the working folder")
    d.add_argument("--broker-port", type=int, metavar="PORT",
                   help="use the MQTT broker already listening on 127.0.0.1:PORT instead of starting a private "
                        "one (e.g. to feed `edge-agent ingest`, docs/PLATFORM.md)")
    d.set_defaults(func=demo)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from agent.memory import skip_pydantic_plugins

    skip_pydantic_plugins()  # before the first model class (the config's)
    _recover_config(args)
    from agent.auth import check_uplink_files
    from agent.logs import setup_logging

    cfg = load(args)  # exits 78 before touching anything

    if unreadable := check_uplink_files(cfg, access=True):
        raise CliExit(EXIT_CONFIG, "\n".join([f"invalid configuration {cfg.source_path}:",
                                              *(f"  {k}: {m}" for k, m in unreadable)]))
    setup_logging(args.log_level or cfg.log_level)
    from agent.errors import ConfigError, OutboxError
    from agent.memory import release_startup_memory
    from agent.notify import Supervision
    from agent.runtime import Agent, install_signal_handlers

    def release_later() -> None:
        """Once connected and settled: start-up garbage back to the OS (agent/memory.py)."""
        asyncio.get_running_loop().call_later(5.0, release_startup_memory)

    def buffer_stats(cfg: AgentConfig) -> dict[str, Any]:
        """The same JSON as `buffer stats --json` (its module imported only when a command asks)."""
        from agent.cli.buffer_cmd import buffer_stats

        return buffer_stats(cfg)

    async def main() -> int:
        agent = Agent(cfg)
        agent.command_readers["buffer.stats"] = buffer_stats
        install_signal_handlers(agent)
        agent.when_ready(agent.reloader.remember_uplink_files)
        agent.when_ready(release_later)
        async with Supervision(agent) as sv:  # sd_notify READY/STATUS/WATCHDOG/STOPPING
            try:
                await agent.run_until_stopped()
            except BaseException as e:
                sv.sd.status(f"failed: {type(e).__name__}: {e}")
                raise
        return 1 if agent.failure else 0

    try:
        return asyncio.run(main())
    except ConfigError as e:  # found only at start (e.g. an unreadable password file)
        raise config_exit(e) from None
    except (OSError, OutboxError) as e:
        if (why := buffer_open_failure(cfg.buffer.path, e)) is None:
            raise
        raise CliExit(EXIT_BUFFER, why) from None


def buffer_open_failure(path: Path, e: BaseException) -> str | None:
    """What to tell the technician when the buffer cannot be opened at start, or None if `e` is not that."""
    import shutil

    from agent.buffer import write_fault
    from agent.errors import OutboxError

    if isinstance(e, OSError):  # creating the buffer's folder
        if e.filename is None or not path.is_relative_to(e.filename):
            return None
        cause: BaseException = e
    elif isinstance(e, OutboxError):
        cause = e.__cause__ or e
    else:
        return None
    fault = write_fault(cause, path)
    where = next((p for p in path.parents if p.exists()), path.parents[-1])
    if fault == "disk_full":
        what, fix = f"the disk is full ({shutil.disk_usage(where).free} bytes free in {where})", "free space there"
    elif fault == "read_only" and _on_writable_fs(where):
        what, fix = f"{where} is not writable for user {_user()}", "fix the folder's owner or mode"
    elif fault == "read_only":
        what = f"{where} is on a read-only filesystem (an SD card remounted read-only after errors? see dmesg)"
        fix = "fix or replace the disk"
    elif fault == "locked":
        what, fix = "it is locked by another process (a second agent, or a sqlite3 shell)", "stop that process"
    else:
        what, fix = f"I/O error ({cause})", "check the disk (dmesg)"
    return (f"edge-agent: cannot open the buffer {path}: {what}\n"
            f"  the agent does not start without it (readings are numbered from it): {fix}, "
            "or set buffer.path to a writable disk; under systemd it tries again every 5 s")


def _user() -> str:
    import os
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _on_writable_fs(path: Path) -> bool:
    import os

    return not os.statvfs(path).f_flag & os.ST_RDONLY


def _recover_config(args: argparse.Namespace) -> None:
    """A remote config.apply the last process left unconfirmed is rolled back before the config is read."""
    import sys
    from pathlib import Path

    from agent.confirm import recover
    from agent.paths import default_config_path

    path = Path(getattr(args, "config", None) or default_config_path())
    try:
        p = recover(path)
    except (OSError, RuntimeError) as e:
        raise CliExit(EXIT_CONFIG, f"config.apply recovery: {e}") from None
    if p is not None:
        print(f"edge-agent: config.apply {p.jti} was not confirmed before the agent stopped: "
              f"{path} restored to its previous version ({p.base[:12]})", file=sys.stderr, flush=True)


def demo(args: argparse.Namespace) -> int:
    from agent.demo import run_demo
    from agent.errors import ConfigError

    try:
        return run_demo(seconds=args.seconds, workdir=args.dir, as_json=args.json, config=args.config,
                        broker_port=args.broker_port)
    except ConfigError as e:
        raise config_exit(e) from None
