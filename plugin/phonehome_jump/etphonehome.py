"""phonehome-jump inside the unmodified ET Phone Home ("Reach") client: ``phonehome-jump-reach``.

The client serves every channel of its reverse tunnel in its own process, handing each
request to ``client.agent.Agent.handle_request(request)`` (``shared.protocol.Request`` in,
``Response(id, result, error)`` out); it has no plugin mechanism. ``phonehome-jump-reach``
takes the same arguments as the client's ``reach`` command, adds phonehome-jump's methods to
that class (the session methods and ``inventory_*``; everything else, ``heartbeat``
included, stays the client's own), then runs the client's own ``client.reach.main()``.
Nothing of the client is edited, so its updater may replace it: it restarts itself with
``os.execv(sys.executable, [sys.executable] + sys.argv)``, which runs this command again
on the new code, and the hook is checked again. If the names above change, it stops with a
message naming the client version found and the hook expected.

Settings come from the environment (so they survive that restart, and a systemd unit sets
them with ``Environment=``), or from ``--phj-*`` options placed before the client's own::

    PHONEHOME_JUMP_INVENTORY    --phj-inventory PATH   inventory file or directory (required)
    PHONEHOME_JUMP_AGENT_STATE  --phj-state FILE       session records for ssh_session_restore
                                                       (default: agent-sessions.json in
                                                       $PHONEHOME_JUMP_STATE, else in
                                                       $XDG_STATE_HOME/phonehome-jump)
    PHONEHOME_JUMP_MAX_WAIT     --phj-max-wait S       cap on a request's wait (8)
    PHONEHOME_JUMP_CALLER_TIMEOUT                      the caller's shortest timeout (10)
    PHONEHOME_JUMP_AUDIT_LOG    --phj-audit-log FILE   audit log
    PHONEHOME_JUMP_CLIENT_PATH  --phj-client-path DIR  the client's code, when it is not
                                                       importable (a portable install:
                                                       ~/.local/share/reach/app)

The embedding API, for a launcher of one's own: :func:`install` / :func:`uninstall`.
"""

from __future__ import annotations

import atexit
import importlib
import importlib.util
import inspect
import logging
import os
import sys
from pathlib import Path
from typing import Any

from .agent_server import CALLER_TIMEOUT, MAX_WAIT, Dispatcher, default_state_file
from .errors import PhonehomeJumpError
from .inventory import ENV_VAR
from .redact import RedactingFilter

log = logging.getLogger(__name__)

HOOK = "client.agent.Agent.handle_request(self, request) -> shared.protocol.Response"
#: Methods taken over from the client; the rest (``heartbeat``, files, commands) stay its own.
TAKEN = Dispatcher.METHODS - {"heartbeat"}
SETTINGS = {"--phj-inventory": ENV_VAR, "--phj-state": "PHONEHOME_JUMP_AGENT_STATE",
            "--phj-max-wait": "PHONEHOME_JUMP_MAX_WAIT",
            "--phj-audit-log": "PHONEHOME_JUMP_AUDIT_LOG",
            "--phj-client-path": "PHONEHOME_JUMP_CLIENT_PATH"}
PORTABLE_APP = Path.home() / ".local" / "share" / "reach" / "app"   # the client's portable install
_MARK = "__phonehome_jump__"


class ClientMismatch(PhonehomeJumpError):
    """The ET Phone Home client found does not offer the hook this plugin needs."""


def client_version() -> str:
    try:
        return str(importlib.import_module("shared.version").__version__)
    except Exception:   # an unknown layout: say so rather than fail on the version itself
        return "unknown"


def _client_where() -> str:
    where = getattr(sys.modules.get("client"), "__file__", None)   # None: a namespace package
    return str(Path(where).parent) if where else "?"


def _mismatch(why: str) -> ClientMismatch:
    return ClientMismatch(
        f"ET Phone Home client {client_version()} ({_client_where()}) does not offer the hook "
        f"phonehome-jump expects: {why}", where=f"hook {HOOK}",
        hint="use a phonehome-jump release made for this client version, or keep the client at a "
             "version that has the hook (0.1.13 does); the client itself is unchanged")


def check_client() -> tuple[type, type]:
    """The client's ``Agent`` class and ``Response`` type, or ClientMismatch saying what changed."""
    try:
        agent_mod = importlib.import_module("client.agent")
        protocol = importlib.import_module("shared.protocol")
        reach = importlib.import_module("client.reach")
    except ImportError as exc:
        if not (isinstance(exc, ModuleNotFoundError)
                and exc.name in ("client", "shared", "client.agent", "client.reach",
                                 "shared.protocol")):
            raise _mismatch(f"importing client.agent, client.reach and shared.protocol "
                            f"failed: {exc}") from None
        raise ClientMismatch(
            f"the ET Phone Home client is not importable here (no module {exc.name!r})",
            where="phonehome-jump-reach",
            hint="install the client into this environment (pip install its source), or point "
                 f"PHONEHOME_JUMP_CLIENT_PATH (--phj-client-path) at its code, e.g. {PORTABLE_APP}"
        ) from None
    agent = getattr(agent_mod, "Agent", None)
    handle = getattr(agent, "handle_request", None)
    if agent is None or not callable(handle):
        raise _mismatch("client.agent has no Agent.handle_request")
    params = list(inspect.signature(getattr(handle, "__wrapped__", handle)).parameters)
    if params != ["self", "request"]:
        raise _mismatch(f"Agent.handle_request takes ({', '.join(params)}), not (self, request)")
    response = getattr(protocol, "Response", None)
    fields = set(getattr(response, "__dataclass_fields__", {}))
    if response is None or not {"id", "result", "error"} <= fields:
        raise _mismatch("shared.protocol.Response(id, result, error) is missing")
    if getattr(reach, "Agent", None) is not agent or not callable(getattr(reach, "main", None)):
        raise _mismatch("client.reach.main no longer builds its agent from client.agent.Agent")
    return agent, response


