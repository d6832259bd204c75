"""Give start-up garbage back to the OS: the agent runs for months on a board with little RAM.

Importing and validating (pydantic schemas, bytecode, the config) leaves freed memory that
malloc keeps. Once the agent runs, one full collection, `gc.freeze()` (the long-lived start-up
objects leave the collector's generations: cheaper collections from then on) and glibc's
`malloc_trim(0)` return it. Elsewhere (musl, macOS) only the collection runs.
"""

from __future__ import annotations

import ctypes
import gc
from typing import Any

_trim: Any = None  # glibc's malloc_trim; None: not looked up yet; False: unavailable


def malloc_trim() -> bool:
    """glibc malloc_trim(0): release free heap memory to the OS; False where unavailable."""
    global _trim
    if _trim is None:
        try:
            _trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            _trim = False
    if _trim is False:
        return False
    return bool(_trim(0))


def release_startup_memory() -> None:
    """Collect, freeze the survivors, trim the heap (call once the agent is running)."""
    gc.collect()
    gc.freeze()
    malloc_trim()
