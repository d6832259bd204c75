"""Jittered exponential backoff (defined in `edge_common.backoff`; re-exported here)."""

from __future__ import annotations

from edge_common.backoff import Backoff

__all__ = ["Backoff"]
