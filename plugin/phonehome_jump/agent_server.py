"""The ET Phone Home agent protocol, server side: requests → :class:`SessionManager`.

Wire format (what an unmodified ET Phone Home server speaks over its reverse tunnel): each
message is a 4-byte big-endian length, then that many bytes of UTF-8 JSON. A request is
``{"method": str, "params": {...}, "id": str}``; the reply carries the same ``id`` and either
``"result"`` or ``"error": {"code": int, "message": str}``. One request at a time per
connection, in order; the connection stays open for the next one.

Methods (results are JSON objects; output results are ``CommandResult.to_dict()`` with
``output`` renamed ``stdout``, plus ``session_id``)::

    ssh_session_open     host [username port framing]   host: an inventory name, or an address
    ssh_session_command  session_id command [timeout until]   timeout = the wait, seconds
    ssh_session_send     session_id [text send_newline control secret]
    ssh_session_read     session_id [timeout offset until]
    ssh_session_list     -
    ssh_session_close    session_id
    ssh_session_restore  -                     reopen sessions after an agent restart
    inventory_list       [group tag query]
    inventory_show       host
    heartbeat            -                     {"status": "alive"}, as the client answers

Error codes: -32700 parse error (invalid JSON), -32600 invalid request (not an object,
bad ``method``/``params``/``id``, oversized frame), -32601 unknown method, -32602 invalid
params (unknown, missing or mistyped, text that is not valid UTF-8 — the message names the
parameter; also refused credentials and unknown inventory names), -32603 internal error
(details only in the log); package errors keep their own ``err.code`` (errors.py: -32001
connect, -32002 session, -32004 unknown session, -32005 limit, -32000 other) with
``str(err)`` as the message.

Parameters as the unmodified ET Phone Home server sends them: open ``{host, username, port:
22}``, command ``{session_id, command, timeout: 300}``, send ``{session_id, text,
send_newline}``, read ``{session_id, timeout}``. ``host`` is an inventory name; an address
picks the one inventory host with that address and ``username`` (and ``port`` unless 22).
``username``/``port`` must otherwise agree with the inventory. Credentials never travel
through this protocol: ``password``, ``key_file`` and ``jump_hosts`` are refused (-32602,
"add the host to the inventory").

No reply lost: every wait is capped at ``max_wait`` (default 8 s), under the 10 s the ET
Phone Home server's health monitor leaves a queued call (it drops a request after 30 s
otherwise), so a longer command comes back ``running: true`` and is continued with
``ssh_session_read``. Should a reply with output still miss its caller (its connection closed
before the caller sent another request on it), the next ``ssh_session_read`` of that session
returns that output again: prepended to ``stdout`` when it continues it (``redelivered``
counts those characters), else under ``missed_replies``.

Secrets without a ``secret`` flag: a send that answers a password-like prompt (the running
command's output ends in ``Password:``, ``[sudo] password for …:``, a passphrase or PIN) is
sent as a secret: typed, then masked in output, audit and transcripts.

Restore: the agent keeps, per open session, only ``id, host, cwd, created, framing`` in a JSON
state file (mode 0600, replaced atomically whenever that set changes). After a restart,
``ssh_session_restore`` reopens every recorded session whose chain logs in with keys or the
ssh-agent under the SAME id and runs ``cd <old cwd>``; sessions that need a password anywhere
in their chain are listed under ``manual_required``; dead sessions of a running agent are
reopened the same way. A reopen that fails (a hop down) keeps the record for the next restore.
Until restored, a recorded id answers "call ssh_session_restore".

In the ET Phone Home client's own process: :mod:`.etphonehome` (``phonehome-jump-reach``).
Standalone, beside the client: ``phonehome-jump agent --listen 127.0.0.1:7022 [--state FILE]``
(:func:`serve_agent`). :class:`~.agent_client.RemoteAgent` is the client side, used by
``phonehome-jump serve --agent SITE=HOST:PORT`` (:mod:`.routing`).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shlex
import signal
import socket
import socketserver
import sys
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .delivery import Delivery, DeliveryLedger
from .errors import PhonehomeJumpError, UnknownNameError, UnknownSessionError
from .inputs import Seconds, Whole
from .inventory import ENV_VAR, Inventory, Target
from .manager import SessionInfo, SessionManager
from .policy import Approval
from .prompts import asks_for_secret
from .redact import REDACTOR, RedactingFilter
from .session import CommandResult
from .wire import (INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, NOT_RESTORED,
                   PARSE_ERROR, FrameError, RpcError, encode, error_reply, is_loopback,
                   parse_listen, read_frame)

log = logging.getLogger(__name__)

# The ET Phone Home server drops a request after 30 s, and its health monitor lowers the shared
# connection's timeout to 10 s while a heartbeat queues: every wait stays under that.
MAX_WAIT = 8.0
CALLER_TIMEOUT = 10.0       # a reply later than this may have missed its caller
BACKLOG = 1024              # pending connects (a burst of callers; the kernel caps at somaxconn)


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
    port: Whole | None = None
    password: Any = None
    key_file: Any = None
    jump_hosts: Any = None


class CommandParams(_Params):
    session_id: str
    command: str
    timeout: Seconds = Field(20.0, ge=0)
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
    timeout: Seconds = Field(0.5, ge=0)
    offset: Whole | None = Field(None, ge=0)
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
                         "ssh_session_restore", "inventory_list", "inventory_show",
                         "heartbeat"})

    def __init__(self, manager: SessionManager, *, state_file: str | os.PathLike[str] | None = None,
                 max_wait: float = MAX_WAIT, caller_timeout: float = CALLER_TIMEOUT) -> None:
        self.manager = manager
        self.inventory = manager.inventory
        self.actor = manager.actor or "agent"   # audit actor when the caller names none
        self.max_wait = max_wait
        self._ledger = DeliveryLedger(caller_timeout)
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
            "heartbeat": (NoParams, lambda _: {"status": "alive"}),
        }

    @classmethod
    def from_inventory(cls, path: str | os.PathLike[str], *,
                       state_file: str | os.PathLike[str] | None = None,
                       max_wait: float = MAX_WAIT, caller_timeout: float = CALLER_TIMEOUT,
                       **manager_kwargs: Any) -> Dispatcher:
        """A dispatcher over a new manager; refuses (OSError) a state file it cannot write."""
        manager = SessionManager(Inventory.load(Path(path).expanduser()), **manager_kwargs)
        dispatcher = cls(manager, state_file=state_file, max_wait=max_wait,
                         caller_timeout=caller_timeout)
        try:
            dispatcher.sync(strict=True)
        except OSError:
            manager.shutdown()
            raise
        manager.start_reaper()
        return dispatcher

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
            if not _valid_id(request.get("id")) or _has_surrogate(request.get("id")):
                raise RpcError(INVALID_REQUEST, "invalid request: 'id' must be a string, an "
                                                "integer or null")
            rid = request.get("id")
            method = request.get("method")
            if not isinstance(method, str) or _has_surrogate(method):
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
            self._ledger.request()
            _check_text(method, params)
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
            # a byte that is not UTF-8 becomes a lone surrogate: the request (and its id) still
            # parses, and the parameter holding it is refused by name (-32602)
            request = json.loads(payload.decode("utf-8", errors="surrogateescape"))
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
        target = self._target(p.host, username=p.username, port=p.port)
        ep = target.endpoint
        if p.username is not None and p.username != ep.username:
            raise RpcError(INVALID_PARAMS, f"ssh_session_open: 'username' differs from the "
                           f"inventory's {ep.username!r} for host {p.host!r}; omit it (the "
                           "inventory decides how to log in) or change the inventory")
        if p.port not in (None, 22, ep.port):
            raise RpcError(INVALID_PARAMS, f"ssh_session_open: 'port' {p.port} differs from the "
                           f"inventory's {ep.port} for host {p.host!r}; omit it or change the inventory")
        actor = p.actor or self.actor
        # a login slower than the caller's timeout: its reply missed the caller, who now asks
        # again. Hand over the session that open made rather than leave it orphaned.
        key = f"open:{target.name}:{actor}"
        # a late login may still be under way: wait for it (within this call's own wait cap)
        missed_opens = self._ledger.missed(key, settle=self.max_wait)
        live = {i.id: i for i in self.manager.list() if i.state != "dead"}
        for missed in missed_opens:
            sid = missed.reply["session_id"]
            if sid in live and live[sid].framing == (p.framing or live[sid].framing):
                return {**missed.reply, **_session(live[sid]), "recovered": True,
                        "note": "this session was opened by an earlier ssh_session_open whose "
                                "reply did not reach you (its connection closed)"}
        started, reply = self._ledger.begin(key), None
        try:
            info = self.manager.open(target.name, framing=p.framing, actor=actor)
            reply = {**_session(info), "port": ep.port, "username": ep.username,
                     "proxied": bool(target.chain)}
        finally:
            self._ledger.end(key, started, reply)
        self.sync()
        return reply

    def _command(self, p: CommandParams) -> dict[str, Any]:
        self._not_pending(p.session_id)
        wait = min(p.timeout, self.max_wait)
        started, reply = self._ledger.begin(p.session_id), None
        try:
            r = self.manager.command(p.session_id, p.command, wait=wait, until=p.until,
                                     confirm=_approval(p.confirm, p.approval))
            reply = {**self._output(p.session_id, r, wait), "prompt_detected": not r.running}
        finally:
            self._ledger.end(p.session_id, started, reply)
        self.sync()
        return reply

    def _send(self, p: SendParams) -> dict[str, Any]:
        self._not_pending(p.session_id)
        # callers without a secret flag (the ET Phone Home server) answer password prompts too
        fresh = (self.manager.session(p.session_id).fresh_input()
                 if p.text and not (p.secret or p.sudo_password) else None)
        secret = p.secret or (fresh is not None and asks_for_secret(*fresh))
        self.manager.send(p.session_id, p.text, newline=p.send_newline, control=p.control,
                          secret=secret, confirm=_approval(p.confirm, p.approval),
                          sudo_password=p.sudo_password)
        return {"session_id": p.session_id, "sent": True, "secret": secret or p.sudo_password}

    def _read(self, p: ReadParams) -> dict[str, Any]:
        self._not_pending(p.session_id)
        wait = min(p.timeout, self.max_wait)
        started, reply = self._ledger.begin(p.session_id), None
        try:
            r = self.manager.read(p.session_id, wait=wait, until=p.until, offset=p.offset)
            reply = {**self._output(p.session_id, r, wait), "has_more": r.running}
            if p.offset is None:
                reply = _with_missed(reply, self._ledger.missed(p.session_id))
        finally:
            # a page read by offset consumes nothing: losing it loses nothing
            self._ledger.end(p.session_id, started, reply if p.offset is None else None)
        self.sync()
        return reply

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
        self._ledger.forget(p.session_id)
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
                except PhonehomeJumpError as err:     # gone from the inventory: for good
                    failed.append({"session_id": rec["id"], "host": rec["host"], "error": str(err),
                                   "kept": False})
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
                        self._forget(rec["id"])
                    else:
                        # a hop down now may be up later: keep the record for the next restore
                        failed.append({"session_id": rec["id"], "host": rec["host"],
                                       "error": str(outcome), "kept": True})
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
    def _target(self, host: str, *, username: str | None = None,
                port: int | None = None) -> Target:
        """The inventory host named ``host``; or, for an address (as the ET Phone Home server
        sends it), the one inventory host at that address with that username (and port)."""
        try:
            return self.inventory.target(host)
        except UnknownNameError as err:
            at = [t for t in self.inventory.targets() if t.endpoint.host == host]
            if not at:
                raise err from None
            fits = [t for t in at if (username is None or t.endpoint.username == username)
                    and port in (None, 22, t.endpoint.port)]
            if len(fits) == 1:
                return fits[0]
            listed = ", ".join(f"{t.name} ({t.endpoint.username}@{t.endpoint.host}:"
                               f"{t.endpoint.port})" for t in at)
            if not fits:
                raise UnknownNameError(
                    f"no inventory host at address {host!r} logs in as {username!r}"
                    + (f" on port {port}" if port not in (None, 22) else ""),
                    hint=f"inventory hosts at that address: {listed}; pass one of their names "
                         "as host, or add this login to the inventory") from None
            raise UnknownNameError(
                f"{len(fits)} inventory hosts match address {host!r}"
                + (f" and username {username!r}" if username else ""),
                hint=f"pass the inventory name as host: {', '.join(t.name for t in fits)} "
                     f"(at that address: {listed})") from None

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
        notes = []
        if r.running:
            notes.append(f"still running after {wait:g}s: ssh_session_read for more "
                         f"(waits are capped at {self.max_wait:g}s), ssh_session_send to answer "
                         "or control='c' to interrupt")
        if r.omitted:
            notes.append(_omitted_note(*r.omitted, r.total))
        if notes:
            d["note"] = "; ".join(notes)
        return d

    def _forget(self, session_id: str) -> None:
        with self._state_lock:
            self._pending.pop(session_id, None)

    def sync(self, *, strict: bool = False) -> None:
        """Rewrite the state file when the recorded set (ids, cwds) changed.

        ``strict`` (at start): write it even if unchanged, and raise OSError if that fails.
        """
        if self._state is None:
            return
        with self._state_lock:
            records = [*self._pending.values(), *(_record(i) for i in self.manager.list())]
            if strict or records != self._saved:
                try:
                    self._state.save(records)
                except OSError as exc:
                    if strict:
                        raise
                    # the request itself succeeded: failing it now would orphan its session
                    log.warning("cannot write the agent state file %s: %s; a restore after a "
                                "restart will miss these sessions (check the directory and "
                                "free space)", self._state.path, exc.strerror or exc)
                    return
                self._saved = records


def _omitted_note(start: int, end: int, total: int) -> str:
    """How to get a capped result's middle, also for callers that cannot pass ``offset``."""
    return (f"characters {start}–{end} of {total} were left out of stdout to keep the reply "
            f"small. To get them: ssh_session_read with offset={start} where offset can be "
            "passed; through the ET Phone Home server's tools (no offset), rerun the command "
            "with its output to a file on the target and read the file in parts "
            "(`CMD > /tmp/out.txt 2>&1`, then `sed -n 1,200p /tmp/out.txt`, "
            "`sed -n 201,400p /tmp/out.txt`, …), or narrow it (`| grep`, or on a network "
            "device `| include`/`| section`); while a command runs, reading more often returns "
            "smaller pieces")