def install(dispatcher: Dispatcher) -> None:
    """Answer phonehome-jump's methods in every client ``Agent`` through ``dispatcher``."""
    agent, response = check_client()
    original = getattr(agent.handle_request, "__wrapped__", agent.handle_request)

    def handle_request(self: Any, request: Any) -> Any:
        if getattr(request, "method", None) not in TAKEN:
            return original(self, request)
        reply = dispatcher.handle({"method": request.method, "params": request.params,
                                   "id": request.id})
        return response(id=reply.get("id"), result=reply.get("result"), error=reply.get("error"))

    handle_request.__wrapped__ = original          # type: ignore[attr-defined]
    setattr(handle_request, _MARK, dispatcher)
    agent.handle_request = handle_request


def uninstall() -> None:
    """Give the client its own ``handle_request`` back (for tests and launchers)."""
    agent = sys.modules.get("client.agent")
    cls = getattr(agent, "Agent", None)
    if cls is not None and hasattr(cls.handle_request, _MARK):
        cls.handle_request = cls.handle_request.__wrapped__


def _settings(argv: list[str]) -> list[str]:
    """Move ``--phj-*`` options into the environment; the rest is the client's."""
    rest: list[str] = []
    it = iter(argv)
    for arg in it:
        name, eq, value = arg.partition("=")
        if name in SETTINGS:
            if not eq:
                value = next(it, "")
            if not value:
                raise SystemExit(f"phonehome-jump-reach: {name} needs a value")
            os.environ[SETTINGS[name]] = value
        else:
            rest.append(arg)
    return rest


def _seconds(name: str, default: float) -> float:
    text = os.environ.get(name)
    try:
        value = float(text) if text else default
    except ValueError:
        value = -1.0
    if not 0 < value < 3600:
        raise ValueError(f"{name}={text!r}: want a number of seconds above 0 (default {default:g})")
    return value


def main(argv: list[str] | None = None) -> int:
    """``phonehome-jump-reach [--phj-… VALUE] [reach's own arguments]``."""
    args = _settings(list(sys.argv[1:] if argv is None else argv))
    client_path = os.environ.get("PHONEHOME_JUMP_CLIENT_PATH")
    if client_path:
        sys.path.insert(0, str(Path(client_path).expanduser()))
    elif importlib.util.find_spec("client") is None and (PORTABLE_APP / "client").is_dir():
        sys.path.insert(0, str(PORTABLE_APP))
    inventory = os.environ.get(ENV_VAR)
    if not inventory:
        print(f"phonehome-jump-reach: no inventory: set {ENV_VAR} (or --phj-inventory PATH)",
              file=sys.stderr)
        return 2
    state = os.environ.get("PHONEHOME_JUMP_AGENT_STATE") or str(
        Path(os.environ["PHONEHOME_JUMP_STATE"]) / "agent-sessions.json"
        if os.environ.get("PHONEHOME_JUMP_STATE") else default_state_file())
    try:
        max_wait = _seconds("PHONEHOME_JUMP_MAX_WAIT", MAX_WAIT)
        caller_timeout = _seconds("PHONEHOME_JUMP_CALLER_TIMEOUT", CALLER_TIMEOUT)
    except ValueError as exc:
        print(f"phonehome-jump-reach: {exc}", file=sys.stderr)
        return 2
    if max_wait >= caller_timeout:
        print(f"phonehome-jump-reach: warning: a wait of {max_wait:g} s is not below the caller's "
              f"timeout ({caller_timeout:g} s; 10 s for a call the ET Phone Home server queues "
              "behind a heartbeat): such replies can miss it (their output comes back on the "
              "next read)", file=sys.stderr)
    try:
        check_client()
        dispatcher = Dispatcher.from_inventory(
            inventory, state_file=state, max_wait=max_wait, caller_timeout=caller_timeout,
            audit_path=os.environ.get("PHONEHOME_JUMP_AUDIT_LOG") or None, actor="agent")
    except PhonehomeJumpError as err:
        print(f"phonehome-jump-reach: {err}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"phonehome-jump-reach: cannot write the state file {state}: "
              f"{exc.strerror or exc}\n  try: PHONEHOME_JUMP_AGENT_STATE (--phj-state) in a "
              "directory this user can write", file=sys.stderr)
        return 1
    install(dispatcher)
    atexit.register(dispatcher.close)    # the client never calls Agent.shutdown()
    # the client installs its own log handlers: mask secrets in our records at the source
    for name in [n for n in logging.root.manager.loggerDict if n.startswith("phonehome_jump")]:
        logging.getLogger(name).addFilter(RedactingFilter())
    # the client parses sys.argv itself, and restarts after an update with it: keep this
    # command as argv[0] so the restart comes back here
    sys.argv = [sys.argv[0], *args]
    reach = importlib.import_module("client.reach")
    return int(reach.main() or 0)
