"""CLI start-up: wall time of `edge-agent --help`, `status`, `devices` beside `python -c pass`.

Target (issue 14): each verb <= 2 x `python -c pass` + 60 ms. `status` and `devices` ask a
running agent (started here, no devices, broker unreachable). Runs are interleaved (pass, help,
status, devices, pass, ...) so machine load hits every command alike; the median and the best
of N are printed, then the biggest self times of `-X importtime` per command.

    .venv/bin/python -m benchmarks.cli_startup [--runs 21] [--json] [--before TREE]

--before TREE: also time the same verbs of another checkout (e.g. `git worktree add /tmp/old <commit>`),
interleaved with this one, against the same agent.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.mosquitto import free_port
from benchmarks.common import emit

ROOT = Path(__file__).resolve().parents[1]


def wall(argv: list[str], cwd: Path = ROOT) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd, check=False)
    return time.perf_counter() - t0


def offenders(argv: list[str], top: int = 6) -> list[tuple[str, float]]:
    """(module, self ms) of the slowest imports of one run."""
    r = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], capture_output=True, text=True, cwd=ROOT)
    rows = []
    for line in r.stderr.splitlines():  # "import time: SELF | CUMULATIVE | name"
        if line.startswith("import time:") and "self [us]" not in line:
            self_us, _, name = line.removeprefix("import time:").split("|")
            rows.append((name.strip(), int(self_us) / 1000))
    return sorted(rows, key=lambda r: -r[1])[:top]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=21)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--before", type=Path, help="another checkout to time beside this one")
    args = ap.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="edge-agent-cli-bench-") as d:
        cfg = Path(d) / "agent.toml"
        cfg.write_text(f'[gateway]\nid = "gw-bench"\n[buffer]\npath = "buffer.db"\n'
                       f'[uplink]\nhost = "127.0.0.1"\nport = {free_port()}\n[control]\nsocket = "control.sock"\n')
        agent = subprocess.Popen([py, "-m", "agent", "run", "--config", str(cfg)], cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while subprocess.run([py, "-m", "agent", "status", "--config", str(cfg)], capture_output=True,
                                 cwd=ROOT).returncode == 69:
                if time.monotonic() > deadline:
                    raise SystemExit("the agent did not start")
                time.sleep(0.2)
            cmds = {
                "python -c pass": [py, "-c", "pass"],
                "edge-agent --help": [py, "-m", "agent", "--help"],
                "edge-agent status": [py, "-m", "agent", "status", "--config", str(cfg)],
                "edge-agent devices": [py, "-m", "agent", "devices", "--config", str(cfg)],
            }
            where = {k: ROOT for k in cmds}
            if args.before:
                for k in list(cmds)[1:]:
                    cmds[f"before: {k}"], where[f"before: {k}"] = cmds[k], args.before.resolve()
            times: dict[str, list[float]] = {k: [] for k in cmds}
            for _ in range(args.runs):
                for k, argv in cmds.items():
                    times[k].append(wall(argv, where[k]))
            imports = {k: offenders(argv) for k, argv in cmds.items() if k != "python -c pass" and k in where
                       and where[k] == ROOT}
        finally:
            agent.terminate()
            agent.wait(20)
    base = statistics.median(times["python -c pass"])
    res: dict[str, Any] = {"runs": args.runs, "target_s": round(2 * base + 0.060, 4), "commands": {}}
    lines = [f"{args.runs} interleaved runs each; target: 2 x `python -c pass` + 60 ms = "
             f"{1000 * (2 * base + 0.060):.0f} ms (median basis)",
             f"{'command':<28} {'median':>8} {'best':>8} {'x pass':>7}  met?"]
    for k, ts in times.items():
        med, best = statistics.median(ts), min(ts)
        ok = k == "python -c pass" or med <= 2 * base + 0.060
        res["commands"][k] = {"median_s": round(med, 4), "best_s": round(best, 4), "ratio": round(med / base, 2),
                              "met": ok, "top_imports_ms": imports.get(k, [])}
        lines.append(f"{k:<28} {1000 * med:>6.0f}ms {1000 * best:>6.0f}ms {med / base:>6.2f}x  "
                     f"{'' if k == 'python -c pass' else 'yes' if ok else 'NO'}")
    for k, top in imports.items():
        lines.append(f"-X importtime, {k}: " + ", ".join(f"{m} {ms:.1f}" for m, ms in top) + " (self ms)")
    emit(res, lines, args.json)


if __name__ == "__main__":
    main()
