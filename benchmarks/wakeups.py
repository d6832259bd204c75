"""Run a program with its asyncio loop's wake-ups counted: each blocking `select` that returned, and
what it woke for (the timer's callback, or the reader/writer of the ready file descriptors), and
every loop iteration.

Run: python benchmarks/wakeups.py OUT.json WARMUP SECONDS -- -m agent run --config agent.toml
Counts from WARMUP to WARMUP + SECONDS after start are written to OUT.json (per second).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import runpy
import selectors
import sys
import threading
import time
from typing import Any

_counts: collections.Counter[str] = collections.Counter()
_iterations = [0]
_callbacks: collections.Counter[str] = collections.Counter()
SLEPT = 0.0005  # a select that returned sooner did not sleep (e.g. a socket that was writable at once)


def _label(cb: Any) -> str:
    fn = getattr(cb, "__func__", cb)
    owner = getattr(getattr(cb, "__self__", None), "__class__", None)
    name = getattr(fn, "__qualname__", None) or repr(fn)
    if name.endswith("wakeup") or name.startswith("Task.") or "task_wakeup" in name:
        name = "task wake-up"
    return f"{owner.__name__}.{getattr(fn, '__name__', name)}" if owner is not None and "." not in name else name


def _timer_label(loop: Any) -> str:
    sched = getattr(loop, "_scheduled", None)
    if not sched:
        return "timer ?"
    h = sched[0]
    cb = h._callback
    if getattr(cb, "__qualname__", "") == "_wake" or "_wake" == getattr(cb, "__name__", ""):
        return "timer edge_common.ticks.sleep_until"
    if getattr(cb, "__name__", "") == "_set_result_unless_cancelled" or "futures._set_result_unless_cancelled" in repr(cb):
        return "timer asyncio.sleep"
    return "timer " + _label(cb) + ("" if not h._args else f"({type(h._args[0]).__name__})")


def _install() -> None:
    base = selectors.DefaultSelector

    class Counting(base):  # type: ignore[misc, valid-type]
        def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
            _iterations[0] += 1
            t0 = time.perf_counter()
            ev = super().select(timeout)
            if (timeout is None or timeout > 0) and time.perf_counter() - t0 > SLEPT:
                if not ev:
                    try:
                        _counts[_timer_label(asyncio.get_running_loop())] += 1
                    except RuntimeError:
                        _counts["timer (no loop)"] += 1
                else:
                    labels = set()
                    for key, mask in ev:
                        reader, writer = key.data if isinstance(key.data, tuple) else (None, None)
                        h = reader if mask & selectors.EVENT_READ else writer
                        labels.add(("fd " + _label(h._callback)) if h is not None else f"fd {key.fd}")
                    _counts[" + ".join(sorted(labels))] += 1
            return ev

    selectors.DefaultSelector = Counting  # type: ignore[misc]
    run = asyncio.events.Handle._run

    def counted(h: asyncio.Handle) -> None:
        cb = h._callback  # type: ignore[attr-defined]
        task = getattr(cb, "__self__", None)
        if isinstance(task, asyncio.Task):
            coro = task.get_coro()
            name = "task " + getattr(coro, "__qualname__", "?")
        else:
            name = _label(cb)
        _callbacks[name] += 1
        run(h)

    asyncio.events.Handle._run = counted  # type: ignore[method-assign]


def main() -> None:
    out, warmup, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    rest = sys.argv[sys.argv.index("--") + 1:]
    sys.path[0] = os.getcwd()  # as `python -m` has it: the checkout run from, not this file's folder
    _install()

    def snapshot() -> None:
        time.sleep(warmup)
        c0, i0, k0 = _counts.copy(), _iterations[0], _callbacks.copy()
        time.sleep(seconds)
        c1, k1 = _counts.copy(), _callbacks.copy()
        c1.subtract(c0)
        k1.subtract(k0)
        per_s = {k: round(v / seconds, 2) for k, v in c1.most_common() if v > 0}
        with open(out, "w") as f:
            json.dump({"wakeups_per_s": round(sum(c1.values()) / seconds, 2),
                       "iterations_per_s": round((_iterations[0] - i0) / seconds, 2), "by_cause": per_s,
                       "callbacks_per_s": {k: round(v / seconds, 2) for k, v in k1.most_common() if v > 0}}, f, indent=1)

    threading.Thread(target=snapshot, daemon=True).start()
    if rest[0] == "-m":
        sys.argv = [rest[1], *rest[2:]]
        runpy.run_module(rest[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = rest
        runpy.run_path(rest[0], run_name="__main__")


if __name__ == "__main__":
    main()
