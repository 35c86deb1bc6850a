"""Progress of a run of cells: n of N done, time so far, and about how long is left.

The estimate is the mean time per finished cell so far times the cells left (cells differ,
a model load is paid per group: it is a rough figure, said as "about")."""

from __future__ import annotations

import time
from typing import Callable


def _mmss(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    def __init__(self, what: str, total: int, log: Callable[[str], None], every_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, unit: str = "cells"):
        self.what, self.total, self.log, self.every_s, self.clock = what, total, log, every_s, clock
        self.unit = unit
        self.done = 0
        self.t0 = clock()
        self.last = self.t0

    def line(self) -> str:
        elapsed = self.clock() - self.t0
        left = self.total - self.done
        eta = f", about {_mmss(elapsed / self.done * left)} left" if self.done and left else ""
        return f"progress: {self.done}/{self.total} {self.what} {self.unit}, {_mmss(elapsed)}{eta}"

    def tick(self, n: int = 1) -> None:
        """One more cell final; says so at most every ``every_s`` seconds, and at the end."""
        self.done += n
        now = self.clock()
        if self.done >= self.total or now - self.last >= self.every_s:
            self.last = now
            self.log(self.line())

    def counting(self, on_cell: Callable) -> Callable:
        """``on_cell`` that also counts each final cell."""
        def done(cell) -> None:
            on_cell(cell)
            self.tick()
        return done
