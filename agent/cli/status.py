"""`edge-agent status|devices|tail` (not implemented yet)."""

from __future__ import annotations

import argparse

from agent.cli.common import EXIT_FAILURE, CliExit, add_config_arg, add_json_arg


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for verb in "status|devices|tail".split("|"):
        p = sub.add_parser(verb.split()[0], help="(not implemented yet)")
        add_config_arg(p)
        add_json_arg(p)
        p.set_defaults(func=_todo)


def _todo(args: argparse.Namespace) -> int:
    raise CliExit(EXIT_FAILURE, f"edge-agent {args.verb}: not implemented yet")
