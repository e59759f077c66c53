"""The session manager: the one core API every adapter (CLI, MCP, agent, workflows) calls.

It opens sessions by inventory name through shared hop connections, hands out ids, and
owns their lifecycle: limits per host, per owner (client) and in total, the idle timeout, a
longer limit for sessions whose command runs unattended, and dead detection (a hop that goes
down marks every session that runs through it). A closed session is remembered for a while,
so a late call on it hears who closed it.

Safety lives here too, so that every entry point (MCP, CLI, workflows, the agent) gets it
the same way: the inventory's command policy is checked before a command or a line-ending
send goes out, and every open, close, command, send and refusal is written to the audit log
(fail closed: no audit, no command) when one is configured.
"""

from __future__ import annotations

import logging
import random
import secrets
import shlex
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .audit import AuditLog, AuditSpec
from .callstate import caller_gone
from .chain import Hop, HopPool, diagnose, dial, early_eof, login_gate, open_tunnel
from .errors import (CallAbandonedError, ConnectError, LimitError, PatternTimeoutError,
                     PhonehomeJumpError, PolicyError, SessionBusyError, SessionDeadError,
                     SessionError, UnknownSessionError)
from .inputs import check_text
from .inventory import Inventory, Target
from .policy import Approval
from .prompts import prompt_waiting
from .redact import MASK, add_secret
from .output import default_memory
from .framing import SENTINEL_DEVICE_TYPES
from .login import Login
from .session import DEFAULT_CAP, CommandResult, Session, compile_pattern
from .transfer import TransferResult, download, upload

if TYPE_CHECKING:
    from .modes import ConfigResult
    from .parsing import ParseResult

log = logging.getLogger(__name__)

# Why a session was closed, as later calls on it are told ("session ... is closed: <why>").
BY_OWNER = "closed by this client"
BY_SHUTDOWN = "closed at server shutdown"
BY_DISCONNECT = "closed because its client disconnected"
HANGUP = (BY_SHUTDOWN, BY_DISCONNECT)   # these close like a dropped connection: no logout
REMEMBER_CLOSED = 4096        # closed ids remembered for "closed by whom" answers
LOGOUT_WAIT = 2.0             # seconds a shell at its prompt gets to log out on close
TEARDOWN_WORKERS = 16         # sessions closed side by side by the reaper or a close_all


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
    actor: str | None = None  # who opened it, as the audit log names them
    mode: str | None = None   # network devices: the CLI mode the last prompt showed

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Entry:
    id: str
    session: Session
    hops: list[Hop]
    created: float
    owner: str | None
    actor: str | None = None
    pending: str | None = None    # a command still running: audited when it ends
    typed: str = ""               # typed at the prompt without Enter yet (checked on Enter)


