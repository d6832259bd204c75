"""Entry point: `edge-agent VERB ...`."""

from __future__ import annotations

import argparse
import importlib
import sys

from agent import __version__
from agent.cli.common import EXIT_FAILURE, EXIT_USAGE, CliExit

# One module per verb group; each defines register(subparsers).
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
]


def _drivers_epilog() -> str:
    """The registered drivers, plugins named with their distribution (entry points `edge_agent.drivers`)."""
    from drivers.registry import registry

    reg = registry()
    text = "Drivers: " + ", ".join(n for n, r in reg.drivers.items() if r.builtin) + "."
    plugins = [f"{n} ({r.dist})" for n, r in reg.drivers.items() if not r.builtin]
    if plugins:
        text += " Plugin drivers: " + ", ".join(plugins) + "."
    if reg.problems:
        text += " Plugins not used: " + "; ".join(reg.problems.values()) + "."
    return text


class _Formatter(argparse.HelpFormatter):
    """Wraps without breaking names at their hyphens (edge-agent-thermo)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        import textwrap

        return textwrap.fill(" ".join(text.split()), width, initial_indent=indent, subsequent_indent=indent,
                             break_on_hyphens=False)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-agent",
        formatter_class=_Formatter,
        description="Edge gateway agent: serial and BLE sensors -> durable buffer -> MQTT city platform.",
        epilog=_drivers_epilog() + " Exit codes: 0 ok, 1 failure, 2 usage, 69 agent not reachable, "
        "78 configuration error.",
    )
    p.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = p.add_subparsers(dest="verb", metavar="VERB")
    for name in VERB_MODULES:
        importlib.import_module(name).register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except CliExit as e:
        if e.message:
            print(e.message, file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # last resort: one line, no traceback for the technician
        print(f"edge-agent: error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    raise SystemExit(main())