def _with_missed(reply: dict[str, Any], missed: list[Delivery]) -> dict[str, Any]:
    """Give a read the output of earlier replies that missed their caller.

    The last missed reply, when this read continues it (same command, next offset), is put in
    front of ``stdout`` so the result stays one contiguous piece of that command's output;
    anything else comes under ``missed_replies`` (never mixed into another command's output).
    """
    if not missed:
        return reply
    reply = dict(reply)
    last = missed[-1].reply
    apart = [d.reply for d in missed]
    if (not last.get("truncated") and last.get("command") == reply.get("command")
            and last.get("next_offset") == reply.get("offset")):
        apart.pop()
        reply["stdout"] = last["stdout"] + reply["stdout"]
        reply["offset"] = last["offset"]
        reply["redelivered"] = len(last["stdout"])
        note = (f"the first {reply['redelivered']} characters of stdout were sent before in a "
                "reply that did not reach you (its connection closed)")
        reply["note"] = f"{note}; {reply['note']}" if reply.get("note") else note
    if apart:
        reply["missed_replies"] = [{k: v for k, v in d.items() if k != "note"} for d in apart]
        note = (f"missed_replies: {len(apart)} earlier repl{'y' if len(apart) == 1 else 'ies'} "
                "of this session that did not reach you (their connection closed)")
        reply["note"] = f"{note}; {reply['note']}" if reply.get("note") else note
    return reply


