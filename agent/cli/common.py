"""Shared CLI plumbing: exit codes, --config, JSON/human output."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from agent.config import AgentConfig, default_config_path, load_config
from agent.errors import ConfigError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 69
EXIT_CONFIG = 78


class CliExit(Exception):
    """Leave the CLI with a message and an exit code (no traceback)."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def add_config_arg(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: `edge-agent buffer --config X stats` and `... stats --config X` both work (a
    # sub-command's default must not overwrite the value given to its group).
    p.add_argument("--config", "-c", metavar="PATH", default=argparse.SUPPRESS,
                   help=f"configuration file (default: $EDGE_AGENT_CONFIG or {default_config_path()})")


def add_json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable JSON output")


def load(args: argparse.Namespace) -> AgentConfig:
    """Load the config named by --config; exit 78 listing every problem."""
    try:
        return load_config(getattr(args, "config", None))
    except ConfigError as e:
        raise CliExit(EXIT_CONFIG, format_config_error(e)) from None


def format_config_error(e: ConfigError) -> str:
    head = f"invalid configuration {e.path}:" if e.path else "invalid configuration:"
    return "\n".join([head, *(f"  {p}" for p in e.problems)])


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write("\n")


def use_color() -> bool:
    import os

    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def table(rows: list[list[str]], header: list[str]) -> str:
    """Plain aligned table."""
    cols = [header, *rows]
    widths = [max(len(str(r[i])) for r in cols) for i in range(len(header))]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)
