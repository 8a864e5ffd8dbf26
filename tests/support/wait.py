"""Polling for a condition with a deadline: the one loop the tests use instead of writing their own."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.02,
    message: str | Callable[[], str] = "condition not met",
) -> T:
    """Call `predicate` every `interval` seconds until it returns something truthy, and return that.

    It is always called at least once, and once more at the deadline. After `timeout` seconds of
    falsy answers, raise AssertionError with `message` (a callable message is built only then, so it
    can read a log file). An exception raised by the predicate propagates at once: a predicate can
    assert that the process it waits for is still alive.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            text = message() if callable(message) else message
            raise AssertionError(f"{text} (waited {timeout:g}s)")
        time.sleep(min(interval, left))
