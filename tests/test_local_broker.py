"""LocalBroker (demo, tests, benchmarks): a port grabbed before mosquitto binds it."""

from __future__ import annotations

import socket

import pytest

from tests.support.broker import Broker


def test_first_start_moves_off_a_taken_port_but_a_restart_keeps_its_port() -> None:
    b = Broker()
    first = b.port
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", first))  # someone else got the free port we picked
        b.start()
        try:
            assert b.port != first
        finally:
            b.stop()
        with socket.socket() as again:
            again.bind(("127.0.0.1", b.port))
            with pytest.raises(RuntimeError, match="Address already in use"):
                b.start()  # clients already know this port: no silent move
    b.close()
