"""Checks of the uplink's credential and TLS files, run by `config check` and at startup.

A password file must be a regular file readable by the agent and by nobody else in its
group or the world (mode 0600 or 0400); the MQTT password never appears in the config
itself. TLS files must exist and be readable; whether they hold valid PEM is checked when
the SSL context is built (agent/uplink.py `build_tls_context`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Protocol


class _TlsFiles(Protocol):
    @property
    def ca_file(self) -> Path | None: ...
    @property
    def cert_file(self) -> Path | None: ...
    @property
    def key_file(self) -> Path | None: ...


class _UplinkFiles(Protocol):
    @property
    def password_file(self) -> Path | None: ...
    @property
    def tls(self) -> _TlsFiles | None: ...


class HasUplink(Protocol):
    """What the checks read of the config (`AgentConfig`; a protocol so that auth needs no config import)."""

    @property
    def uplink(self) -> _UplinkFiles: ...


def _readable(path: Path, access: bool = True) -> str | None:
    """None when `path` is a regular file (readable by us, with `access`), else why not."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return f"file not found: {path}"
    except OSError as e:
        return f"cannot access {path}: {e.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return f"not a regular file: {path}"
    if access and not os.access(path, os.R_OK):
        return f"not readable by this user: {path}"
    return None


def check_password_file(path: Path, access: bool = True) -> str | None:
    """None when the password file is private (and readable by us, with `access`), else the problem."""
    problem = _readable(path, access)
    if problem:
        return problem
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & (stat.S_IRGRP | stat.S_IROTH | stat.S_IWGRP | stat.S_IWOTH):
        return (f"{path} is readable or writable by group/others (mode {mode:04o}); "
                f"run: chmod 600 {path}")
    return None


def check_uplink_files(cfg: HasUplink, access: bool = False) -> list[tuple[str, str]]:
    """(key, problem) for every missing or exposed credential/TLS file; `access`: also readable by us.

    Config validation checks existence and modes only (a technician's `status` need not read
    the agent's secrets); `run` also checks that this user can read them.
    """
    problems: list[tuple[str, str]] = []
    up = cfg.uplink
    if up.password_file is not None:
        msg = check_password_file(up.password_file, access)
        if msg:
            problems.append(("uplink.password_file", msg))
    if up.tls is not None:
        for key in ("ca_file", "cert_file", "key_file"):
            p = getattr(up.tls, key)
            if p is not None:
                msg = _readable(p, access)
                if msg:
                    problems.append((f"uplink.tls.{key}", msg))
    return problems
