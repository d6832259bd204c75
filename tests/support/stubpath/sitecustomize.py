"""Test-only: lets agent subprocesses use tests/support/decoders_stub.py until drivers.ble.decoders lands."""

from __future__ import annotations

try:
    from tests.support.decoders_stub import install

    install()
except Exception:  # never break interpreter start-up
    pass
