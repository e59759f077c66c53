"""The session manager: the one core API every adapter (CLI, MCP, agent, workflows) calls.

It opens sessions by inventory name through shared hop connections, hands out ids, and
owns their lifecycle: limits per host and in total, idle timeout, and dead detection
(a hop that goes down marks every session that runs through it).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from .chain import Hop, HopPool, dial, open_tunnel
from .errors import LimitError, SessionDeadError, SessionError, UnknownSessionError
from .inventory import Inventory, Target
from .session import DEFAULT_CAP, CommandResult, Session

log = logging.getLogger(__name__)


@dataclass
class SessionInfo:
    id: str
    host: str
    chain: list[str]
    created: float
    last_activity: float
    state: str              # idle | running | dead
    cwd: str | None
    framing: str
    owner: str | None
    dead_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Entry:
    id: str
    session: Session
    hops: list[Hop]
    created: float
    owner: str | None


class SessionManager:
    """Owns sessions and the hop pool. Thread-safe."""

    def __init__(self, inventory: Inventory, *, max_sessions: int = 100, max_per_host: int = 25,
                 idle_timeout: float = 1800.0, cap: int = DEFAULT_CAP) -> None:
        self.inventory = inventory
        self.pool = HopPool()
        self.max_sessions = max_sessions
        self.max_per_host = max_per_host
        self.idle_timeout = idle_timeout
        self.cap = cap
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._opening: dict[str, int] = {}       # host -> opens in flight (count toward limits)
        self._claimed: set[str] = set()          # caller-chosen ids of opens in flight
        self._reaper: threading.Thread | None = None
        self._stop = threading.Event()

    # -- open / close -----------------------------------------------------------------
    def open(self, host: str, *, owner: str | None = None, framing: str | None = None,
             session_id: str | None = None) -> SessionInfo:
        """Open a session to inventory host ``host``.

        ``session_id`` is a caller-chosen id (the agent's restore reopens a session under its
        old id); it is refused with SessionError while a session (or an open) already has it.
        """
        target = self.inventory.target(host)   # UnknownNameError with suggestions
        created = time.time()
        if session_id is not None:
            self._claim(session_id, target)
        try:
            self._reserve(target)
        except BaseException:
            self._unclaim(session_id)
            raise
        hops: list[Hop] = []
        try:
            hops = self.pool.acquire(target.chain)
            sock = (open_tunnel(hops[-1].transport, target.endpoint, target.chain[-1]) if hops
                    else dial(target.endpoint))
            session = Session.start(target, sock, cap=self.cap, framing=framing)
        except BaseException:
            self.pool.release(hops)
            self._unreserve(target.name)
            self._unclaim(session_id)
            raise
        entry = _Entry(session_id or _new_id(), session, hops, created, owner)
        with self._lock:
            self._opening[target.name] -= 1
            self._claimed.discard(entry.id)
            self._entries[entry.id] = entry
        log.info("session %s opened to %s via %s", entry.id, target.name,
                 " → ".join(h.name for h in target.chain) or "direct")
        return self._info(entry)

    def _reserve(self, target: Target) -> None:
        with self._lock:
            open_total = len(self._entries) + sum(self._opening.values())
            on_host = sum(1 for e in self._entries.values() if e.session.target.name == target.name)
            on_host += self._opening.get(target.name, 0)
            if open_total >= self.max_sessions:
                raise LimitError(f"{open_total} sessions are open, the limit is {self.max_sessions}",
                                 where=f"host {target.name!r}",
                                 hint="close sessions you no longer need (list them first)")
            if on_host >= self.max_per_host:
                raise LimitError(f"{on_host} sessions are open to this host, the limit is "
                                 f"{self.max_per_host}", where=f"host {target.name!r}",
                                 hint="reuse or close an open session to this host")
            self._opening[target.name] = self._opening.get(target.name, 0) + 1

    def _claim(self, session_id: str, target: Target) -> None:
        if not isinstance(session_id, str) or not session_id.strip():
            raise SessionError("a session id must be a non-empty string",
                               where=f"host {target.name!r}")
        with self._lock:
            if session_id in self._entries or session_id in self._claimed:
                raise SessionError(f"session id {session_id!r} is already in use",
                                   where=f"host {target.name!r}",
                                   hint="use that session, close it first, or open without an id")
            self._claimed.add(session_id)

    def _unclaim(self, session_id: str | None) -> None:
        if session_id is not None:
            with self._lock:
                self._claimed.discard(session_id)

    def _unreserve(self, name: str) -> None:
        with self._lock:
            self._opening[name] -= 1

    def close(self, session_id: str, *, owner: str | None = None) -> None:
        entry = self._entry(session_id, owner)
        with self._lock:
            self._entries.pop(session_id, None)
        self._teardown(entry)

    def close_all(self) -> None:
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
        for entry in entries:
            self._teardown(entry)
        self.pool.close_all()

    def _teardown(self, entry: _Entry) -> None:
        entry.session.close()
        self.pool.release(entry.hops)
        log.info("session %s to %s closed", entry.id, entry.session.target.name)

    # -- operations -------------------------------------------------------------------
    def session(self, session_id: str, *, owner: str | None = None) -> Session:
        """The live session, or SessionDeadError naming the hop that went down."""
        entry = self._entry(session_id, owner)
        self._check_hops(entry)
        if entry.session.dead:
            raise entry.session._dead_error()
        return entry.session

    def command(self, session_id: str, command: str, *, owner: str | None = None,
                wait: float = 20.0, until: str | None = None) -> CommandResult:
        return self._guard(session_id, owner, lambda s: s.command(command, wait=wait, until=until))

    def send(self, session_id: str, text: str = "", *, owner: str | None = None, newline: bool = True,
             control: str | None = None, secret: bool = False) -> None:
        self._guard(session_id, owner, lambda s: s.send(text, newline=newline, control=control,
                                                          secret=secret))

    def read(self, session_id: str, *, owner: str | None = None, wait: float = 0.0,
             until: str | None = None, offset: int | None = None) -> CommandResult:
        entry = self._entry(session_id, owner)
        if offset is not None:      # paging a finished output works even on a dead session
            return entry.session.read(offset=offset)
        return self._guard(session_id, owner, lambda s: s.read(wait=wait, until=until))

    def _guard(self, session_id: str, owner: str | None, op: Any) -> Any:
        session = self.session(session_id, owner=owner)
        try:
            return op(session)
        except SessionDeadError:
            self._check_hops(self._entry(session_id, owner))   # name the hop if one is down
            raise session._dead_error() from None

    def list(self, *, owner: str | None = None) -> list[SessionInfo]:
        with self._lock:
            entries = [e for e in self._entries.values() if owner is None or e.owner == owner]
        for e in entries:
            self._check_hops(e)
        return [self._info(e) for e in sorted(entries, key=lambda e: e.created)]

    # -- health -----------------------------------------------------------------------
    def _check_hops(self, entry: _Entry) -> None:
        if entry.session.dead:
            return
        for hop in entry.hops:
            if not hop.alive:
                entry.session._die(f"hop {hop.endpoint.name!r} is down")
                return
        t = entry.session._chan.get_transport()
        if t is None or not t.is_active() or entry.session._chan.closed:
            entry.session._die("the connection to the target closed")

    def reap(self) -> list[str]:
        """Close sessions idle longer than ``idle_timeout``; mark dead ones. Returns closed ids."""
        now = time.time()
        closed = []
        with self._lock:
            entries = list(self._entries.values())
        for e in entries:
            self._check_hops(e)
            if not e.session.running and now - e.session.last_activity > self.idle_timeout:
                log.info("session %s idle for %.0fs: closing", e.id, now - e.session.last_activity)
                with self._lock:
                    self._entries.pop(e.id, None)
                self._teardown(e)
                closed.append(e.id)
        return closed

    def start_reaper(self, interval: float = 5.0) -> None:
        """Run :meth:`reap` in the background every ``interval`` seconds until :meth:`shutdown`."""
        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.reap()
                except Exception:   # the reaper must outlive one bad session
                    log.exception("session reaper")
        self._reaper = threading.Thread(target=loop, name="phj-reaper", daemon=True)
        self._reaper.start()

    def shutdown(self) -> None:
        self._stop.set()
        self.close_all()

    def __enter__(self) -> "SessionManager":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- internals --------------------------------------------------------------------
    def _entry(self, session_id: str, owner: str | None) -> _Entry:
        with self._lock:
            entry = self._entries.get(session_id)
            visible = [e.id for e in self._entries.values() if owner is None or e.owner == owner]
        if entry is None or (owner is not None and entry.owner != owner):
            raise UnknownSessionError(
                f"no open session {session_id!r}", where="session manager",
                hint=("open sessions: " + ", ".join(visible)) if visible else
                     "no sessions are open; open one by inventory host name")
        return entry

    def _info(self, e: _Entry) -> SessionInfo:
        s = e.session
        return SessionInfo(id=e.id, host=s.target.name, chain=[h.name for h in s.target.chain],
                           created=e.created, last_activity=s.last_activity, state=s.state,
                           cwd=s.cwd, framing=s.framer.name, owner=e.owner, dead_reason=s.dead)


def _new_id() -> str:
    return "s-" + secrets.token_hex(8)
