"""The driver list of `edge-agent --help`, cached: reading the entry points costs `--help` about a
third of its start-up (importlib.metadata, every family's descriptor; benchmarks/cli_startup.py).

The cache holds the text with what it was read from: what is installed (the interpreter,
`sys.path` and the distributions' metadata in it, edge_common/installed.py), and every file the
listing imported with its mtime (the families' descriptors, the checkout's pyproject.toml). Any
difference, or a plugin that failed to load, reads the entry points again. A cache that cannot
be read or written is skipped: the listing is then read every time.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from agent import __version__
from edge_common import installed

CACHE_VERSION = 1
CACHE = "drivers-help.json"  # in $XDG_CACHE_HOME/edge-agent (edge_common/installed.py)


def _stdlib(file: str) -> bool:
    """A standard-library module's file (it changes only with `sys.version`, in the key); a
    site-packages below the stdlib directory (an interpreter without a venv) is not."""
    stdlib = os.path.dirname(os.__file__) + os.sep
    return file.startswith(stdlib) and not file[len(stdlib):].startswith(("site-packages", "dist-packages"))


def _key() -> list[Any]:
    return [CACHE_VERSION, __version__, *installed.install_key()]


def _listing() -> tuple[str, bool]:
    """(the drivers' sentence, whether every plugin loaded) from the entry points."""
    from drivers.registry import registry

    reg = registry()
    text = "Drivers: " + ", ".join(n for n, r in reg.drivers.items() if r.builtin) + "."
    plugins = [f"{n} ({r.dist})" for n, r in reg.drivers.items() if not r.builtin]
    if plugins:
        text += " Plugin drivers: " + ", ".join(plugins) + "."
    if reg.problems:
        text += " Plugins not used: " + "; ".join(reg.problems.values()) + "."
    return text, not reg.problems


def _fresh(entry: Any, key: list[Any]) -> str | None:
    """The cached text when `entry` was made from what is installed now."""
    if not isinstance(entry, dict) or entry.get("key") != key or not isinstance(entry.get("text"), str):
        return None
    files = entry.get("files")
    if not isinstance(files, dict) or any(installed.mtime(f) != m for f, m in files.items()):
        return None
    text: str = entry["text"]
    return text


def drivers_epilog() -> str:
    """The registered drivers, plugins named with their distribution (entry points `edge_agent.drivers`)."""
    key = _key()
    if (cached := _fresh(installed.read_cache(CACHE), key)) is not None:
        return cached
    before = set(sys.modules)
    text, complete = _listing()
    # Written only when this call imported the families (the files it records), never with a broken
    # plugin (its fix may change none of the mtimes recorded).
    if not complete or "drivers.registry" in before:
        return text
    read: list[str] = [f for m in set(sys.modules) - before
                       if isinstance(f := getattr(sys.modules[m], "__file__", None), str) and not _stdlib(f)]
    read += [str(Path(sys.modules["drivers.registry"].__file__ or "").resolve().parents[1] / "pyproject.toml")]
    installed.write_cache(CACHE, {"key": key, "files": {f: installed.mtime(f) for f in read}, "text": text})
    return text