def _has_surrogate(value: Any) -> bool:
    return isinstance(value, str) and not value.isascii() and any(
        "\ud800" <= c <= "\udfff" for c in value)


def _check_text(method: str, params: dict[str, Any], path: str = "") -> None:
    """Refuse text that is not valid UTF-8 (a lone surrogate) before it reaches a session."""
    for key, value in params.items():
        name = f"{path}{key}"
        if _has_surrogate(key) or _has_surrogate(value):
            raise RpcError(INVALID_PARAMS, f"invalid params for {method}: parameter "
                           f"{name.encode('utf-8', 'backslashreplace').decode()!r} is not valid "
                           "UTF-8 text (a lone surrogate or a stray byte); nothing was sent. "
                           "Send the text as UTF-8")
        if isinstance(value, dict):
            _check_text(method, value, f"{name}.")
        elif isinstance(value, list):
            _check_text(method, {str(i): v for i, v in enumerate(value)}, f"{name}.")


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
    request_queue_size = BACKLOG     # listen backlog: a burst of connects must not be refused

    def __init__(self, address: tuple[str, int], dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)



def serve_agent(inventory_path: str | None, listen: str = "127.0.0.1:7022", *,
                state_file: str | None = None, max_wait: float = MAX_WAIT,
                caller_timeout: float = CALLER_TIMEOUT, audit_log: str | None = None) -> int:
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
    dispatcher = Dispatcher(manager, state_file=state, max_wait=max_wait,
                            caller_timeout=caller_timeout)
    try:
        dispatcher.sync(strict=True)   # fail now, not at the first open, if it is unwritable
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
