"""Record the deadlines of the shared timer grid's timers (edge_common.ticks.sleep_until)."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import pytest

from edge_common import ticks


def record_grid_deadlines(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[float]]:
    """From now on (until monkeypatch.undo), each grid timer's deadline under the name of the task that set it."""
    loop = asyncio.get_running_loop()
    deadlines: dict[str, list[float]] = collections.defaultdict(list)
    call_at = loop.call_at

    def recording_call_at(when: float, callback: Any, *args: object, **kw: Any) -> asyncio.TimerHandle:
        if callback is ticks._wake:
            task = asyncio.current_task()
            deadlines[task.get_name() if task else "?"].append(when)
        return call_at(when, callback, *args, **kw)

    monkeypatch.setattr(loop, "call_at", recording_call_at)
    return deadlines
