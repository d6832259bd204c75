"""Run `edge-agent VERB ...` in-process (fast) or as a subprocess (for streaming verbs)."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.cli.main import main


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def run_cli(*argv: str | Path) -> CliResult:
    """`edge-agent *argv` in this process (no TTY: no colour); never from inside an event loop."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:  # argparse: usage errors (2), --help (0)
            code = e.code if isinstance(e.code, int) else 1
    return CliResult(code, out.getvalue(), err.getvalue())


def spawn_cli(*argv: str | Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`python -m agent *argv` as a subprocess with piped, line-buffered text output."""
    return subprocess.Popen(
        [sys.executable, "-m", "agent", *(str(a) for a in argv)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
        env=env,
    )


class Spawned:
    """A CLI subprocess whose stdout and stderr lines are collected by two threads."""

    def __init__(self, *argv: str | Path, env: dict[str, str] | None = None) -> None:
        import threading

        self.proc = spawn_cli(*argv, env=env)
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [
            threading.Thread(target=self._pump, args=(s, dst), daemon=True)
            for s, dst in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _pump(stream: Any, dst: list[str]) -> None:
        for line in stream:
            dst.append(line.rstrip("\n"))

    def wait(self, timeout: float = 20.0) -> int:
        code = self.proc.wait(timeout)
        for t in self._threads:
            t.join(5)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for t in self._threads:
            t.join(5)
