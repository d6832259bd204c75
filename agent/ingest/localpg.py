"""A throwaway PostgreSQL server in a temp folder (initdb + pg_ctl) for tests, benchmarks and trials.

PostgreSQL refuses to run as root: started by root, the server runs as `nobody` (its folder is
handed over to that user first).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from agent.mosquitto import free_port, wait_port


def pg_bindir() -> Path | None:
    """The folder of initdb/pg_ctl/postgres: on PATH, or Debian's newest /usr/lib/postgresql/N/bin."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(os.path.realpath(found)).parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2])
                  if d.split("/")[-2].isdigit() else 0)
    return Path(dirs[-1]) if dirs and (Path(dirs[-1]) / "pg_ctl").exists() else None


class LocalPostgres:
    """`initdb` once, then `start` / `stop` / `kill` / `restart` on a free loopback port."""

    def __init__(self, port: int | None = None, workdir: Path | None = None, *, durable: bool = True,
                 user: str = "nobody") -> None:
        bindir = pg_bindir()
        if bindir is None:
            raise FileNotFoundError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
        self.bin = bindir
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.dir = workdir or Path(tempfile.mkdtemp(prefix="pg-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.durable = durable
        self._user = user if os.geteuid() == 0 else None
        if self._user is not None:
            pw = pwd.getpwnam(self._user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self._initdb()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    def _run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.bin / cmd[0]), *cmd[1:]], user=self._user, cwd=self.dir,
                              capture_output=True, text=True, check=check, timeout=120)

    def _initdb(self) -> None:
        try:
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                      "--locale=C", "--no-sync")
        except subprocess.CalledProcessError as e:
            raise RuntimeError(f"initdb failed: {e.stderr or e.stdout}") from None
        conf = [
            "listen_addresses = '127.0.0.1'", f"port = {self.port}",
            f"unix_socket_directories = '{self.dir}'", "max_connections = 50",
            "shared_buffers = 64MB",
        ]
        if not self.durable:  # tests: the machine never crashes under them, the server may
            conf += ["fsync = off", "full_page_writes = off"]
        with open(self.data / "postgresql.conf", "a") as f:
            f.write("\n".join(conf) + "\n")

    def start(self, timeout: float = 60.0) -> LocalPostgres:
        r = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", str(int(timeout)),
                      "start", check=False)
        if r.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start on port {self.port}: {r.stderr}{log}")
        wait_port(self.port, timeout=timeout)
        return self

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl stop; mode "immediate" is a crash (no checkpoint, recovery at the next start)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def close(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)
