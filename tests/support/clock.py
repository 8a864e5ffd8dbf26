"""A clock tests move by hand, for code that takes `clock: Callable[[], float]` (monotonic seconds)."""

from __future__ import annotations


class FakeClock:
    """Stands still until `advance()`; call it to read the time."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
