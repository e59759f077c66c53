"""Whether the caller of the current core call is still there.

An adapter that runs core calls in worker threads (the MCP server) marks the call it runs;
the core asks :func:`caller_gone` right before it sends anything (a command, typed text) or
hands out a new session, so a call the client already cancelled or gave up on never acts
late. Outside such a call (CLI, workflows, tests) the caller is always there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_gone: ContextVar[Callable[[], bool] | None] = ContextVar("phonehome_jump_caller_gone",
                                                           default=None)


def caller_gone() -> bool:
    """True when the adapter's caller of the running core call has gone (cancelled, timed out)."""
    gone = _gone.get()
    return gone is not None and gone()


@contextmanager
def caller(gone: Callable[[], bool]) -> Iterator[None]:
    """Run the body as a call whose caller has gone once ``gone()`` is true."""
    token = _gone.set(gone)
    try:
        yield
    finally:
        _gone.reset(token)
