"""pyvesc (PyPI 1.0.5) as a differential oracle: its `PyCRC.CRCCCITT` import, served by pycrc.

pyvesc 1.0.5 imports ``PyCRC.CRCCCITT`` (the retired PyCRC package); the PyPI name ``PyCRC``
now installs tpircher's ``pycrc`` instead. This shim gives pyvesc its CRCCCITT("XModem") class
computed by pycrc's table-driven CRC, so both the CRC and pyvesc's framing and field layout
stay independent of the code under test.
"""

from __future__ import annotations

import sys
import types
from typing import Any


def load() -> Any:
    """The pyvesc module (pytest.importorskip-style: ImportError when not installed)."""
    if "PyCRC.CRCCCITT" not in sys.modules:
        from pycrc.algorithms import Crc

        crc = Crc(width=16, poly=0x1021, reflect_in=False, xor_in=0, reflect_out=False, xor_out=0)

        class CRCCCITT:
            def __init__(self, version: str = "XModem") -> None:
                if version != "XModem":
                    raise ValueError(version)

            def calculate(self, data: bytes) -> int:
                return int(crc.table_driven(bytes(data)))

        pkg = types.ModuleType("PyCRC")
        mod = types.ModuleType("PyCRC.CRCCCITT")
        mod.CRCCCITT = CRCCCITT  # type: ignore[attr-defined]
        pkg.CRCCCITT = mod  # type: ignore[attr-defined]
        sys.modules["PyCRC"] = pkg
        sys.modules["PyCRC.CRCCCITT"] = mod
    import pyvesc

    return pyvesc
