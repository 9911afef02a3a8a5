"""Step windows: which steps of a schedule a mechanism runs on, as fractions of the step count (plain Python).

Every schedule of the editing algorithms is a fraction of the step count so it scales to any number of steps
and reproduces the official step indices exactly at 50 steps. This module is a leaf of the engine: the
samplers (``samplers/schedule.py`` re-exports it) and the guidance code both build on it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable


def round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


@dataclass(frozen=True)
class StepWindow:
    """Steps ``i`` with ``round(start*n) <= i < round(end*n)`` and ``(i - first) % every == 0``.

    ``start``/``end`` are fractions of the step count ``n`` (0 = noisiest step).
    """

    start: float = 0.0
    end: float = 1.0
    every: int = 1

    def __post_init__(self):
        if not (0.0 <= self.start <= 1.0 and 0.0 <= self.end <= 1.0):
            raise ValueError(f"step window fractions must lie in [0, 1], got start={self.start}, end={self.end}")
        if self.every < 1:
            raise ValueError(f"step window 'every' must be >= 1, got {self.every}")

    def indices(self, n: int) -> list[int]:
        a, b = round_half_up(self.start * n), round_half_up(self.end * n)
        return list(range(a, b, self.every))


def window_steps(windows: Iterable[StepWindow] | StepWindow | None, n: int) -> frozenset[int]:
    """Union of the step indices of several windows (``None`` means no step)."""
    if windows is None:
        return frozenset()
    if isinstance(windows, StepWindow):
        windows = [windows]
    out: set[int] = set()
    for w in windows:
        out.update(w.indices(n))
    return frozenset(out)
