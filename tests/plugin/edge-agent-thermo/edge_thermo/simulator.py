"""A TH-1 in a warming room: real sentences (for `sim`, the tests and the demo)."""

from __future__ import annotations

from collections.abc import Iterator

from drivers.family import SimParams, Simulation
from edge_thermo.protocol import Th1Protocol, sentence


def samples() -> Iterator[tuple[float, float]]:
    n = 0
    while True:
        yield round(19.0 + (n % 50) * 0.1, 2), round(40.0 + (n % 20) * 0.5, 1)
        n += 1


def simulation(p: SimParams) -> Simulation:
    return (sentence(t, h) for t, h in samples()), Th1Protocol()
