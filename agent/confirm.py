"""config.apply's files: atomic writes, kept versions, and the marker a restart rolls back from.

While a remote config change waits for confirmation, `<config>.apply-pending` (JSON) names the
saved previous file. A process that ends inside the window (power cut, kill -9, crash, stop)
leaves it behind; the next start (`recover`, before the config is read) restores the previous
file and leaves `<config>.apply-interrupted` for the command service to report as rolled_back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Pending:
    """A config.apply between its write and its confirmation."""

    jti: str
    kid: str
    base: str  # sha256 of the file it replaced
    new: str  # sha256 of the file written
    backup: str  # the saved previous file
    started: float


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int | None = None) -> None:
    """Replace `path` with `data`: a power cut leaves the old or the new file, never a mix."""
    if mode is None:
        try:
            mode = path.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o640
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def versions_dir(config: Path) -> Path:
    return config.with_name(f"{config.name}.versions")


def keep_version(config: Path, data: bytes, keep: int) -> Path:
    """Save `data` (the file about to be replaced) as a version; only the newest `keep` stay."""
    d = versions_dir(config)
    d.mkdir(mode=0o750, exist_ok=True)
    now = time.time()  # names sort by time: pruning keeps the newest
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now * 1e6) % 1_000_000:06d}Z"
    dest = d / f"{stamp}-{sha256_hex(data)[:12]}{config.suffix}"
    atomic_write(dest, data, mode=config.stat().st_mode & 0o7777)
    old = sorted(p for p in d.iterdir() if not p.name.startswith("."))
    for p in old[:-keep]:
        with contextlib.suppress(OSError):
            p.unlink()
    return dest


def pending_path(config: Path) -> Path:
    return config.with_name(f"{config.name}.apply-pending")


def interrupted_path(config: Path) -> Path:
    return config.with_name(f"{config.name}.apply-interrupted")


def write_pending(config: Path, p: Pending) -> None:
    atomic_write(pending_path(config), json.dumps(asdict(p)).encode(), mode=0o600)


def clear_pending(config: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        pending_path(config).unlink()
    _fsync_dir(config.parent)


def _read(path: Path) -> Pending | None:
    try:
        return Pending(**json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as e:
        raise RuntimeError(f"{path}: unreadable ({e}); restore the previous configuration by hand "
                           f"from {versions_dir(path)} and remove it") from None


def restore(config: Path, p: Pending) -> None:
    """Put the previous file back (atomically), unless it already is."""
    data = Path(p.backup).read_bytes()
    try:
        if sha256_hex(config.read_bytes()) == sha256_hex(data):
            return
    except FileNotFoundError:
        pass
    atomic_write(config, data)


def recover(config: Path) -> Pending | None:
    """At start, before the config is read: roll back a config.apply left unconfirmed; what was rolled back."""
    p = _read(pending_path(config))
    if p is None:
        return None
    restore(config, p)
    os.replace(pending_path(config), interrupted_path(config))
    _fsync_dir(config.parent)
    return p


def take_interrupted(config: Path) -> Pending | None:
    """The rolled-back apply `recover` left to report (call `done_interrupted` once reported)."""
    return _read(interrupted_path(config))


def done_interrupted(config: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        interrupted_path(config).unlink()
