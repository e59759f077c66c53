"""The ET Phone Home agent protocol: length-prefixed JSON requests → :class:`SessionManager`.

Wire format (what an unmodified ET Phone Home server speaks over its reverse tunnel): each
message is a 4-byte big-endian length, then that many bytes of UTF-8 JSON. A request is
``{"method": str, "params": {...}, "id": str}``; the reply carries the same ``id`` and either
``"result"`` or ``"error": {"code": int, "message": str}``. One request at a time per
connection, in order; the connection stays open for the next one.

Methods (results are JSON objects; output results are ``CommandResult.to_dict()`` with
``output`` renamed ``stdout``, plus ``session_id``)::

    ssh_session_open     host [framing]        host is an INVENTORY NAME (see below)
    ssh_session_command  session_id command [timeout until]   timeout = the wait, seconds
    ssh_session_send     session_id [text send_newline control secret]
    ssh_session_read     session_id [timeout offset until]
    ssh_session_list     -
    ssh_session_close    session_id
    ssh_session_restore  -                     reopen sessions after an agent restart
    inventory_list       [group tag query]
    inventory_show       host

Error codes: -32700 parse error (bad UTF-8/JSON), -32600 invalid request (not an object,
bad ``method``/``params``/``id``, oversized frame), -32601 unknown method, -32602 invalid
params (unknown, missing or mistyped — the message names the parameter; also refused
credentials and unknown inventory names), -32603 internal error (details only in the log);
package errors keep their own ``err.code`` (errors.py: -32001 connect, -32002 session,
-32004 unknown session, -32005 limit, -32000 other) with ``str(err)`` as the message.

Credentials never travel through this protocol. ``password``, ``key_file`` and
``jump_hosts`` are refused (-32602, "add the host to the inventory"). The unmodified server
always sends ``username`` and ``port`` (default 22), so those are accepted when they agree
with the inventory (``port`` 22 is always ignored) and refused otherwise. There is no
ad-hoc (non-inventory) host mode.

Waits are capped at ``max_wait`` (25 s): the ET Phone Home server drops a request after 30 s,
so a longer command comes back ``running: true`` and is continued with ``ssh_session_read``.

Restore: the agent keeps, per open session, only ``id, host, cwd, created, framing`` in a JSON
state file (mode 0600, replaced atomically whenever that set changes). After a restart,
``ssh_session_restore`` reopens every recorded session whose chain logs in with keys or the
ssh-agent under the SAME id and runs ``cd <old cwd>``; sessions that need a password anywhere
in their chain are listed under ``manual_required``; dead sessions of a running agent are
reopened the same way. Until restored, a recorded id answers "call ssh_session_restore".

Embedding in the ET Phone Home client agent (``client/agent.py``)::

    from phonehome_jump.rpc import Dispatcher
    self.phj = Dispatcher.from_inventory("~/.config/phonehome-jump/inventory",
                                         state_file="~/.local/state/phonehome-jump/agent.json")
    # first lines of Agent.handle_request():
    if request.method in Dispatcher.METHODS:
        r = self.phj.handle({"method": request.method, "params": request.params, "id": request.id})
        return Response(id=r["id"], result=r.get("result"), error=r.get("error"))
    # Agent.shutdown(): self.phj.close()

Standalone, beside the ET Phone Home client: ``phonehome-jump agent --listen 127.0.0.1:7022
[--state FILE]`` (:func:`serve_agent`). :class:`RemoteAgent` is the client side, used by
``phonehome-jump serve --agent SITE=HOST:PORT`` (:mod:`.routing`).
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import logging
import os
import secrets
import select
import shlex
import signal
import socket
import socketserver
import struct
import sys
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from pathlib import Path
from typing import Any, BinaryIO, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import (AgentError, ConnectError, InventoryError, LimitError, PhonehomeJumpError,
                     SessionError, UnknownNameError, UnknownSessionError)
from .inventory import ENV_VAR, Inventory, Target
from .manager import SessionInfo, SessionManager
from .policy import Approval
from .redact import REDACTOR, RedactingFilter
from .session import CommandResult

log = logging.getLogger(__name__)

MAX_FRAME = 16 * 1024 * 1024
MAX_WAIT = 25.0             # below the ET Phone Home server's 30 s request timeout
PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR = (
    -32700, -32600, -32601, -32602, -32603)
_HEADER = struct.Struct(">I")
NOT_RESTORED = "not restored yet"   # in the error for a recorded, unrestored session


# --------------------------------------------------------------------------- framing

class FrameError(Exception):
    """A frame that cannot be read; the connection must be closed after replying."""


def encode(message: dict[str, Any]) -> bytes:
    """One frame: 4-byte big-endian length + UTF-8 JSON (ASCII-escaped, so always encodable)."""
    body = json.dumps(message).encode("utf-8")
    if len(body) > MAX_FRAME:
        raise FrameError(f"message of {len(body)} bytes exceeds the {MAX_FRAME} byte frame limit")
    return _HEADER.pack(len(body)) + body


def decode(buffer: bytes, max_size: int = MAX_FRAME) -> tuple[bytes | None, bytes]:
    """Split one frame's payload off ``buffer``: (payload, rest), or (None, buffer) if incomplete."""
    if len(buffer) < 4:
        return None, buffer
    (length,) = _HEADER.unpack_from(buffer)
    if length > max_size:
        raise FrameError(f"frame of {length} bytes exceeds the {max_size} byte limit")
    if len(buffer) < 4 + length:
        return None, buffer
    return buffer[4:4 + length], buffer[4 + length:]


