"""The ET Phone Home agent protocol, client side: :class:`RemoteAgent` speaks to a site's agent.

Used by ``phonehome-jump serve --agent SITE=HOST:PORT`` (:mod:`.routing`); the agent's
errors come back as the package's exceptions of the same kind.
"""

from __future__ import annotations

import itertools
import json
import logging
import select
import socket
import threading
from dataclasses import fields
from typing import Any

from .errors import (AgentError, ConnectError, InventoryError, LimitError, PhonehomeJumpError,
                     SessionError, UnknownSessionError)
from .manager import SessionInfo
from .policy import Approval
from .session import CommandResult
from .wire import INTERNAL_ERROR, INVALID_PARAMS, FrameError, encode, read_frame

log = logging.getLogger(__name__)


class _RemoteError:
    """Mixin: an error the agent replied with; ``str()`` is exactly the agent's message."""

    def __init__(self, message: str, code: int) -> None:
        PhonehomeJumpError.__init__(self, message)   # type: ignore[arg-type]
        self.code = code


class RemoteUnknownSessionError(_RemoteError, UnknownSessionError):
    pass


class RemoteLimitError(_RemoteError, LimitError):
    pass


class RemoteSessionError(_RemoteError, SessionError):
    pass


class RemoteConnectError(_RemoteError, ConnectError):
    hop = "?"          # named in the message; the agent does not send it apart
    reason = "remote"


class RemoteInventoryError(_RemoteError, InventoryError):
    pass


class RemoteError(_RemoteError, PhonehomeJumpError):
    pass


_REMOTE_ERRORS: dict[int, type[_RemoteError]] = {
    UnknownSessionError.code: RemoteUnknownSessionError, LimitError.code: RemoteLimitError,
    SessionError.code: RemoteSessionError, ConnectError.code: RemoteConnectError,
    INVALID_PARAMS: RemoteInventoryError}


def remote_error(code: Any, message: Any) -> PhonehomeJumpError:
    """The agent's ``error`` member as the package's exception of the same kind."""
    code = code if isinstance(code, int) and not isinstance(code, bool) else INTERNAL_ERROR
    cls = _REMOTE_ERRORS.get(code, RemoteError)
    return cls(str(message), code)  # type: ignore[return-value]


_READ_ONLY = frozenset({"ssh_session_list", "inventory_list", "inventory_show"})
_RESULT_FIELDS = tuple(f.name for f in fields(CommandResult))


class _Dropped(Exception):
    """The connection ended before a reply; ``sent`` says whether the request went out."""

    def __init__(self, why: str, sent: bool) -> None:
        super().__init__(why)
        self.sent = sent


