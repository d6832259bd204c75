"""Entry point: `edge-agent VERB ...`."""

from __future__ import annotations

import argparse
import importlib
import sys

from agent import __version__
from agent.cli.common import EXIT_FAILURE, EXIT_USAGE, CliExit, CliParser, SubParser, print_json

# One module per verb group; each defines register(subparsers). Their top-level imports stay
# light (no pydantic, asyncio, aiomqtt, dbus-fast): every start, `--help` included, loads them all.
VERB_MODULES = [
    "agent.cli.run",
    "agent.cli.config_cmd",
    "agent.cli.status",
    "agent.cli.buffer_cmd",
    "agent.cli.scan",
    "agent.cli.probe",
    "agent.cli.doctor",
    "agent.cli.receive",
    "agent.cli.ingest",
    "agent.cli.command_cmd",
    "agent.cli.uplink_cmd",
]

# The verbs that run for months: their start builds only their own module's parser, so the
# other verbs' code (doctor, buffer, scan ...: 1.3 MB of RSS) never sits in the agent's memory.
RESIDENT = {"run": "agent.cli.run", "demo": "agent.cli.run"}

EPILOG = ("Exit codes: 0 ok, 1 failure, 2 usage, 3/4/5 `status`: degraded / data buffering / "
          "readings at risk, 69 agent not reachable, 73 `run`: buffer cannot be opened, "
          "78 configuration error.")


class _Formatter(argparse.HelpFormatter):
    """Wraps without breaking names at their hyphens (edge-agent-thermo)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        import textwrap

        return textwrap.fill(" ".join(text.split()), width, initial_indent=indent, subsequent_indent=indent,
                             break_on_hyphens=False)


class _TopParser(CliParser):
    """`edge-agent --help` names the drivers; a verb never pays for the registry (importlib.metadata)."""

    def format_help(self) -> str:
        from agent.cli.driver_list import drivers_epilog

        self.epilog = f"{drivers_epilog()} {EPILOG}"
        return super().format_help()


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The CLI's parser: every verb, or only the module of `verb` when it is a RESIDENT one."""
    p = _TopParser(
        prog="edge-agent",
        formatter_class=_Formatter,
        description="Edge gateway agent: serial and BLE sensors -> durable buffer -> MQTT city platform.",
        epilog=EPILOG,  # the drivers are listed only when the help is printed (see _TopParser)
    )
    p.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = p.add_subparsers(dest="verb", metavar="VERB", parser_class=SubParser)
    for name in [RESIDENT[verb]] if verb in RESIDENT else VERB_MODULES:
        importlib.import_module(name).register(sub)
    return p


def _fail(e: CliExit, as_json: bool) -> int:
    if as_json:
        print_json(e.as_json())
    if e.message:
        print(e.message, file=sys.stderr)
    return e.code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    as_json = "--json" in argv
    parser = build_parser(argv[0] if argv else None)
    try:
        args = parser.parse_args(argv)
    except CliExit as e:
        return _fail(e, as_json)
    as_json = bool(getattr(args, "json", False))
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except CliExit as e:
        return _fail(e, as_json)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # last resort: one line, no traceback for the technician
        return _fail(CliExit(EXIT_FAILURE, f"edge-agent: error: {type(e).__name__}: {e}"), as_json)


if __name__ == "__main__":
    raise SystemExit(main())