def read_frame(stream: BinaryIO, max_size: int = MAX_FRAME) -> bytes | None:
    """The next payload from a buffered stream; None at a clean end of stream.

    Raises EOFError when the peer closes inside a frame, FrameError for an oversized one.
    """
    header = stream.read(4)
    if not header:
        return None
    if len(header) < 4:
        raise EOFError("connection closed inside a frame header")
    (length,) = _HEADER.unpack(header)
    if length > max_size:
        raise FrameError(f"frame of {length} bytes exceeds the {max_size} byte limit")
    body = stream.read(length)
    if len(body) < length:
        raise EOFError("connection closed inside a frame body")
    return body


def error_reply(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"id": request_id, "error": {"code": code, "message": message}}


class RpcError(Exception):
    """A protocol-level error (bad request or params) with its JSON-RPC code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --------------------------------------------------------------------------- params

class _Params(BaseModel):
    # strict: "5" is not a number and 1 is not a boolean; unknown names are errors
    model_config = ConfigDict(extra="forbid", strict=True)


class NoParams(_Params):
    pass


class OpenParams(_Params):
    host: str = Field(min_length=1)
    framing: Literal["sentinel", "native"] | None = None
    actor: str | None = None        # who acts, for the audit log (an MCP server passes its client)
    # Sent by the unmodified ET Phone Home server; checked, never used to log in.
    username: str | None = None
    port: int | None = None
    password: Any = None
    key_file: Any = None
    jump_hosts: Any = None


class CommandParams(_Params):
    session_id: str
    command: str
    timeout: float = Field(20.0, ge=0, allow_inf_nan=False)
    until: str | None = None
    confirm: bool = False           # passes the policy's confirm rules
    # who approved (the MCP server in front of the agent): {via, by, at, command}
    approval: dict[str, Any] | None = None


class SendParams(_Params):
    session_id: str
    text: str = ""
    send_newline: bool = True
    control: str | None = None
    secret: bool = False
    confirm: bool = False
    approval: dict[str, Any] | None = None
    sudo_password: bool = False     # type the inventory's sudo password (never on the wire)


class ReadParams(_Params):
    session_id: str
    timeout: float = Field(0.5, ge=0, allow_inf_nan=False)
    offset: int | None = Field(None, ge=0)
    until: str | None = None


class SessionParams(_Params):
    session_id: str


class InventoryListParams(_Params):
    group: str | None = None
    tag: str | None = None
    query: str | None = None


class InventoryShowParams(_Params):
    host: str


_REFUSED = ("password", "key_file", "jump_hosts")


def _approval(confirm: bool, approval: dict[str, Any] | None) -> bool | Approval:
    """The decision of the MCP server in front of the agent (who approved, how, when); a bare
    ``confirm: true`` is the agent-protocol caller's own."""
    if approval is not None:
        return Approval.from_wire(approval)
    return Approval("agent-protocol") if confirm else False


