"""Waiting on a condition, never on a fixed time: CI shares a busy 2-core machine."""

from __future__ import annotations

import time


def until(predicate, timeout: float = 10.0, what: str = "condition"):
    """The predicate's first true value, polled every 50 ms; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value
