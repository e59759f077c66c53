"""Liveness: every hop and every target is probed with a request that must be answered.

paramiko's own keepalive asks for no reply, so a silently dropped path (a firewall that
drops, a pulled cable, a VPN gone: no RST) is noticed only when the kernel's TCP
retransmissions give up, about 15 minutes later. Like OpenSSH's ``ServerAliveInterval`` /
``ServerAliveCountMax``, a :class:`Link` sends a ``keepalive@openssh.com`` global request
with want-reply every ``interval`` seconds. sshd answers it (with a failure, as it knows no
such request: any answer proves the peer and the path alive). When no answer has come for
``interval × count`` seconds the link is declared down and its transport closed, which
closes every channel and every hop tunneled through it: a session blocked in a read wakes
at once and names the link that failed.

Blame goes to the outermost silent link. When an inner link (a target, a second hop) goes
silent, the links outside it are probed at once, and the inner one is declared down only
when they have answered since; a silent outer hop is declared down itself, and takes the
inner links with it under its own name.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)

PROBE = "keepalive@openssh.com"     # what OpenSSH's ServerAlive sends
TICK = 0.2                          # how often the watcher looks at every link


class Link:
    """One SSH connection of a chain (a hop or the target) and its liveness probe."""

    def __init__(self, kind: str, name: str, label: str, transport: Any, *, interval: float,
                 count: int, outer: Sequence["Link"] = (),
                 on_down: Callable[[], None] | None = None) -> None:
        self.kind = kind                 # "hop" | "target"
        self.name = name                 # inventory name
        self.label = label               # name (user@host:port)
        self.transport = transport
        self.interval = float(interval)
        self.count = max(1, int(count))
        self.outer = tuple(outer)        # the hops before it, first hop first
        self.on_down = on_down
        self.down: str | None = None     # why it was declared down
        self.answers = 0
        self.last_answer = time.monotonic()
        self._suspect_since: float | None = None
        self._unanswered_logged = False
        self._cond = threading.Condition()
        self._kick = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> "Link":
        if self.interval > 0:
            self._thread = threading.Thread(target=self._run, name=f"phj-alive-{self.name}",
                                            daemon=True)
            self._thread.start()
            _watcher.add(self)
        return self

    def stop(self) -> None:
        """Stop probing (the connection is being closed on purpose)."""
        self._stop.set()
        self._kick.set()
        _watcher.discard(self)

    def _run(self) -> None:
        t = self.transport
        while not self._stop.is_set() and t.is_active():
            self._kick.clear()
            try:
                t.global_request(PROBE, wait=True)   # returns on the answer or when t dies
            except Exception:   # the transport is going down under us
                break
            if self._stop.is_set() or not t.is_active():
                break
            with self._cond:
                self.last_answer = time.monotonic()
                self.answers += 1
                self._cond.notify_all()
            self._kick.wait(self.interval)

    # -- state --------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self.down is None and bool(self.transport.is_active())

    def failure(self) -> str | None:
        """Why this link is unusable (declared down, or its connection closed), else None."""
        if self.down:
            return self.down
        if not self.transport.is_active():
            return (f"{self.kind} {self.name!r} ({self.label}) closed the connection "
                    "(its sshd or the host went away)")
        return None

    def kick(self) -> None:
        """Probe now instead of at the next interval (no-op while a probe is outstanding)."""
        self._kick.set()

    def check(self, timeout: float) -> bool:
        """Probe now and wait up to ``timeout`` for an answer; False if none came."""
        if self.failure():
            return False
        if self.interval <= 0:           # not probed: ask once, here
            box: list[bool] = []
            th = threading.Thread(target=lambda: box.append(
                self.transport.global_request(PROBE, wait=True) is not None
                or self.transport.is_active()), daemon=True)
            th.start()
            th.join(timeout)
            return bool(box and box[0])
        start = time.monotonic()
        self.kick()
        with self._cond:
            return self._cond.wait_for(
                lambda: self.last_answer >= start or not self.transport.is_active(),
                timeout) and self.transport.is_active()

    def declare_down(self, why: str) -> None:
        with self._cond:                  # the watcher and an open's diagnosis may race here
            if self.down is not None:
                return
            self.down = f"{self.kind} {self.name!r} ({self.label}) {why}"
        log.warning("%s", self.down)
        _watcher.discard(self)
        self._stop.set()
        self._kick.set()
        # closing can block on a dead path (a channel close goes out over it): not here
        threading.Thread(target=self._close, name=f"phj-down-{self.name}", daemon=True).start()

    def _close(self) -> None:
        try:
            if self.on_down is not None:
                self.on_down()
            else:
                self.transport.close()
        except Exception:   # already gone
            log.debug("closing %s", self.label, exc_info=True)

    # -- the watcher's decision ------------------------------------------------------------
    def _tick(self, now: float) -> None:
        if self.down is not None or self.interval <= 0:
            return
        if not self.transport.is_active():
            _watcher.discard(self)
            return
        limit = self.interval * self.count
        if now - self.last_answer < limit:
            self._suspect_since = None
            return
        if self.answers == 0 and not any(o.failure() for o in self.outer):
            # never answered, not even the first probe (sent at once): a server that ignores
            # global requests, not a dead one. Declaring it down would kill healthy sessions.
            if not self._unanswered_logged:
                self._unanswered_logged = True
                log.warning("%s %r (%s) has not answered any keepalive request; a silent drop "
                            "of it cannot be detected (set keepalive: 0 to stop probing it)",
                            self.kind, self.name, self.label)
            return
        if self._suspect_since is None:
            self._suspect_since = now
            for o in self.outer:
                o.kick()
        if any(o.failure() for o in self.outer):
            return                       # an outer hop failed: it closes this one, and is blamed
        pending = [o for o in self.outer
                   if o.interval > 0 and o.last_answer < self._suspect_since]
        if pending and now - self._suspect_since < max(o.interval * o.count for o in pending) + 1:
            return                       # wait for the hops outside to answer (or be blamed)
        self.declare_down(f"stopped answering: no reply to {self.count} keepalive"
                          f"{'s' * (self.count != 1)} in {limit:g}s (a silent drop on the "
                          "path: firewall, cable, VPN, or the host hung)")


def first_failure(links: Sequence[Link]) -> str | None:
    """The outermost link that failed, if any."""
    for link in links:
        if (why := link.failure()) is not None:
            return why
    return None


class _Watcher:
    """One thread that checks every probed link's silence against its limit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._links: set[Link] = set()
        self._thread: threading.Thread | None = None

    def add(self, link: Link) -> None:
        with self._lock:
            self._links.add(link)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="phj-liveness",
                                                daemon=True)
                self._thread.start()

    def discard(self, link: Link) -> None:
        with self._lock:
            self._links.discard(link)

    def _loop(self) -> None:
        while True:
            time.sleep(TICK)
            with self._lock:
                links = list(self._links)
            now = time.monotonic()
            for link in links:
                try:
                    link._tick(now)
                except Exception:   # one odd link must not stop the watching of the others
                    log.exception("liveness check of %s", link.label)


_watcher = _Watcher()
