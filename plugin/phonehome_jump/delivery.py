"""Replies with output that may have missed their caller, kept until the caller can have them.

The agent protocol answers one request at a time per connection, and a caller sends its
next request on a connection only after it has read the previous reply (the ET Phone Home
server, :class:`~.agent_client.RemoteAgent`). So a new request on a connection acknowledges
the last reply sent on it; a connection that closes with its last reply unacknowledged may
have lost that reply (the caller gave up waiting and disconnected). Connections are told
apart by the thread serving them: the ET Phone Home client and :class:`~.agent_server.AgentServer`
both serve each connection on a thread of its own that ends with the connection.

The ledger keeps, per connection, the last reply that carried output; once the connection's
thread has ended without a newer request, that reply is "missed" and handed to the next
read of its session.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

SETTLE = 2.0        # how long a read waits for a late reply on another connection to settle
KEEP = 256          # sessions with missed replies kept (a session reaped unread drops out)


@dataclass
class Delivery:
    """One reply with output, as it was sent."""

    session_id: str
    reply: dict[str, Any]
    thread: threading.Thread
    started: float                    # monotonic: when its request arrived
    sent: float = field(default=0.0)  # monotonic: when the reply was handed back


class DeliveryLedger:
    """Thread-safe. ``caller_timeout``: a reply slower than this may have missed its caller."""

    def __init__(self, caller_timeout: float) -> None:
        self.caller_timeout = caller_timeout
        self._lock = threading.Lock()
        self._last: dict[threading.Thread, Delivery] = {}        # unacknowledged, per connection
        self._inflight: dict[str, dict[threading.Thread, float]] = {}   # session -> thread -> start
        self._missed: dict[str, list[Delivery]] = {}

    def request(self) -> None:
        """A request arrived on this thread's connection: its previous reply was read."""
        with self._lock:
            self._last.pop(threading.current_thread(), None)

    def begin(self, session_id: str) -> float:
        started = time.monotonic()
        with self._lock:
            self._inflight.setdefault(session_id, {})[threading.current_thread()] = started
        return started

    def end(self, session_id: str, started: float, reply: dict[str, Any] | None) -> None:
        """The request begun at ``started`` is answered with ``reply`` (None: an error)."""
        me = threading.current_thread()
        with self._lock:
            running = self._inflight.get(session_id, {})
            running.pop(me, None)
            if not running:
                self._inflight.pop(session_id, None)
            if reply is not None:
                self._last[me] = Delivery(session_id, reply, me, started, time.monotonic())

    def missed(self, session_id: str, settle: float = SETTLE) -> list[Delivery]:
        """Replies of ``session_id`` that missed their caller, oldest first (and forgets them).

        A reply on another connection that took longer than the caller's timeout is the one
        most likely lost; it may still be on its way, or its connection closing, so wait up
        to ``settle`` seconds for it.
        """
        me = threading.current_thread()
        deadline = time.monotonic() + settle
        while True:
            with self._lock:
                self._collect()
                now = time.monotonic()
                unsettled = [t for t, began in self._inflight.get(session_id, {}).items()
                             if t is not me and now - began > self.caller_timeout]
                unsettled += [d.thread for d in self._last.values()
                              if d.session_id == session_id and d.thread is not me
                              and d.sent - d.started > self.caller_timeout]
                if not unsettled or now >= deadline:
                    return self._missed.pop(session_id, [])
            time.sleep(0.05)

    def forget(self, session_id: str) -> None:
        """The session is closed: nothing of it can be read any more."""
        with self._lock:
            self._missed.pop(session_id, None)
            for t in [t for t, d in self._last.items() if d.session_id == session_id]:
                del self._last[t]

    def _collect(self) -> None:
        for thread in [t for t in self._last if not t.is_alive()]:
            d = self._last.pop(thread)
            self._missed.setdefault(d.session_id, []).append(d)
        while len(self._missed) > KEEP:                  # oldest first (insertion order)
            del self._missed[next(iter(self._missed))]