class SessionManager:
    """Owns sessions and the hop pool. Thread-safe."""

    def __init__(self, inventory: Inventory, *, max_sessions: int | None = None,
                 max_per_host: int | None = None, max_per_client: int | None = None,
                 idle_timeout: float | None = None, running_timeout: float | None = None,
                 cap: int = DEFAULT_CAP, audit_path: str | None = None,
                 actor: str | None = None, output_memory: int | None = None,
                 share_logins: bool = True) -> None:
        """Limits left None come from the inventory's ``limits:`` section (or its defaults).

        ``share_logins``: POSIX sessions of one host, owner and actor share an SSH login (a
        channel each, like OpenSSH's ControlMaster), where the host's ``share_login`` (default
        true) allows it; False gives every session its own login.
        """
        self.inventory = inventory
        limits = inventory.limits
        # the inventory's `audit:` section; audit_path (CLI --audit-log) overrides its path
        spec = inventory.audit or (AuditSpec(path=audit_path) if audit_path else None)
        self.audit = AuditLog.from_spec(spec, audit_path) if spec else None
        self.actor = actor          # who acts, for the audit log, unless open() names another
        self.pool = HopPool()
        self.max_sessions = limits.max_sessions if max_sessions is None else max_sessions
        self.max_per_host = limits.max_per_host if max_per_host is None else max_per_host
        self.max_per_client = limits.max_per_client if max_per_client is None else max_per_client
        self.idle_timeout = limits.idle_timeout if idle_timeout is None else idle_timeout
        self.running_timeout = (limits.running_timeout if running_timeout is None
                                else running_timeout)
        self.cap = cap
        self._closed: OrderedDict[str, tuple[str | None, str]] = OrderedDict()  # id -> owner, why
        # characters of one command's output a session keeps in memory; the rest goes to a
        # private temporary file (None: $PHONEHOME_JUMP_OUTPUT_MEMORY or 4,000,000)
        self.output_memory = output_memory if output_memory is not None else default_memory()
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._opening: dict[str, int] = {}       # host -> opens in flight (count toward limits)
        self._opening_by: dict[str | None, int] = {}   # owner -> opens in flight
        self._claimed: set[str] = set()          # caller-chosen ids of opens in flight
        self.share_logins = share_logins
        # (host, owner, actor) -> logins its POSIX sessions share; a login in flight
        self._logins: dict[tuple[str, str | None, str | None], list[Login]] = {}
        self._logging_in: dict[tuple[str, str | None, str | None], threading.Event] = {}
        self._reaper: threading.Thread | None = None
        self._stop = threading.Event()

    # -- open / close -----------------------------------------------------------------
    def open(self, host: str, *, owner: str | None = None, framing: str | None = None,
             session_id: str | None = None, actor: str | None = None) -> SessionInfo:
        """Open a session to inventory host ``host``.

        ``session_id`` is a caller-chosen id (the agent's restore reopens a session under its
        old id); it is refused with SessionError while a session (or an open) already has it.
        ``actor`` names who acts in the audit log (default: the manager's actor).
        """
        check_text(session_id, "session_id", where=f"host {host!r}")
        target = self.inventory.target(host)   # UnknownNameError with suggestions
        actor = actor or self.actor
        chain = [h.name for h in target.chain]
        if self.audit:
            self.audit.check()
        created = time.time()
        if session_id is not None:
            self._claim(session_id, target)
        try:
            self._reserve(target, owner)
        except BaseException:
            self._unclaim(session_id)
            raise
        hops: list[Hop] = []
        try:
            hops, session = self._connect(target, framing, (owner, actor))
            if caller_gone():       # nobody would ever learn this session's id
                session.close("its caller gave up while it opened")
                raise CallAbandonedError("the caller gave up while the session opened; it was "
                                         "closed again", where=f"host {target.name!r}")
        except BaseException as exc:
            self.pool.release(hops)
            self._unreserve(target.name, owner)
            self._unclaim(session_id)
            self.record("open", actor=actor, host=target.name, chain=chain, outcome="error",
                        error=str(exc) if isinstance(exc, PhonehomeJumpError) else type(exc).__name__,
                        duration=round(time.time() - created, 4), strict=False)
            raise
        entry = _Entry(session_id or _new_id(), session, hops, created, owner, actor)
        with self._lock:
            self._opening[target.name] -= 1
            self._done_opening(owner)
            self._claimed.discard(entry.id)
            self._entries[entry.id] = entry
        log.info("session %s opened to %s via %s", entry.id, target.name,
                 " → ".join(chain) or "direct")
        self._record(entry, "open", outcome="ok", cwd=session.cwd,
                     duration=round(time.time() - created, 4))
        if self.audit:
            self.audit.transcript(entry.id, f"# session {entry.id} to {target.name} via "
                                  f"{' -> '.join(chain) or 'direct'}, actor {actor or '-'}\n")
        return self._info(entry)

    def _connect(self, target: Target, framing: str | None,
                 who: tuple[str | None, str | None]) -> tuple[list[Hop], Session]:
        """Hops (shared), a tunnel and a login to ``target``; the failure blamed on the right hop.

        Logins to one target are paced (a stock sshd drops new connections at random past
        MaxStartups), and a login the target cut before authentication is retried with
        backoff; when it keeps happening the error says the target refused new connections.
        """
        hops = self.pool.acquire(target.chain)
        ep = target.endpoint
        deadline = time.monotonic() + max(ep.connect_timeout, 3.0)
        attempt = 0
        try:
            while True:
                attempt += 1
                try:
                    return hops, self._session(target, hops, framing, who)
                except ConnectError as exc:
                    if exc.hop != target.name or exc.reason in (
                            "auth", "host-key", "local-file", "refused", "forwarding", "dns"):
                        raise
                    if hops and (blame := diagnose(hops, target.name)) is not None:
                        raise blame from exc
                    pause = min(0.1 * 2 ** (attempt - 1), 1.0) * (0.5 + random.random())
                    early = exc.reason == "closed" and early_eof(exc)
                    if not early or time.monotonic() + pause > deadline:
                        if early and attempt > 1:
                            raise ConnectError(
                                f"{target.name} refused new connections: it closed {attempt} "
                                "connections in a row before login", hop=target.name,
                                reason="busy", where=exc.where,
                                hint="sshd does this while too many logins to it are in progress "
                                     "at once (MaxStartups, 10:30:100 by default) or when it is "
                                     "overloaded: open fewer sessions at once, retry later, or "
                                     "raise MaxStartups on the target") from exc
                        raise
                    log.info("%s closed a new connection before login (attempt %d); retrying "
                             "in %.2fs", target.name, attempt, pause)
                    time.sleep(pause)
                except SessionError as exc:
                    if hops and (blame := diagnose(hops, target.name)) is not None:
                        raise blame from exc
                    raise
        except BaseException:
            self.pool.release(hops)
            raise

    def _session(self, target: Target, hops: list[Hop], framing: str | None,
                 who: tuple[str | None, str | None]) -> Session:
        """A shell on ``target``: on a login of the same host, owner and actor when one has
        room (the server refuses a channel past its MaxSessions: then a login of its own).

        ``who`` is (owner, actor): MCP clients differ in both; through an ET Phone Home
        agent, which has no owners, the actor still names the client."""
        links = [h.link for h in hops if h.link is not None]
        posix = (framing or ("sentinel" if target.device_type in SENTINEL_DEVICE_TYPES
                             else "native")) == "sentinel"
        if not (self.share_logins and posix and target.share_login):
            return self._login(target, hops, framing, links)
        key = (target.name, *who)
        deadline = time.monotonic() + target.endpoint.connect_timeout
        while True:
            login, mine = self._shared_login(key, deadline)
            if login is not None:
                session = Session.attach(login, cap=self.cap, links=links, memory=self.output_memory)
                if session is not None:
                    return session
                continue                        # that login is full: another, or a new one
            try:
                session = self._login(target, hops, framing, links)
                with self._lock:
                    self._logins.setdefault(key, []).append(session.login)
                return session
            finally:
                if mine:                        # whoever waited for this login looks again
                    with self._lock:
                        self._logging_in.pop(key).set()

    def _shared_login(self, key: tuple[str, str | None, str | None],
                      deadline: float) -> tuple[Login | None, bool]:
        """A login of ``key`` with room for one more session (counted), waiting for one in
        flight; or (None, True): log in, others wait for it; (None, False): log in, alone."""
        while True:
            with self._lock:
                logins = self._logins.get(key, [])
                logins[:] = [x for x in logins if x.users > 0 and not x.full and x.alive]
                for login in logins:
                    if login.share():
                        return login, False
                if not logins:
                    self._logins.pop(key, None)
                flight = self._logging_in.get(key)
                if flight is None:
                    self._logging_in[key] = threading.Event()
                    return None, True
            if not flight.wait(max(deadline - time.monotonic(), 0.0)):
                return None, False

    def _login(self, target: Target, hops: list[Hop], framing: str | None,
               links: list[Any]) -> Session:
        # sshd counts a connection against MaxStartups from accept to authentication: the
        # gate is held from the tunnel's open until Session.start says it has logged in
        gate = login_gate(target.chain, target.endpoint)
        gate.acquire()
        held = [True]

        def logged_in() -> None:
            if held:
                held.clear()
                gate.release()
        try:
            sock = (open_tunnel(hops[-1].transport, target.endpoint, target.chain[-1]) if hops
                    else dial(target.endpoint))
            try:
                return Session.start(target, sock, cap=self.cap, framing=framing, links=links,
                                     logged_in=logged_in, memory=self.output_memory)
            except BaseException:
                sock.close()
                raise
        finally:
            logged_in()

    def _reserve(self, target: Target, owner: str | None) -> None:
        """Count an open in flight against the limits, or refuse naming whose limit it is."""
        with self._lock:
            open_total = len(self._entries) + sum(self._opening.values())
            on_host = sum(1 for e in self._entries.values() if e.session.target.name == target.name)
            on_host += self._opening.get(target.name, 0)
            mine = sum(1 for e in self._entries.values() if e.owner == owner)
            mine += self._opening_by.get(owner, 0)
            yours = f"{mine} of them yours" if owner is not None else ""
            where = f"host {target.name!r}"
            if owner is not None and mine >= self.max_per_client:
                raise LimitError(f"this client has {mine} sessions open, its own limit is "
                                 f"{self.max_per_client} (limits.max_per_client)", where=where,
                                 hint="close sessions you no longer need (ssh_session_list "
                                      "shows yours)")
            if on_host >= self.max_per_host:
                raise LimitError(f"{on_host} sessions are open to this host ({yours or 'all'}); "
                                 f"the per-host limit is {self.max_per_host} "
                                 "(limits.max_per_host)", where=where,
                                 hint="reuse or close one of your sessions to this host" if mine
                                 else "other clients hold them: retry later, or ask the "
                                      "server's operator to raise limits.max_per_host")
            if open_total >= self.max_sessions:
                raise LimitError(f"{open_total} sessions are open on this server "
                                 f"({yours or 'all clients'}); the server-wide limit is "
                                 f"{self.max_sessions} (limits.max_sessions)", where=where,
                                 hint="close sessions you no longer need (list them first)" if mine
                                 else "other clients hold them: retry later, or ask the "
                                      "server's operator to raise limits.max_sessions")
            self._opening[target.name] = self._opening.get(target.name, 0) + 1
            self._opening_by[owner] = self._opening_by.get(owner, 0) + 1

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

    def _unreserve(self, name: str, owner: str | None) -> None:
        with self._lock:
            self._opening[name] -= 1
            self._done_opening(owner)

    def _done_opening(self, owner: str | None) -> None:
        """One open of ``owner`` is no longer in flight (called under the lock)."""
        left = self._opening_by[owner] - 1
        if left:
            self._opening_by[owner] = left
        else:                                   # no entry per client ever seen
            del self._opening_by[owner]

    def revive(self, session_id: str, *, owner: str | None = None) -> SessionInfo:
        """Reopen a dead (or ended) session under the same id, in its last working directory.

        The hops are dialed anew where they went down; the new shell starts where the old one
        last was (``cd`` to its cwd). Variables and running jobs of the old shell are gone.
        Refused (SessionError) while the session is alive.
        """
        entry = self._entry(session_id, owner)
        self._check_hops(entry)
        old = entry.session
        if not old.dead:
            raise SessionError("the session is alive: there is nothing to revive",
                               where=f"host {old.target.name!r}",
                               hint="use it as it is; revive is for a session whose shell or hop "
                                    "went away")
        with self._lock:
            if entry.id in self._claimed:
                raise SessionError(f"session {entry.id!r} is already being revived",
                                   where=f"host {old.target.name!r}",
                                   hint="wait for that call to finish, then use the session")
            self._claimed.add(entry.id)
        try:
            if self.audit:
                self.audit.check()
            target, cwd, started = old.target, old.cwd, time.time()
            try:
                hops, session = self._connect(target, old.framer.name, (entry.owner, entry.actor))
            except PhonehomeJumpError as exc:
                self._record(entry, "revive", outcome="error", error=str(exc))
                raise
            restored = None
            if cwd and session.framer.name == "sentinel":
                r = session.command(f"cd -- {shlex.quote(cwd)}", wait=target.endpoint.connect_timeout)
                restored = r.exit_status == 0 and not r.running
            with self._lock:
                mine = self._entries.get(entry.id) is entry
                if mine:
                    old_hops, entry.hops, entry.session = entry.hops, hops, session
                    unfinished, entry.pending, entry.typed = entry.pending, None, ""
        finally:
            self._unclaim(entry.id)
        if not mine:                            # closed while it was being revived
            session.close()
            self.pool.release(hops)
            self._entry(session_id, owner)      # UnknownSessionError, as for any closed id
            raise SessionError(f"session {session_id!r} was closed while it was being revived")
        old.close()
        self.pool.release(old_hops)
        if unfinished is not None:              # the command that was running when it died
            self._record(entry, "command", command=unfinished, outcome="unfinished")
        log.info("session %s to %s revived in %s", entry.id, target.name, session.cwd)
        self._record(entry, "revive", outcome="ok", cwd=session.cwd, previous=old.dead,
                     cwd_restored=restored, duration=round(time.time() - started, 4))
        if restored is False:
            log.warning("session %s: could not return to %s (%s is where the shell started)",
                        entry.id, cwd, session.cwd)
        return self._info(entry)

    def close(self, session_id: str, *, owner: str | None = None, why: str = BY_OWNER) -> None:
        """Close a session; ``why`` is what later calls on it are told (who closed it)."""
        self._entry(session_id, owner)          # unknown or not the caller's: the usual error
        with self._lock:
            entry = self._entries.pop(session_id, None)
        if entry is not None:                   # None: a concurrent close (or the reaper) won
            self._teardown(entry, "closed", why)

    def close_all(self, why: str = BY_SHUTDOWN, *, hops: bool = True) -> None:
        """Close every session (and, with ``hops``, the hop connections: :meth:`shutdown`)."""
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
        self._teardown_all([(entry, "closed", why) for entry in entries])
        if hops:
            self.pool.close_all()

    def _teardown_all(self, closing: list[tuple[_Entry, str, str]]) -> None:
        """Tear several sessions down. Logouts go side by side: each may take up to
        LOGOUT_WAIT (a slow ~/.bash_logout), and one after another they added up. Hangups
        (a shutdown, a vanished client) are quick and go in turn, also at interpreter exit,
        where no new thread may start."""
        if len(closing) <= 1 or all(why in HANGUP for _, _, why in closing):
            for args in closing:
                self._teardown(*args)
            return
        pool = ThreadPoolExecutor(min(TEARDOWN_WORKERS, len(closing)), thread_name_prefix="phj-close")
        futures = []
        try:
            for args in closing:
                futures.append(pool.submit(self._teardown, *args))
        except RuntimeError:        # the interpreter is exiting: the rest in turn, here
            for args in closing[len(futures):]:
                self._teardown(*args)
        finally:
            pool.shutdown(wait=True)
        for done in futures:
            done.result()           # (the first failure is raised once all have ended)

    def _teardown(self, entry: _Entry, outcome: str, why: str) -> None:
        with self._lock:
            self._closed[entry.id] = (entry.owner, why)
            while len(self._closed) > REMEMBER_CLOSED:
                self._closed.popitem(last=False)
        # a close asked for logs the shell out (~/.bash_logout); a shutdown or a client that
        # vanished hangs up at once, as a dropped connection would
        entry.session.close(why, logout=0.0 if why in HANGUP else LOGOUT_WAIT)
        self.pool.release(entry.hops)
        log.info("session %s to %s %s", entry.id, entry.session.target.name, why)
        if entry.pending is not None:
            self._record(entry, "command", command=entry.pending, outcome="unfinished")
        self._record(entry, "close", outcome=outcome, by=why)

    # -- operations -------------------------------------------------------------------
    def session(self, session_id: str, *, owner: str | None = None) -> Session:
        """The live session, or SessionDeadError naming the hop that went down."""
        entry = self._entry(session_id, owner)
        self._check_hops(entry)
        if entry.session.dead:
            raise entry.session._dead_error()
        return entry.session

    def command(self, session_id: str, command: str, *, owner: str | None = None,
                wait: float = 20.0, until: str | None = None,
                confirm: bool | Approval = False) -> CommandResult:
        """Run ``command`` (policy-checked, audited); see :meth:`Session.command`.

        ``confirm``: an :class:`Approval` (who approved, how, when) passes the policy's confirm
        rules and is audited; ``True`` is an approval by this manager's caller (see
        :func:`default_approval`).
        """
        entry = self._entry(session_id, owner)
        where = f"host {entry.session.target.name!r}"
        check_text(command, "command", where=where)     # refused before anything runs
        check_text(until, "until", where=where)
        compile_pattern(until)                  # a bad pattern is refused before anything runs
        self._check_policy(entry, command, confirm=confirm, at_prompt=True)
        if self.audit:
            self.audit.check()
        busy = entry.session.running            # then the session refuses it: nothing is sent
        if not busy:
            entry.pending = command
        try:
            result = self._guard(session_id, owner,
                                 lambda s: s.command(command, wait=wait, until=until))
        except (SessionBusyError, CallAbandonedError):
            if not busy:                        # refused before anything was sent
                entry.pending = None
            raise
        except PatternTimeoutError:
            raise                               # sent and still running: audited when it ends
        except PhonehomeJumpError as err:
            if not busy:                        # sent, and the session died under it (reboot)
                entry.pending = None
                self._record(entry, "command", command=command, outcome="error", error=err.what)
            raise
        self._finished(entry, result, command)
        return result

    def send(self, session_id: str, text: str = "", *, owner: str | None = None, newline: bool = True,
             control: str | None = None, secret: bool = False, confirm: bool | Approval = False,
             sudo_password: bool = False) -> None:
        """Type raw text; a line-ending send is policy-checked like a command.

        ``sudo_password``: type the inventory's sudo password for this host (resolved now,
        sent as a secret), so a caller can answer a sudo prompt without ever knowing it.
        """
        entry = self._entry(session_id, owner)
        where = f"host {entry.session.target.name!r}"
        check_text(text, "text", where=where)
        check_text(control, "control", where=where)
        if not text and not sudo_password and (control == "" or (control is None and not newline)):
            return          # nothing to type: a no-op changes nothing (and is not audited)
        control = control or None
        # Decided from fresh output, not from what the last read saw: this takes in whatever
        # arrived since (a command that has ended, the prompt after a Ctrl-C or an Enter).
        fresh = self._guard(session_id, owner, lambda s: s.fresh_input())
        # typed without Enter, a line leaves the session "running" (typed input), yet the
        # shell is still at its prompt: the rest of that line is still a command line
        running = entry.session.running and not entry.typed
        if (secret or sudo_password) and not (running and fresh and prompt_waiting(*fresh)):
            # typed at the prompt (or buffered for the shell while a command that reads
            # nothing runs), a secret would run as a command line (history, logs, argv)
            why = ("no command is running" if not running or fresh is None else
                   "the running command's newest output does not end in a prompt")
            raise SessionError(f"{why}, so the secret was not typed: it could reach the shell "
                               "prompt and run as a command",
                               where=f"host {entry.session.target.name!r}",
                               hint="run the command that asks for it first, then send the "
                                    "secret while it waits at its prompt (awaiting_input)")
        if sudo_password:
            target = entry.session.target
            ref = target.endpoint.auth.sudo_password
            if ref is None:
                raise SessionError("the inventory has no sudo_password for this host",
                                   where=f"host {target.name!r}",
                                   hint="add sudo_password: env:VAR (or file:PATH) to its "
                                        "credentials, or answer the prompt with a secret send")
            text, secret = ref.resolve(f"host {target.name!r} sudo_password"), True
        if secret:
            add_secret(text)    # before anything can echo it (a refusal message included)
        # the session sends "\n" for an empty text unless a control key goes instead
        ends_line = "\n" in text or "\r" in text or (newline and bool(text or not control))
        # At the prompt a line may be typed in pieces (newline=False, then Enter): the policy
        # sees the whole line, whatever pieces it came in.
        line = (entry.typed + text) if not running else text
        if ends_line:
            self._check_policy(entry, line, confirm=confirm, at_prompt=not running, secret=secret)
        if self.audit:
            self.audit.check()
        self._guard(session_id, owner, lambda s: s.send(text, newline=newline, control=control,
                                                          secret=secret))
        if not running:
            if ends_line and entry.pending is None and line.strip():
                entry.pending = line.strip()    # a command typed at the prompt: audit its end
            # Ctrl-C/Ctrl-U discard the typed line (the session makes sure of it)
            key = control.lower().removeprefix("ctrl-").removeprefix("^") if control else None
            entry.typed = "" if ends_line or key in ("c", "u") else entry.typed + text
        shown = MASK if secret else text
        self._record(entry, "send", command=shown if text else None,
                     control=control, outcome="sent")
        if self.audit:
            self.audit.transcript(entry.id, f"» {shown}{' ^' + control if control else ''}\n")

    def read(self, session_id: str, *, owner: str | None = None, wait: float = 0.0,
             until: str | None = None, offset: int | None = None) -> CommandResult:
        entry = self._entry(session_id, owner)
        if offset is not None:      # paging a finished output works even on a dead session
            return entry.session.read(offset=offset)
        check_text(until, "until", where=f"host {entry.session.target.name!r}")
        compile_pattern(until)
        result = self._guard(session_id, owner, lambda s: s.read(wait=wait, until=until))
        self._finished(entry, result, None)
        return result

    # -- network devices: modes, configuration blocks, parsed output ---------------------
    def enable(self, session_id: str, *, owner: str | None = None, wait: float = 20.0) -> CommandResult:
        """Network device: enter the privileged mode with the inventory's enable_secret."""
        from .modes import enable
        return enable(self, session_id, self._entry(session_id, owner).session.target,
                      owner=owner, wait=wait)

    def config(self, session_id: str, lines: list[str], *, owner: str | None = None,
               commit: bool = False, wait: float = 20.0, confirm: bool = False,
               stop_on_error: bool = True) -> ConfigResult:
        """Network device: apply configuration lines (policy-checked first, errors detected).

        See :func:`phonehome_jump.modes.apply_config`.
        """
        from .modes import apply_config
        session = self._entry(session_id, owner).session
        return apply_config(self, session_id, session.target, lines, owner=owner, commit=commit,
                            wait=wait, confirm=confirm, stop_on_error=stop_on_error,
                            mode=session.mode)

    def parse(self, session_id: str, command: str, *, owner: str | None = None,
              wait: float = 20.0, confirm: bool = False) -> ParseResult:
        """Run ``command`` and parse its output with TextFSM / ntc-templates (rows of fields)."""
        from .parsing import parse_result
        session = self._entry(session_id, owner).session
        result = self.command(session_id, command, owner=owner, wait=wait, confirm=confirm)
        if result.truncated and not result.running:   # parse all of it, not the capped view
            result = CommandResult(**{**result.__dict__, "output": session.output_text(),
                                      "truncated": False, "omitted": None})
        return parse_result(session.target.device_type, result, host=session.target.name)

    # -- files ------------------------------------------------------------------------
    def upload(self, host: str, local: str, remote: str, *, actor: str | None = None,
               confirm: bool | Approval = False, resume: bool = False, preserve: bool = True,
               progress: Any = None, max_bytes: int | None = None) -> TransferResult:
        """Copy local file ``local`` to ``remote`` on inventory host ``host`` (see transfer.py)."""
        return self._transfer("upload", host, local, remote, actor=actor, confirm=confirm,
                              resume=resume, preserve=preserve, progress=progress,
                              max_bytes=max_bytes)

    def download(self, host: str, remote: str, local: str, *, actor: str | None = None,
                 confirm: bool | Approval = False, resume: bool = False, preserve: bool = True,
                 progress: Any = None, max_bytes: int | None = None) -> TransferResult:
        """Copy ``remote`` on inventory host ``host`` to local path ``local``."""
        return self._transfer("download", host, local, remote, actor=actor, confirm=confirm,
                              resume=resume, preserve=preserve, progress=progress,
                              max_bytes=max_bytes)

    def _transfer(self, direction: str, host: str, local: str, remote: str, *,
                  actor: str | None, confirm: bool | Approval, **kw: Any) -> TransferResult:
        target = self.inventory.target(host)
        # the remote path travels as UTF-8 text (a local one may hold any bytes: the OS's)
        check_text(str(remote), "remote path", where=f"host {target.name!r}")
        actor = actor or self.actor
        chain = [h.name for h in target.chain]
        what = f"{direction} {remote}"
        approval = default_approval(confirm, actor)
        if approval is not None and approval.command is not None and approval.command != what:
            approval = None         # a person approved another copy than this one
        try:
            target.policy.check_transfer(direction, remote, host=target.name,
                                         confirm=approval is not None)
        except PolicyError as err:
            self.record("policy_refusal", strict=False, actor=actor, host=target.name,
                        chain=chain, command=what, rule=err.rule,
                        outcome="needs_confirm" if err.needs_confirm else "refused")
            raise
        rule = target.policy.transfer_confirm_rule(direction, remote, host=target.name)
        if approval is not None and rule is not None:
            self.record("approval", actor=actor, host=target.name, chain=chain, command=what,
                        rule=rule, **{**approval.fields(), "approved_by": approval.by or actor})
        if self.audit:
            self.audit.check()
        started = time.time()
        hops: list[Hop] = []
        try:
            # the target itself joins the shared pool as the chain's last "hop"
            hops = self.pool.acquire((*target.chain, target.endpoint), target=True)
            op = upload if direction == "upload" else download
            args = (local, remote) if direction == "upload" else (remote, local)
            result = op(hops[-1].client, target.name, *args, **kw)
        except BaseException as exc:
            self.record("transfer", strict=False, actor=actor, host=target.name, chain=chain,
                        direction=direction, local=str(local), remote=remote, outcome="error",
                        error=str(exc) if isinstance(exc, PhonehomeJumpError) else type(exc).__name__,
                        duration=round(time.time() - started, 4))
            raise
        finally:
            self.pool.release(hops)
        self.record("transfer", strict=False, actor=actor, host=target.name, chain=chain,
                    direction=direction, local=result.local, remote=result.remote,
                    bytes=result.bytes, sha256=result.sha256, protocol=result.protocol,
                    resumed_from=result.resumed_from, outcome="ok", duration=result.duration)
        log.info("%s %s %s:%s (%d bytes)", direction, result.local, target.name, result.remote,
                 result.bytes)
        return result

    # -- policy and audit ---------------------------------------------------------------
    def _check_policy(self, entry: _Entry, text: str, *, confirm: bool | Approval,
                      at_prompt: bool, secret: bool = False) -> None:
        self.check_policy(entry.session.target, text, confirm=confirm, at_prompt=at_prompt,
                          secret=secret, actor=entry.actor, session_id=entry.id)

    def check_policy(self, target: Target, text: str, *, confirm: bool | Approval,
                     at_prompt: bool, secret: bool = False, actor: str | None = None,
                     session_id: str | None = None) -> None:
        """The target's policy on ``text``; a refusal is audited, then raised (PolicyError).

        An approval that lets the text through a confirm rule is audited (who, how, when)
        before the text goes out; that record fails closed like the action's own.
        Public for the MCP router, which checks routed commands before they leave.
        """
        approval = default_approval(confirm, actor)
        if approval is not None and approval.command is not None and approval.command != text:
            approval = None         # a person approved another line than this one
        chain = [h.name for h in target.chain]
        try:
            target.policy.check(text, host=target.name, confirm=approval is not None,
                                at_prompt=at_prompt, secret=secret)
        except PolicyError as err:
            self.record("policy_refusal", strict=False, actor=actor, host=target.name,
                        chain=chain, session_id=session_id, command=text, rule=err.rule,
                        outcome="needs_confirm" if err.needs_confirm else "refused")
            raise
        if approval is not None:
            rule = target.policy.confirm_rule(text, host=target.name, at_prompt=at_prompt,
                                              secret=secret)
            if rule is not None:
                self.record("approval", actor=actor, host=target.name, chain=chain,
                            session_id=session_id, command=text, rule=rule,
                            **{**approval.fields(), "approved_by": approval.by or actor})

    def approval_needed(self, session_id: str, text: str = "", *, owner: str | None = None,
                        command: bool = False, newline: bool = True, control: str | None = None,
                        secret: bool = False) -> tuple[Target, str, str] | None:
        """(target, rule, line) when only a confirm rule stands between this call and the host.

        ``command``: for :meth:`command` (else for :meth:`send` with these arguments). The
        line is exactly what the policy will check (a line typed in pieces, whole), so an
        :class:`Approval` for it can name it. None: no approval is needed, or none would help.
        """
        entry = self._entry(session_id, owner)
        target = entry.session.target
        if secret and not command:
            return None     # never shown to anyone; at a prompt the guard refuses it anyway
        if command:
            line, at_prompt = text, True
        else:
            running = entry.session.running and not entry.typed
            if not ("\n" in text or "\r" in text or (newline and bool(text or not control))):
                return None                     # no Enter: nothing is checked yet
            line, at_prompt = ((entry.typed + text) if not running else text), not running
        rule = target.policy.confirm_rule(line, host=target.name, at_prompt=at_prompt,
                                          secret=secret)
        return (target, rule, line) if rule is not None else None

    def _finished(self, entry: _Entry, result: CommandResult, command: str | None) -> None:
        """Audit a command once it has ended (now, or on the read that saw its prompt)."""
        if command is not None:
            entry.pending = command
        if result.running or entry.pending is None:
            return
        command, entry.pending = entry.pending, None
        self._record(entry, "command", command=command, exit_status=result.exit_status,
                     bytes=result.total, duration=result.duration, cwd=result.cwd,
                     outcome="ok" if result.exit_status in (0, None) else "failed")
        if self.audit and self.audit.transcripts is not None:
            self.audit.transcript(entry.id, f"$ {command}\n")
            last = ""
            for piece in entry.session.output_pieces():     # bounded memory, however long
                self.audit.transcript(entry.id, piece)
                last = piece
            self.audit.transcript(entry.id, f"{'' if not last or last.endswith(chr(10)) else chr(10)}"
                                  f"# exit {result.exit_status}, cwd {result.cwd}, "
                                  f"{result.duration:.3f}s\n")

    def record(self, event: str, *, strict: bool = True, **fields: Any) -> None:
        """Write an audit record (no-op without an audit log); used by workflows too.

        ``strict``: raise AuditError if it cannot be written (failing closed); records of
        things that already happened (a close, a failure) pass strict=False and only warn.
        """
        if self.audit is None:
            return
        try:
            self.audit.record(event, **fields)
        except PhonehomeJumpError:
            if strict:
                raise
            log.warning("audit record %r not written", event)

    def _record(self, entry: _Entry, event: str, *, strict: bool = False, **fields: Any) -> None:
        # strict=False: the action already happened; audit.check() before it is the gate
        self.record(event, strict=strict, actor=entry.actor, host=entry.session.target.name,
                    chain=[h.name for h in entry.session.target.chain], session_id=entry.id,
                    **fields)

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
        entry.session.check_links()
        if entry.session.dead:
            return
        for hop in entry.hops:                  # a hop without a probe (keepalive: 0)
            if not hop.alive:
                entry.session._die(f"hop {hop.endpoint.name!r} is down")
                return

    def reap(self) -> list[str]:
        """Close sessions nobody used for a while; mark dead ones. Returns closed ids.

        An idle session goes after ``idle_timeout`` without a call; one whose command still
        runs (a forgotten ``tail -f``) after the longer ``running_timeout`` without a call.
        """
        now = time.time()
        expired: list[tuple[_Entry, str, str]] = []
        with self._lock:
            entries = list(self._entries.values())
        for e in entries:
            self._check_hops(e)
            quiet = now - e.session.last_activity
            if e.session.running:
                if quiet <= self.running_timeout:
                    continue
                outcome = "running timeout"
                why = (f"closed by the running-session limit: its command ran {quiet:.0f}s "
                       f"without a call (limits.running_timeout {self.running_timeout:g}s)")
            elif quiet > self.idle_timeout:
                outcome = "idle timeout"
                why = (f"closed by the idle timeout: unused for {quiet:.0f}s "
                       f"(limits.idle_timeout {self.idle_timeout:g}s)")
            else:
                continue
            log.info("session %s: %s", e.id, why)
            with self._lock:
                mine = self._entries.pop(e.id, None) is e
            if mine:                            # not closed meanwhile by its owner
                expired.append((e, outcome, why))
        self._teardown_all(expired)
        return [e.id for e, _, _ in expired]

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
        if self.audit:
            self.audit.close()

    def __enter__(self) -> "SessionManager":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- internals --------------------------------------------------------------------
    def _entry(self, session_id: str, owner: str | None) -> _Entry:
        with self._lock:
            entry = self._entries.get(session_id)
            visible = [e.id for e in self._entries.values() if owner is None or e.owner == owner]
            closed = self._closed.get(session_id) if entry is None else None
        if closed is not None and (owner is None or closed[0] == owner):
            raise UnknownSessionError(
                f"no open session {session_id!r}: it was {closed[1]}", where="session manager",
                hint="open a new session by inventory host name" + (
                    f" (open sessions: {', '.join(visible)})" if visible else ""))
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
                           cwd=s.cwd, framing=s.framer.name, owner=e.owner, dead_reason=s.dead,
                           actor=e.actor, mode=s.mode)


def default_approval(confirm: bool | Approval, actor: str | None) -> Approval | None:
    """``confirm`` as an :class:`Approval`: ``True`` is the caller's own, named by its actor
    (``cli:…`` typed --confirm, ``workflow:…`` is a file's ``confirm: true``)."""
    if isinstance(confirm, Approval) or not confirm:
        return confirm or None
    kind = (actor or "").partition(":")[0]
    via = {"cli": "cli-confirm-flag", "workflow": "workflow-file"}.get(kind, "api")
    return Approval(via, actor)


def _new_id() -> str:
    return "s-" + secrets.token_hex(8)
