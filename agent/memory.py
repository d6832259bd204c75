"""Give start-up garbage back to the OS: the agent runs for months on a board with little RAM.

Importing and validating (pydantic schemas, bytecode, the config) leaves freed memory that
malloc keeps. Once the agent runs, one full collection, `gc.freeze()` (the long-lived start-up
objects leave the collector's generations: cheaper collections from then on) and glibc's
`malloc_trim(0)` return it. Elsewhere (musl, macOS) only the collection runs.
"""

from __future__ import annotations

import ctypes
import gc
import os
import sys
import types
from typing import Any

PYDANTIC_LOADER = "pydantic.plugin._loader"
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


def skip_pydantic_plugins() -> bool:
    """No pydantic plugin scan in the resident agent (it uses none): whether the stand-in was installed.

    pydantic's plugin loader imports importlib.metadata at its top, even with
    PYDANTIC_DISABLE_PLUGINS=__all__, at the first model class: with the zipfile and email
    helpers it brings, ~1.3 MiB the agent would keep for months. The stand-in answers what the
    loader answers under PYDANTIC_DISABLE_PLUGINS=__all__: no plugins. Left alone when that
    variable is set (whoever sets it chooses) or the loader is already imported.
    """
    if "PYDANTIC_DISABLE_PLUGINS" in os.environ or PYDANTIC_LOADER in sys.modules:
        return False
    stub = types.ModuleType(PYDANTIC_LOADER, "edge-agent run: no pydantic plugins (agent/memory.py)")
    setattr(stub, "get_plugins", lambda: ())  # noqa: B010 (a module built at run time)
    sys.modules[PYDANTIC_LOADER] = stub
    return True
