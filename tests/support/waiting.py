"""The one way tests wait for something to happen: poll until it does."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T],
    what: str | Callable[[], str],
    timeout: float = 30,
    interval: float = 0.05,
) -> T:
    """Call ``condition`` until it returns something true, and return that.

    ``timeout`` only bounds a hang: exceeding it fails the test with AssertionError naming
    ``what`` (a string, or a function giving the details then, e.g. a log's tail), and it
    is never a measure of speed, so make it generous. An exception from ``condition``
    (a daemon that died, an assert) ends the wait at once."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = what() if callable(what) else what
            raise AssertionError(f"still waiting after {timeout} s: {detail}")
        time.sleep(interval)
