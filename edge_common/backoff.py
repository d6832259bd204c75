"""Jittered exponential backoff."""

from __future__ import annotations

import random


class Backoff:
    """next() returns the next delay: initial * factor^n, capped, with 50-100 % jitter."""

    def __init__(self, initial: float = 0.5, maximum: float = 60.0, factor: float = 2.0) -> None:
        self._rand = random.Random()
        self.initial, self.maximum, self.factor = initial, maximum, factor
        self._cur = initial
        self.attempts = 0

    def next(self) -> float:
        d = self._cur
        self._cur = min(self.maximum, self._cur * self.factor)
        self.attempts += 1
        return d * (0.5 + self._rand.random() * 0.5)

    def reset(self) -> None:
        self._cur = self.initial
        self.attempts = 0
