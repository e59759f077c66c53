"""Waiting on a condition, never on a fixed time: CI shares a busy 2-core machine; and
calls made at once from many threads."""

from __future__ import annotations

import threading
import time


def until(predicate, timeout: float = 10.0, what: str = "condition"):
    """The predicate's first true value, polled every 50 ms; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def at_once(call, n: int, timeout: float = 120.0) -> list:
    """``call(i)`` for i in 0..n-1, each in its own thread, all started together: the
    results in order, an exception in place of the result of a call that raised one."""
    results: list = [None] * n

    def one(i: int) -> None:
        try:
            results[i] = call(i)
        except Exception as exc:   # the caller counts these
            results[i] = exc
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return results
