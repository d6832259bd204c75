"""Shared CLI plumbing: exit codes, --config, JSON/human output.

Kept light on purpose (no pydantic, no asyncio): every verb, `--help` included, imports it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from agent.paths import CONFIG_ENV, default_config_path, demo_pointer
from edge_common.errors import EdgeAgentError

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from agent.errors import ConfigError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
# `status`: the agent answers but is not healthy (the most severe applies).
EXIT_DEGRADED = 3  # a device is not delivering (offline), or the clock is not synchronised
EXIT_BUFFERING = 4  # the uplink is down: data is buffering
EXIT_AT_RISK = 5  # the buffer cannot write (disk full, locked): readings wait in memory
EXIT_UNREACHABLE = 69
EXIT_BUFFER = 73  # `run`: the buffer cannot be created or opened (sysexits EX_CANTCREAT)
EXIT_CONFIG = 78

ERROR_KINDS = {EXIT_FAILURE: "failure", EXIT_USAGE: "usage", EXIT_UNREACHABLE: "unreachable",
               EXIT_BUFFER: "buffer", EXIT_CONFIG: "config"}


class CliExit(EdgeAgentError):
    """Leave the CLI with a message and an exit code (no traceback)."""

    def __init__(self, code: int, message: str = "", *, problems: list[str] | None = None,
                 path: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.problems = problems or []
        self.path = path

    def as_json(self) -> dict[str, Any]:
        """The error as `--json` prints it on standard output."""
        err: dict[str, Any] = {"exit": self.code, "kind": ERROR_KINDS.get(self.code, "failure"),
                               "message": self.message.removeprefix("edge-agent: ")}
        if self.path is not None:
            err["path"] = self.path
        if self.problems:
            err["problems"] = self.problems
        return {"ok": False, "error": err}


class CliParser(argparse.ArgumentParser):
    """argparse whose errors are CliExit (JSON under --json), and whose verbs own their typos.

    A sub-command's unknown option is reported with that sub-command's usage: argparse would
    hand it up to the top-level parser and print `edge-agent`'s usage instead.
    """

    sub = False

    def error(self, message: str) -> NoReturn:
        raise CliExit(EXIT_USAGE, f"{self.format_usage().rstrip()}\n{self.prog}: error: {message}")

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        ns, extras = super().parse_known_args(args, namespace)
        if self.sub and extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return ns, extras


class SubParser(CliParser):
    sub = True


def add_config_arg(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: `edge-agent buffer --config X stats` and `... stats --config X` both work (a
    # sub-command's default must not overwrite the value given to its group).
    p.add_argument("--config", "-c", metavar="PATH", default=argparse.SUPPRESS,
                   help=f"configuration file (default: ${CONFIG_ENV} or {default_config_path()})")


def add_tls_credential_args(p: argparse.ArgumentParser) -> None:
    """A platform tool's broker TLS files and credentials: --tls-ca/--tls-cert/--tls-key, --username/--password-file."""
    p.add_argument("--tls-ca", metavar="PEM", help="CA file to verify the broker (implies TLS)")
    p.add_argument("--tls-cert", metavar="PEM", help="client certificate (mutual TLS)")
    p.add_argument("--tls-key", metavar="PEM", help="client key (mutual TLS)")
    p.add_argument("--username")
    p.add_argument("--password-file", metavar="PATH", help="file holding the broker password")


def add_json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable JSON output (errors too)")


def running_demo_config() -> Path | None:
    """The config of this user's running `edge-agent demo`, from its pointer file (else None)."""
    ptr = demo_pointer()
    try:
        st = ptr.stat()
        if st.st_uid != os.getuid():  # /tmp is shared: only trust our own pointer
            return None
        data = json.loads(ptr.read_text(encoding="utf-8"))
        os.kill(int(data["pid"]), 0)
        path = Path(data["config"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return path if path.exists() else None


def config_path(args: argparse.Namespace) -> Path:
    """--config, else $EDGE_AGENT_CONFIG, else the default path; a running demo's when that is absent."""
    given = getattr(args, "config", None)
    if given:
        return Path(given)
    path = default_config_path()
    if not os.environ.get(CONFIG_ENV) and not path.exists():
        demo = running_demo_config()
        if demo is not None:
            if not getattr(args, "json", False):
                print(f"edge-agent: {path} not found; using the running demo's {demo}", file=sys.stderr)
            return demo
    return path


def load(args: argparse.Namespace) -> AgentConfig:
    """Load the config named by --config; exit 78 listing every problem."""
    from agent.config import load_config
    from agent.errors import ConfigError

    try:
        return load_config(config_path(args))
    except ConfigError as e:
        raise config_exit(e) from None


def config_exit(e: ConfigError) -> CliExit:
    return CliExit(EXIT_CONFIG, format_config_error(e), problems=list(e.problems), path=e.path)


def format_config_error(e: ConfigError) -> str:
    head = f"invalid configuration {e.path}:" if e.path else "invalid configuration:"
    return "\n".join([head, *(f"  {p}" for p in e.problems)])


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write("\n")


def table(rows: list[list[str]], header: list[str]) -> str:
    """Plain aligned table."""
    cols = [header, *rows]
    widths = [max(len(str(r[i])) for r in cols) for i in range(len(header))]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)
