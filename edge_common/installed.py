"""What is installed (entry points, distribution versions), kept so a start reads no package metadata.

`importlib.metadata` (with zipfile and the email parser's helpers) stays in a process that imported
it: about 1.3 MiB of the resident agent's memory (BENCHMARKS.md, steady RSS). An answer is kept in
$XDG_CACHE_HOME/edge-agent/NAME.json (~/.cache by default) with what it was read from: the
interpreter, `sys.path`, and the name and mtime of every distribution's metadata directory in it
(installing, upgrading or removing a distribution changes them). Any difference reads the
metadata again, in a short-lived child process; a cache that cannot be read or written is
skipped (then read every time).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

CACHE_VERSION = 1


def cache_file(name: str) -> Path | None:
    """$XDG_CACHE_HOME/edge-agent/`name` (~/.cache by default); None without a home."""
    home = os.environ.get("HOME")
    base = os.environ.get("XDG_CACHE_HOME") or (os.path.join(home, ".cache") if home else "")
    return Path(base) / "edge-agent" / name if base else None


def mtime(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def _dists(entry: str) -> list[Any]:
    """The distributions' metadata directories in one `sys.path` entry with their mtimes (a file
    entry, e.g. a zip: its own mtime). Not the directory's mtime: the agent's working directory
    may be on `sys.path` (`python -m agent`) and change with every file written there."""
    try:
        with os.scandir(entry or ".") as it:
            return sorted([e.name, e.stat().st_mtime_ns] for e in it if e.name.endswith((".dist-info", ".egg-info")))
    except OSError:
        return [mtime(entry or ".")]


def install_key() -> list[Any]:
    """What the installed distributions are read from: the interpreter, `sys.path`, the metadata in it."""
    return [CACHE_VERSION, sys.executable, sys.version, [[p, _dists(p)] for p in sys.path]]


def read_cache(name: str) -> dict[str, Any] | None:
    """The JSON object cached as `name`, None when there is none or it is unreadable."""
    path = cache_file(name)
    if path is None:
        return None
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return entry if isinstance(entry, dict) else None


def write_cache(name: str, entry: dict[str, Any]) -> None:
    """Replace the cache `name` atomically; a failure leaves it uncached."""
    path = cache_file(name)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entry), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass


def cached(name: str, what: str, arg: list[str]) -> Any:
    """`read(what, arg)`'s answer, from the cache `name` while what is installed is unchanged; a
    miss reads it in a short-lived child (`read_outside`), never in this process."""
    key = [*install_key(), what, arg]
    entry = read_cache(name)
    if entry is not None and entry.get("key") == key and "value" in entry:
        return entry["value"]
    value = read_outside(what, arg)
    write_cache(name, {"key": key, "value": value})
    return value


_CHILD = ("import json, sys; sys.path[:] = json.loads(sys.argv[1]); from edge_common.installed import read; "
          "print(json.dumps(read(sys.argv[2], json.loads(sys.argv[3]))))")


def read_outside(what: str, arg: list[str]) -> Any:
    """`read` in a child with this `sys.path`: a first start after an install keeps no metadata
    either (the agent may then run for months). Where no child can run, read here."""
    import subprocess

    try:
        r = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(sys.path), what, json.dumps(arg)],
                           capture_output=True, text=True, timeout=120, check=True)
        return json.loads(r.stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        return read(what, arg)


def read(what: str, arg: list[str]) -> Any:
    """From importlib.metadata: "entry_points" of the group arg[0] as [name, value, dist or None],
    or "versions" of the distributions in arg (None: not installed)."""
    from importlib import metadata

    if what == "entry_points":
        return [[ep.name, ep.value, ep.dist.name if ep.dist is not None else None]
                for ep in metadata.entry_points(group=arg[0])]
    out: dict[str, str | None] = {}
    for n in arg:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def entry_points(group: str) -> list[tuple[str, str, str | None]]:
    """(name, value, distribution name or None) of every installed entry point of `group`."""
    got = cached(f"entry-points-{group}.json", "entry_points", [group])
    return [(str(n), str(v), None if d is None else str(d)) for n, v, d in got]


def versions(names: list[str]) -> dict[str, str | None]:
    """The installed version of each distribution in `names` (None: not installed)."""
    got = cached("versions.json", "versions", list(names))
    return {n: got.get(n) for n in names}