class RemoteAgent:
    """A client of one site's agent offering the SessionManager operations the adapters use.

    Thread-safe: each call borrows a connection from a pool (the protocol answers one request
    at a time per connection), so a command waiting on one session never holds up a send or
    a close on another. A pooled connection the agent has closed (restart, tunnel drop) is
    noticed before use and replaced; after such a loss the first new connection asks the
    agent to ``ssh_session_restore``. A request whose connection drops after it was sent is
    not repeated (it may have run), except the read-only ones.
    """

    def __init__(self, site: str, host: str, port: int, *, connect_timeout: float = 5.0,
                 open_timeout: float = 120.0, max_idle: int = 8) -> None:
        self.site, self.host, self.port = site, host, port
        self.connect_timeout = connect_timeout
        self.open_timeout = open_timeout       # a chain of slow hops, each with its own timeout
        self.max_idle = max_idle
        self._idle: list[socket.socket] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._lost = False                     # a connection was lost: restore on the next one
        self._closed = False

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # -- SessionManager-like operations (ids are the agent's own) ----------------------
    def open(self, host: str, *, framing: str | None = None,
             actor: str | None = None) -> SessionInfo:
        params: dict[str, Any] = {"host": host}
        if framing is not None:
            params["framing"] = framing
        if actor is not None:
            params["actor"] = actor
        return _info(self.call("ssh_session_open", params, timeout=self.open_timeout))

    def command(self, session_id: str, command: str, *, wait: float = 20.0,
                until: str | None = None, confirm: bool | Approval = False) -> CommandResult:
        params = {"session_id": session_id, "command": command, "timeout": float(wait),
                  "confirm": bool(confirm)}
        if isinstance(confirm, Approval):
            params["approval"] = confirm.to_wire()
        if until is not None:
            params["until"] = until
        return _command_result(self.call("ssh_session_command", params, timeout=wait + 60))

    def send(self, session_id: str, text: str = "", *, newline: bool = True,
             control: str | None = None, secret: bool = False, confirm: bool | Approval = False,
             sudo_password: bool = False) -> None:
        params: dict[str, Any] = {"session_id": session_id, "text": text,
                                  "send_newline": newline, "secret": secret,
                                  "confirm": bool(confirm), "sudo_password": sudo_password}
        if isinstance(confirm, Approval):
            params["approval"] = confirm.to_wire()
        if control is not None:
            params["control"] = control
        self.call("ssh_session_send", params, timeout=30)

    def read(self, session_id: str, *, wait: float = 0.0, until: str | None = None,
             offset: int | None = None) -> CommandResult:
        params: dict[str, Any] = {"session_id": session_id, "timeout": float(wait)}
        if until is not None:
            params["until"] = until
        if offset is not None:
            params["offset"] = offset
        return _command_result(self.call("ssh_session_read", params, timeout=wait + 60))

    def list(self) -> tuple[list[SessionInfo], list[str]]:
        """Open sessions, and the ids recorded before an agent restart but not restored yet."""
        r = self.call("ssh_session_list", {}, timeout=30)
        return ([_info(s) for s in r.get("sessions", [])],
                [p["session_id"] for p in r.get("pending_restore", [])])

    def close(self, session_id: str) -> None:
        self.call("ssh_session_close", {"session_id": session_id}, timeout=30)

    def restore(self) -> dict[str, Any]:
        return self.call("ssh_session_restore", {}, timeout=self.open_timeout)  # type: ignore[no-any-return]

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for sock in idle:
            sock.close()

    # -- the wire -------------------------------------------------------------------------
    def call(self, method: str, params: dict[str, Any], *, timeout: float) -> Any:
        """One request → its ``result``; the agent's error as a PhonehomeJumpError."""
        for attempt in (1, 2):
            sock = self._connection()
            try:
                reply = self._exchange(sock, method, params, timeout)
            except _Dropped as exc:
                sock.close()
                self._lost = True
                if not exc.sent or (method in _READ_ONLY and attempt == 1):
                    continue          # nothing ran, or nothing changes: one more try
                raise AgentError(
                    f"the connection to the agent at {self.address} dropped during {method} "
                    f"({exc}); it may or may not have run", where=f"site {self.site!r}",
                    hint="retry; list the sessions to see what the site has open") from None
            except socket.timeout:
                sock.close()
                raise AgentError(f"the agent at {self.address} did not answer {method} within "
                                 f"{timeout:g}s", where=f"site {self.site!r}",
                                 hint="check the agent's log at the site; then retry") from None
            except BaseException:
                sock.close()
                raise
            self._give_back(sock)
            if "error" in reply:
                err = reply["error"] if isinstance(reply["error"], dict) else {}
                raise remote_error(err.get("code"), err.get("message", "error without a message"))
            return reply.get("result")
        raise AgentError(f"the agent at {self.address} keeps closing the connection",
                         where=f"site {self.site!r}",
                         hint="check the agent's log at the site; then retry")

    def _exchange(self, sock: socket.socket, method: str, params: dict[str, Any],
                  timeout: float) -> dict[str, Any]:
        rid = f"phj-{next(self._ids)}"
        frame = encode({"method": method, "params": params, "id": rid})
        sock.settimeout(timeout)
        try:
            sock.sendall(frame)
        except OSError as exc:
            raise _Dropped(exc.strerror or str(exc), sent=False) from None
        try:
            payload = read_frame(_SocketReader(sock))
        except socket.timeout:
            raise
        except (OSError, EOFError, FrameError) as exc:
            raise _Dropped(str(exc), sent=True) from None
        if payload is None:
            raise _Dropped("closed by the agent", sent=True)
        try:
            reply = json.loads(payload.decode("utf-8"))
        except ValueError:
            reply = None
        if not isinstance(reply, dict) or reply.get("id") != rid:
            raise _Dropped("an invalid reply", sent=True)
        return reply

    def _connection(self) -> socket.socket:
        with self._lock:
            if self._closed:
                raise AgentError("the connection pool is shut down", where=f"site {self.site!r}")
            while self._idle:
                sock = self._idle.pop()
                if _still_open(sock):
                    return sock
                sock.close()
                self._lost = True
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except OSError as exc:
            self._lost = True
            why = exc.strerror or str(exc) or type(exc).__name__
            raise AgentError(
                f"the agent at {self.address} does not answer ({why})", where=f"site {self.site!r}",
                hint="check that `phonehome-jump agent --listen` runs beside the site's ET Phone "
                     f"Home client and that its tunnel reaches {self.address}; then retry") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._lost:
            self._lost = False
            # The agent may have restarted: reopen what it recorded, under the same ids.
            try:
                r = self._exchange(sock, "ssh_session_restore", {}, self.open_timeout)
                log.info("site %s: agent reconnected; restore: %s", self.site,
                         {k: len(v) for k, v in (r.get("result") or {}).items()
                          if isinstance(v, list)})
            except (_Dropped, OSError) as exc:
                sock.close()
                raise AgentError(f"the agent at {self.address} closed the connection ({exc})",
                                 where=f"site {self.site!r}",
                                 hint="check the agent's log at the site; then retry") from None
        return sock

    def _give_back(self, sock: socket.socket) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self.max_idle:
                self._idle.append(sock)
                return
        sock.close()


class _SocketReader:
    """``read(n)`` returning up to n bytes (fewer only at end of stream), for read_frame."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def read(self, n: int) -> bytes:
        parts, got = [], 0
        while got < n:
            chunk = self.sock.recv(min(n - got, 1 << 20))
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)


def _still_open(sock: socket.socket) -> bool:
    """An idle connection is usable when nothing is readable on it (no EOF, no stray bytes)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


def _info(d: dict[str, Any]) -> SessionInfo:
    return SessionInfo(id=d["session_id"], host=d["host"], chain=list(d.get("chain") or []),
                       created=d.get("created") or 0.0, last_activity=d.get("last_activity") or 0.0,
                       state=d.get("state") or "idle", cwd=d.get("cwd"),
                       framing=d.get("framing") or "?", owner=None,
                       dead_reason=d.get("dead_reason"))


def _command_result(d: dict[str, Any]) -> CommandResult:
    values = {k: d[k] for k in _RESULT_FIELDS if k in d}
    values["output"] = d.get("stdout", "")
    if values.get("omitted") is not None:
        values["omitted"] = tuple(values["omitted"])
    return CommandResult(**values)