def _validate(method: str, model: type[_Params], params: dict[str, Any]) -> Any:
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():   # loc and msg only: the input may be a secret
            name = ".".join(str(p) for p in err["loc"]) or "params"
            if err["type"] == "extra_forbidden":
                known = ", ".join(model.model_fields) or "none"
                problems.append(f"unknown parameter '{name}' (accepted: {known})")
            elif err["type"] == "missing":
                problems.append(f"missing required parameter '{name}'")
            else:
                problems.append(f"parameter '{name}': {err['msg']}")
        raise RpcError(INVALID_PARAMS, f"invalid params for {method}: " + "; ".join(problems)) from None


# --------------------------------------------------------------------------- state file

class StateFile:
    """Non-secret session records (id, host, cwd, created, framing) in a 0600 JSON file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()

    def load(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            records = data["sessions"]
            return [r for r in records if isinstance(r, dict) and isinstance(r.get("id"), str)
                    and isinstance(r.get("host"), str)]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable agent state file %s: %s", self.path, exc)
            return []

    def save(self, records: list[dict[str, Any]]) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # mkstemp creates the file 0600; replace() swaps it in whole (no torn or wider file)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                # only non-secret metadata is recorded; masking is the belt to those braces
                json.dump({"version": 1, "sessions": REDACTOR.mask_data(records)}, fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def default_state_file() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "phonehome-jump" / "agent-sessions.json"


def _record(info: SessionInfo) -> dict[str, Any]:
    return {"id": info.id, "host": info.host, "cwd": info.cwd, "created": info.created,
            "framing": info.framing, "actor": info.actor}


def _needs_password(target: Target) -> bool:
    return any(ep.auth.password is not None for ep in (*target.chain, target.endpoint))


# --------------------------------------------------------------------------- dispatcher

class Dispatcher:
    """Maps protocol requests onto one :class:`SessionManager`. Thread-safe.

    Sessions belong to the agent, not to a connection: the ET Phone Home server reconnects
    and expects its sessions to still be there.
    """

    METHODS = frozenset({"ssh_session_open", "ssh_session_command", "ssh_session_send",
                         "ssh_session_read", "ssh_session_list", "ssh_session_close",
                         "ssh_session_restore", "inventory_list", "inventory_show"})

    def __init__(self, manager: SessionManager, *, state_file: str | os.PathLike[str] | None = None,
                 max_wait: float = MAX_WAIT) -> None:
        self.manager = manager
        self.inventory = manager.inventory
        self.actor = manager.actor or "agent"   # audit actor when the caller names none
        self.max_wait = max_wait
        self._state = StateFile(state_file) if state_file else None
        self._state_lock = threading.Lock()
        self._restore_lock = threading.Lock()
        self._saved: list[dict[str, Any]] | None = None
        # recorded sessions not open in this process (yet): id -> record
        self._pending: dict[str, dict[str, Any]] = {
            r["id"]: r for r in (self._state.load() if self._state else [])}
        self._table: dict[str, tuple[type[_Params], Callable[[Any], dict[str, Any]]]] = {
            "ssh_session_open": (OpenParams, self._open),
            "ssh_session_command": (CommandParams, self._command),
            "ssh_session_send": (SendParams, self._send),
            "ssh_session_read": (ReadParams, self._read),
            "ssh_session_list": (NoParams, self._list),
            "ssh_session_close": (SessionParams, self._close),
            "ssh_session_restore": (NoParams, self._restore),
            "inventory_list": (InventoryListParams, self._inventory_list),
            "inventory_show": (InventoryShowParams, self._inventory_show),
        }

    @classmethod
    def from_inventory(cls, path: str | os.PathLike[str], *,
                       state_file: str | os.PathLike[str] | None = None,
                       **manager_kwargs: Any) -> Dispatcher:
        manager = SessionManager(Inventory.load(Path(path).expanduser()), **manager_kwargs)
        manager.start_reaper()
        return cls(manager, state_file=state_file)

    def close(self) -> None:
        """Close every session; the state file keeps them for restore after a restart."""
        self.manager.shutdown()

    # -- entry points -----------------------------------------------------------------
    def handle(self, request: Any) -> dict[str, Any]:
        """One decoded request → one reply dict (never raises)."""
        rid = None
        try:
            if not isinstance(request, dict):
                raise RpcError(INVALID_REQUEST, "invalid request: expected a JSON object")
            if not _valid_id(request.get("id")):
                raise RpcError(INVALID_REQUEST, "invalid request: 'id' must be a string, an "
                                                "integer or null")
            rid = request.get("id")
            method = request.get("method")
            if not isinstance(method, str):
                raise RpcError(INVALID_REQUEST, "invalid request: 'method' must be a string")
            params = request.get("params")
            params = {} if params is None else params
            if not isinstance(params, dict):
                raise RpcError(INVALID_REQUEST, "invalid request: 'params' must be an object")
            if method not in self._table:
                raise RpcError(METHOD_NOT_FOUND, f"method not found: {method!r} (methods: "
                                                 f"{', '.join(sorted(self._table))})")
            model, impl = self._table[method]
            log.debug("request %r %s", rid, method)
            return {"id": rid, "result": impl(_validate(method, model, params))}
        except RpcError as err:
            return error_reply(rid, err.code, err.message)
        except PhonehomeJumpError as err:
            return error_reply(rid, err.code, str(err))
        except Exception:
            ref = secrets.token_hex(4)
            log.exception("internal error (ref %s)", ref)
            return error_reply(rid, INTERNAL_ERROR, f"internal error (ref {ref}); see the agent log")

    def respond(self, payload: bytes) -> bytes:
        """One frame payload → the encoded reply frame."""
        try:
            request = json.loads(payload.decode("utf-8"))
        except UnicodeDecodeError as exc:
            reply = error_reply(None, PARSE_ERROR, f"parse error: not valid UTF-8 (byte {exc.start})")
        except (ValueError, RecursionError) as exc:
            reply = error_reply(None, PARSE_ERROR, f"parse error: invalid JSON "
                                                   f"({getattr(exc, 'msg', 'nested too deeply')})")
        else:
            reply = self.handle(request)
        try:
            return encode(reply)
        except (TypeError, ValueError, FrameError):
            log.exception("cannot encode the reply to %r", reply.get("id"))
            return encode(error_reply(reply.get("id"), INTERNAL_ERROR, "internal error"))

    # -- methods ----------------------------------------------------------------------
    def _open(self, p: OpenParams) -> dict[str, Any]:
        for name in _REFUSED:
            if getattr(p, name):
                raise RpcError(INVALID_PARAMS, f"ssh_session_open: parameter '{name}' is refused: "
                               "credentials never travel through the agent protocol. Add the host "
                               "to the phonehome-jump inventory (secrets as env:/file: references) "
                               "and pass its inventory name as 'host'")
        target = self._target(p.host)
        ep = target.endpoint
        if p.username is not None and p.username != ep.username:
            raise RpcError(INVALID_PARAMS, f"ssh_session_open: 'username' differs from the "
                           f"inventory's {ep.username!r} for host {p.host!r}; omit it (the "
                           "inventory decides how to log in) or change the inventory")
        if p.port not in (None, 22, ep.port):
            raise RpcError(INVALID_PARAMS, f"ssh_session_open: 'port' {p.port} differs from the "
                           f"inventory's {ep.port} for host {p.host!r}; omit it or change the inventory")
        info = self.manager.open(p.host, framing=p.framing, actor=p.actor or self.actor)
        self.sync()
        return {**_session(info), "port": ep.port, "username": ep.username,
                "proxied": bool(target.chain)}

    def _command(self, p: CommandParams) -> dict[str, Any]:
        self._not_pending(p.session_id)
        wait = min(p.timeout, self.max_wait)
        r = self.manager.command(p.session_id, p.command, wait=wait, until=p.until,
                                 confirm=_approval(p.confirm, p.approval))
        self.sync()
        return {**self._output(p.session_id, r, wait), "prompt_detected": not r.running}

    def _send(self, p: SendParams) -> dict[str, Any]:
        self._not_pending(p.session_id)
        self.manager.send(p.session_id, p.text, newline=p.send_newline, control=p.control,
                          secret=p.secret, confirm=_approval(p.confirm, p.approval),
                          sudo_password=p.sudo_password)
        return {"session_id": p.session_id, "sent": True}

    def _read(self, p: ReadParams) -> dict[str, Any]:
        self._not_pending(p.session_id)
        wait = min(p.timeout, self.max_wait)
        r = self.manager.read(p.session_id, wait=wait, until=p.until, offset=p.offset)
        self.sync()
        return {**self._output(p.session_id, r, wait), "has_more": r.running}

    def _list(self, _: NoParams) -> dict[str, Any]:
        sessions = [_session(i) for i in self.manager.list()]
        with self._state_lock:
            pending = [{"session_id": r["id"], "host": r["host"], "cwd": r.get("cwd")}
                       for r in self._pending.values()]
        return {"sessions": sessions, "count": len(sessions), "pending_restore": pending}

    def _close(self, p: SessionParams) -> dict[str, Any]:
        with self._state_lock:
            record = self._pending.pop(p.session_id, None)
        if record is None:
            host = next((i.host for i in self.manager.list() if i.id == p.session_id), None)
            self.manager.close(p.session_id)
        else:
            host = record["host"]     # never reopened: forgetting the record closes it
        self.sync()
        return {"session_id": p.session_id, "closed": True, "host": host}

    def _restore(self, _: NoParams) -> dict[str, Any]:
        with self._restore_lock:
            alive: list[str] = []
            for info in self.manager.list():
                if info.state != "dead":
                    alive.append(info.id)
                    continue
                with self._state_lock:    # a dead session is reopened like a recorded one
                    self._pending[info.id] = _record(info)
                try:
                    self.manager.close(info.id)
                except UnknownSessionError:
                    pass
            failed: list[dict[str, Any]] = []
            manual: list[dict[str, Any]] = []
            todo: list[dict[str, Any]] = []
            with self._state_lock:
                records = list(self._pending.values())
            for rec in records:
                try:
                    target = self.inventory.target(rec["host"])
                except PhonehomeJumpError as err:
                    failed.append({"session_id": rec["id"], "host": rec["host"], "error": str(err)})
                    self._forget(rec["id"])
                    continue
                if _needs_password(target):
                    manual.append({"session_id": rec["id"], "host": rec["host"], "cwd": rec.get("cwd"),
                                   "reason": "password_auth: reopen it with ssh_session_open"})
                else:
                    todo.append(rec)
            restored: list[dict[str, Any]] = []
            with ThreadPoolExecutor(max_workers=max(1, min(8, len(todo)))) as pool:
                for rec, outcome in zip(todo, pool.map(self._reopen, todo)):
                    if isinstance(outcome, dict):
                        restored.append(outcome)
                    else:
                        failed.append({"session_id": rec["id"], "host": rec["host"],
                                       "error": str(outcome)})
                    self._forget(rec["id"])
            self.sync()
            return {"restored": restored, "failed": failed, "manual_required": manual,
                    "alive": alive}

    def _reopen(self, rec: dict[str, Any]) -> dict[str, Any] | PhonehomeJumpError:
        sid, cwd = rec["id"], rec.get("cwd")
        framing = rec.get("framing") if rec.get("framing") in ("sentinel", "native") else None
        try:
            actor = rec.get("actor") if isinstance(rec.get("actor"), str) else None
            info = self.manager.open(rec["host"], framing=framing, session_id=sid,
                                     actor=actor or self.actor)
        except PhonehomeJumpError as err:
            return err
        cwd_restored = False
        if cwd and info.framing == "sentinel":
            try:
                r = self.manager.command(sid, f"cd -- {shlex.quote(cwd)}", wait=10.0)
                cwd_restored = r.exit_status == 0
            except PhonehomeJumpError as err:   # reopened all the same; the caller sees cwd
                log.warning("session %s reopened, but not in %s: %s", sid, cwd, err)
        now = next((i.cwd for i in self.manager.list() if i.id == sid), None)
        log.info("restored session %s to %s (cwd %s)", sid, rec["host"], now)
        return {"session_id": sid, "host": rec["host"], "cwd": now, "cwd_restored": cwd_restored}

    def _inventory_list(self, p: InventoryListParams) -> dict[str, Any]:
        hosts = []
        for t in self.inventory.targets(p.group, p.tag, p.query):
            s = t.summary()
            hosts.append({k: s[k] for k in ("name", "host", "port", "username", "device_type",
                                            "groups", "tags", "description")}
                         | {"chain": [h["name"] for h in s["chain"]]})
        return {"hosts": hosts, "groups": self.inventory.groups()}

    def _inventory_show(self, p: InventoryShowParams) -> dict[str, Any]:
        return self._target(p.host).summary()     # references and paths, never secret values

    # -- helpers ----------------------------------------------------------------------
    def _target(self, host: str) -> Target:
        try:
            return self.inventory.target(host)
        except UnknownNameError as err:
            # callers written for raw hosts pass an address: point at the inventory names
            named = [t.name for t in self.inventory.targets() if t.endpoint.host == host]
            if named:
                raise UnknownNameError(f"{host!r} is an address, not an inventory name",
                                       hint=f"pass host={named[0]!r} (inventory hosts at that "
                                            f"address: {', '.join(named)})") from None
            raise err from None

    def _not_pending(self, session_id: str) -> None:
        if session_id in self._pending:
            raise UnknownSessionError(f"session {session_id!r} was open before the agent "
                                      f"restarted and is {NOT_RESTORED}", where="agent",
                                      hint="call ssh_session_restore, then retry (or "
                                           "ssh_session_close it)")

    def _output(self, session_id: str, r: CommandResult, wait: float) -> dict[str, Any]:
        d = r.to_dict()
        d["stdout"] = d.pop("output")
        d["session_id"] = session_id
        if r.running:
            d["note"] = (f"still running after {wait:g}s: ssh_session_read for more "
                         f"(waits are capped at {self.max_wait:g}s), ssh_session_send to answer "
                         "or control='c' to interrupt")
        return d

    def _forget(self, session_id: str) -> None:
        with self._state_lock:
            self._pending.pop(session_id, None)

    def sync(self) -> None:
        """Rewrite the state file when the recorded set (ids, cwds) changed."""
        if self._state is None:
            return
        with self._state_lock:
            records = [*self._pending.values(), *(_record(i) for i in self.manager.list())]
            if records != self._saved:
                try:
                    self._state.save(records)
                except OSError as exc:
                    # the request itself succeeded: failing it now would orphan its session
                    log.warning("cannot write the agent state file %s: %s; a restore after a "
                                "restart will miss these sessions (check the directory and "
                                "free space)", self._state.path, exc.strerror or exc)
                    return
                self._saved = records


def _valid_id(value: Any) -> bool:
    return value is None or isinstance(value, str) or (isinstance(value, int)
                                                       and not isinstance(value, bool))


def _session(info: SessionInfo) -> dict[str, Any]:
    return {"session_id": info.id, "host": info.host, "chain": info.chain, "state": info.state,
            "cwd": info.cwd, "framing": info.framing, "created": info.created,
            "last_activity": info.last_activity, "dead_reason": info.dead_reason}


# --------------------------------------------------------------------------- TCP server

class _Handler(socketserver.BaseRequestHandler):
    server: AgentServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream = sock.makefile("rb")
        try:
            while True:
                try:
                    payload = read_frame(stream)
                except FrameError as exc:   # cannot skip the body safely: reply, then close
                    sock.sendall(encode(error_reply(None, INVALID_REQUEST, f"invalid request: {exc}")))
                    return
                if payload is None:
                    return
                sock.sendall(self.server.dispatcher.respond(payload))
        except (OSError, EOFError) as exc:   # the peer went away (possibly mid-frame)
            log.debug("connection from %s ended: %s", self.client_address, exc)
        finally:
            stream.close()


class AgentServer(socketserver.ThreadingTCPServer):
    """One thread per connection; requests on a connection are answered in order."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)


