"""Waiting in tests: for a condition, with a bound, never for a fixed time.

A fixed ``time.sleep(n)`` either wastes time or, on a loaded CI machine, is too short and the test
flakes (or passes without checking what it meant to). :func:`wait_until` polls a condition and fails
with a message naming what was awaited when the bound runs out; the bound is generous because it only
matters when something is broken.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.01) -> T:
    """Call ``predicate`` until it returns a truthy value and return that value.

    Fails the test (``AssertionError``) after ``timeout`` seconds with "timed out after Ns waiting for
    <what>". Polls every ``interval`` seconds, backing off to at most 0.2 s.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
        interval = min(interval * 1.5, 0.2)


def wait_past(when: float, timeout: float, what: str) -> None:
    """Wait until the wall clock (``time.time()``, the clock leases and expiry times use) is past ``when``."""
    wait_until(lambda: time.time() > when, timeout, what)
