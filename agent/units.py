"""Human sizes and durations (defined in `edge_common.units`; re-exported here)."""

from __future__ import annotations

from edge_common.units import format_duration, format_size, parse_duration, parse_size

__all__ = ["format_duration", "format_size", "parse_duration", "parse_size"]