def parse_listen(text: str, option: str = "--listen") -> tuple[str, int]:
    """``HOST:PORT``, ``[v6]:PORT``, ``:PORT`` or ``PORT`` → (host, port); host defaults to
    127.0.0.1. The one parser of listen addresses (agent, ``--agent``, MCP ``--http``)."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]") if sep else ""
    if not sep:
        port = text
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{option} wants HOST:PORT, got {text!r}")
    return host or "127.0.0.1", int(port)


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_agent(inventory_path: str | None, listen: str = "127.0.0.1:7022", *,
                state_file: str | None = None, max_wait: float = MAX_WAIT,
                audit_log: str | None = None) -> int:
    """Serve the agent protocol on loopback until SIGTERM/SIGINT. Returns an exit code.

    The inventory is ``inventory_path``, else $PHONEHOME_JUMP_INVENTORY, else ./inventory;
    the state file defaults to $XDG_STATE_HOME/phonehome-jump/agent-sessions.json. Prints
    ``listening on HOST:PORT`` (the real port, also for port 0) to stderr once it accepts.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                            format="phonehome-jump agent: %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        print(f"phonehome-jump: {exc}", file=sys.stderr)
        return 2
    if not is_loopback(host):
        # the protocol has no authentication: the ET Phone Home tunnel ends on loopback
        print(f"phonehome-jump: refusing to listen on {host}: the agent protocol has no "
              "authentication\n  try: bind a loopback address such as 127.0.0.1 (the ET Phone "
              "Home client's tunnel ends there)", file=sys.stderr)
        return 2
    path = inventory_path or os.environ.get(ENV_VAR) or str(Path.cwd() / "inventory")
    state = Path(state_file).expanduser() if state_file else default_state_file()
    try:
        manager = SessionManager(Inventory.load(path), audit_path=audit_log, actor="agent")
    except PhonehomeJumpError as err:
        print(f"phonehome-jump: {err}", file=sys.stderr)
        return 2
    dispatcher = Dispatcher(manager, state_file=state, max_wait=max_wait)
    try:
        dispatcher.sync()       # fail now, not at the first open, if the state file is unwritable
    except OSError as exc:
        print(f"phonehome-jump: cannot write the state file {state}: {exc.strerror or exc}\n"
              "  try: --state PATH in a directory this user can write", file=sys.stderr)
        dispatcher.close()
        return 1
    try:
        server = AgentServer((host, port), dispatcher)
    except OSError as exc:
        print(f"phonehome-jump: cannot listen on {listen}: {exc.strerror or exc}", file=sys.stderr)
        dispatcher.close()
        return 1
    manager.start_reaper()
    stop = threading.Event()
    got: list[int] = []
    saved: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            saved[sig] = signal.signal(sig, lambda signum, _frame: (got.append(signum), stop.set()))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name="phj-agent", daemon=True)
    thread.start()
    print(f"phonehome-jump agent: listening on {host}:{server.server_address[1]} "
          f"({len(manager.inventory)} hosts, state {state})", file=sys.stderr, flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in saved.items():   # main() also runs in-process (tests)
            signal.signal(sig, handler)
        server.shutdown()
        server.server_close()
        dispatcher.close()
    return 130 if got and got[0] == signal.SIGINT else 0


# --------------------------------------------------------------------------- client

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
