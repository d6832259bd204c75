"""Shared timer grid: periodic work wakes on common instants of the loop clock.

On a small board (and much more so in a VM) a timer wake-up costs far more than the work it
does: every wake-up is a context switch, a timer interrupt, an epoll round trip. Tasks that
only need "about every N seconds" sleep until the next multiple of N on the loop's clock, so
the 1 s, 5 s, 10 s and 60 s housekeeping timers of different tasks fire in the same loop
iteration instead of each paying its own wake-up. Simulated devices sample on the same grid.
"""

from __future__ import annotations

import asyncio
import math


def next_tick(period: float, now: float | None = None) -> float:
    """The next instant strictly after `now` (loop clock) that is a multiple of `period`."""
    if now is None:
        now = asyncio.get_running_loop().time()
    return (math.floor(now / period) + 1) * period


def raise_if_cancelling() -> None:
    """Re-raise a cancellation that an inner `asyncio.wait_for` swallowed.

    CPython 3.11's wait_for can return a result (or a TimeoutError) although the task was
    cancelled at that moment; the task then keeps `cancelling() > 0` and would loop on, and a
    TaskGroup or a `gather` waiting for it at shutdown would wait forever (fixed in 3.12).
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def sleep_to_tick(period: float) -> None:
    """Sleep until the next multiple of `period` on the loop clock (at most `period`)."""
    await sleep_until(next_tick(period))


async def sleep_until(when: float) -> None:
    """Sleep until `when` on the loop clock (at once if past): equal deadlines share one wake-up."""
    raise_if_cancelling()
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    handle = loop.call_at(when, _wake, fut)
    try:
        await fut
    finally:
        handle.cancel()


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
