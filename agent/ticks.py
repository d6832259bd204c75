"""Shared timer grid (defined in `edge_common.ticks`, where drivers reach it too; re-exported here)."""

from __future__ import annotations

from edge_common.ticks import _wake, next_tick, raise_if_cancelling, sleep_to_tick, sleep_until

__all__ = ["_wake", "next_tick", "raise_if_cancelling", "sleep_to_tick", "sleep_until"]
