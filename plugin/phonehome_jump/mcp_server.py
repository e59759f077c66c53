"""The MCP server: a thin adapter that exposes :class:`SessionManager` as MCP tools.

    build_server(inventory, agents=None, **manager_kwargs) -> MCPServer      (tests and the CLI)
    serve(inventory_path, http="HOST:PORT", token_file=..., token_env=..., agents=[...])

With ``agents`` ({site: (host, port)}, ``serve --agent SITE=HOST:PORT``) the tools run the
sessions of hosts with ``client: SITE`` at that site's agent (:mod:`.routing`); the tools and
their results are the same either way.

No SSH logic lives here. Every blocking core call runs in a worker thread; long ones report
progress once a second. Every :class:`PhonehomeJumpError` reaches the model as its own text;
anything else is logged here and reaches the model as "internal error" with a reference only.

Ownership: a session belongs to the MCP client connection that opened it; other clients cannot
list, read, command or close it, and it is closed when that connection ends. A connection is
a handshake-era (2025) MCP connection: one stdio pipe or one streamable-HTTP ``Mcp-Session-Id``.
The 2026-07-28 protocol has no connections, so over HTTP this server answers that era with
"unsupported version" and clients fall back to the handshake; on stdio and in-process (one
client per transport) 2026-07-28 requests share one owner.
"""

import argparse
import hmac
import io
import json
import logging
import os
import secrets
import sys
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import anyio
import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.resolve import Elicit, ElicitationResult, Resolve
from mcp_types import ToolAnnotations
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import BaseModel, Field, ValidationError

from . import __version__
from .errors import PhonehomeJumpError, UnknownSessionError
from .inputs import Seconds, Whole, repair_json_line
from .inventory import ENV_VAR, Inventory, Target
from .manager import SessionInfo, SessionManager
from .mcp_approval import Approve, Gate, decide, gate, question
from .redact import RedactingFilter
from .routing import Router, check_sites, parse_agents
from .session import CommandResult
from .wire import is_loopback, parse_listen

log = logging.getLogger(__name__)

MAX_WAIT = 50.0                 # MCP clients give up on a request after about 60 s
DEFAULT_TOKEN_ENV = "PHONEHOME_JUMP_MCP_TOKEN"
MIN_TOKEN_LENGTH = 16
SINGLE_CLIENT = "single-client"  # the owner of 2026-07-28 requests (stdio, in-process)
_OWNER_KEY = "phonehome_jump.owner"
T = TypeVar("T")

INSTRUCTIONS = """\
SSH sessions to the hosts of an inventory, reached through their jump-host chains.
Find hosts with inventory_list / inventory_show, open a persistent shell with ssh_session_open
(state such as cwd and variables persists between commands), run commands with
ssh_session_command, answer prompts with ssh_session_send (secret=true for passwords) and
collect output with ssh_session_read. A command still running after `wait` returns
running=true: read it later, answer it, or send control='c'. Large output is capped: page it
with ssh_session_read(offset=...). Close sessions when done. ssh_run is a one-shot command.
A session whose hop or shell went away is dead (the error names the hop); ssh_session_revive
reopens it under the same id in the same directory (shell variables are lost). For a [sudo] password prompt use ssh_session_send(sudo_password=true): the inventory's
password is typed without you seeing it. The inventory's policy may refuse a command (the
error names the rule). A command the policy asks to confirm is shown to the user, who approves
or declines it in their client; you cannot approve it yourself (confirm=true counts only where
the inventory allows it for clients that cannot ask their user)."""


# --------------------------------------------------------------------------- results

class Hop(BaseModel):
    name: str
    host: str
    port: int
    username: str


class HostSummary(BaseModel):
    name: str = Field(description="Inventory name; pass it to ssh_session_open or ssh_run.")
    host: str
    port: int
    username: str
    device_type: str = Field(description="netmiko device type; linux-like types get exact framing.")
    groups: list[str]
    tags: list[str]
    description: str | None
    chain: list[str] = Field(description="Jump hosts, first hop first; empty when dialed directly.")
    client: str | None = Field(None, description="ET Phone Home client site that reaches the host.")


class HostList(BaseModel):
    hosts: list[HostSummary]
    groups: list[str] = Field(description="Every group of the inventory (for the group filter).")


class HostDetail(BaseModel):
    name: str
    host: str
    port: int
    username: str
    device_type: str
    groups: list[str]
    tags: list[str]
    description: str | None
    chain: list[Hop] = Field(description="Jump hosts, first hop first.")
    client: str | None = Field(None, description="ET Phone Home client site that reaches the host.")
    auth: dict[str, str | bool] = Field(description="Secret references and key paths; never values.")
    source: str = Field(description="Where the host is defined (file:line).")


class SessionOut(BaseModel):
    session_id: str
    host: str
    chain: list[str]
    state: str = Field(description="idle | running | dead")
    cwd: str | None
    framing: str = Field(description="sentinel (exact output, exit status, cwd) or native "
                                     "(the device prompt; no exit status)")
    created: float = Field(description="Unix time")
    last_activity: float = Field(description="Unix time")
    dead_reason: str | None = None


class SessionList(BaseModel):
    sessions: list[SessionOut]


class Output(BaseModel):
    session_id: str
    command: str | None = Field(description="The command (secrets masked); null for typed input.")
    output: str = Field(description="Output since the last call (or the page at `offset`); "
                                    "secrets masked.")
    exit_status: int | None = Field(description="Null while running and with native framing.")
    running: bool = Field(description="Still running: ssh_session_read for more, "
                                      "ssh_session_send to answer or interrupt.")
    awaiting_input: bool = Field(description="The output ends in a question (password, y/n).")
    cwd: str | None
    duration: float = Field(description="Seconds since the command started.")
    offset: int = Field(description="Where `output` starts in the command's whole output.")
    total: int = Field(description="Characters of output so far.")
    truncated: bool = Field(description="Part of the output is not in `output`.")
    omitted: list[int] | None = Field(description="[start, end) left out of the middle.")
    next_offset: int = Field(description="Pass to ssh_session_read(offset=) to page on.")
    note: str | None = Field(None, description="What to do next, when there is something to do.")


class RunOutput(Output):
    host: str
    session_open: bool = Field(description="True when the command is still running: the session "
                                           "stays open; read, answer or close it.")


class Sent(BaseModel):
    session_id: str
    sent: bool
    note: str = "collect the response with ssh_session_read(wait=...)"


class Closed(BaseModel):
    session_id: str
    closed: bool


def _host_summary(t: Target) -> HostSummary:
    s = t.summary()
    return HostSummary(chain=[h["name"] for h in s["chain"]],
                       **{k: s[k] for k in HostSummary.model_fields if k != "chain"})


def _session_out(i: SessionInfo) -> SessionOut:
    return SessionOut(session_id=i.id, host=i.host, chain=i.chain, state=i.state, cwd=i.cwd,
                      framing=i.framing, created=i.created, last_activity=i.last_activity,
                      dead_reason=i.dead_reason)


def _output(session_id: str, r: CommandResult, *, waited: float | None = None) -> dict[str, Any]:
    note = None
    if r.awaiting_input:
        note = ("the command waits for input: answer with ssh_session_send "
                "(secret=true for a password), or interrupt with control='c'")
    elif r.running:
        note = (f"still running{f' after {waited:g}s' if waited is not None else ''}: "
                "ssh_session_read(wait=...) for more output, ssh_session_send to type, "
                "control='c' to interrupt")
    if r.omitted:
        note = (note + "; " if note else "") + (
            f"output capped: characters {r.omitted[0]}-{r.omitted[1]} omitted, "
            f"page them with ssh_session_read(offset={r.omitted[0]})")
    elif r.truncated:
        note = (note + "; " if note else "") + f"more output: ssh_session_read(offset={r.next_offset})"
    d = r.to_dict()
    return dict(session_id=session_id, note=note,
                **{k: d[k] for k in Output.model_fields if k in d})


# --------------------------------------------------------------------------- plumbing

class _Runtime:
    """One SessionManager per server object, alive while any transport runs the server.

    The streamable-HTTP transport enters the lifespan once per process; in-process clients
    enter it once each, and share the manager (ownership keeps them apart).
    """

    def __init__(self, inventory: Inventory, manager_kwargs: dict[str, Any],
                 agents: Mapping[str, tuple[str, int]] | None = None) -> None:
        self.inventory = inventory
        self.manager_kwargs = manager_kwargs
        self.agents = dict(agents or {})
        self._manager: SessionManager | Router | None = None
        self._users = 0
        self._lock = threading.Lock()
        self.limiter: anyio.CapacityLimiter | None = None

    @property
    def manager(self) -> SessionManager | Router:
        if self._manager is None:
            raise RuntimeError("the MCP server is not running (lifespan not entered)")
        return self._manager

    @asynccontextmanager
    async def lifespan(self, _server: MCPServer) -> AsyncIterator["_Runtime"]:
        with self._lock:
            if self._users == 0:
                local = SessionManager(self.inventory, **self.manager_kwargs)
                self._manager = (Router.from_addresses(local, self.agents) if self.agents
                                 else local)
                self._manager.start_reaper()
                # each session may hold a worker thread for up to MAX_WAIT seconds
                self.limiter = anyio.CapacityLimiter(self._manager.max_sessions + 16)
                log.info("session manager started (%d hosts)", len(self.inventory))
            self._users += 1
        try:
            yield self
        finally:
            with self._lock:
                self._users -= 1
                last = self._users == 0
                manager, self._manager = (self._manager, None) if last else (None, self._manager)
            if manager is not None:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(manager.shutdown)
                log.info("session manager stopped")

    async def call(self, fn: Callable[[], T]) -> T:
        return await anyio.to_thread.run_sync(fn, limiter=self.limiter)

    async def call_with_progress(self, ctx: Context, fn: Callable[[], T], message: str,
                                 total: float | None = None) -> T:
        """``fn()`` in a worker thread, reporting progress (seconds elapsed) once a second."""
        async def tick() -> None:
            start = anyio.current_time()
            try:
                while True:
                    elapsed = anyio.current_time() - start
                    await ctx.report_progress(round(elapsed), total, f"{message} ({elapsed:.0f}s)")
                    await anyio.sleep(1.0)
            except Exception:   # progress is advisory; the client may be gone
                log.debug("progress notification failed", exc_info=True)

        result: T | None = None
        error: Exception | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(tick)
            try:
                result = await self.call(fn)
            except Exception as exc:   # re-raised outside the task group (no ExceptionGroup)
                error = exc
            tg.cancel_scope.cancel()
        if error is not None:
            raise error
        return result  # type: ignore[return-value]

    def owner(self, ctx: Context) -> str:
        """The owner id of the client connection this request came on."""
        # SDK 2.3 builds a ServerSession per request; the per-client Connection behind it
        # is only reachable through this attribute.
        conn = ctx.session._connection
        if conn.protocol_version not in HANDSHAKE_PROTOCOL_VERSIONS:
            return SINGLE_CLIENT          # 2026-07-28: no connection exists (see module doc)
        owner = conn.state.get(_OWNER_KEY)
        if owner is None:
            owner = conn.state[_OWNER_KEY] = "c-" + secrets.token_hex(8)
            conn.exit_stack.push_async_callback(self._release, owner)
        return owner

    async def _release(self, owner: str) -> None:
        """The client connection ended: close the sessions it left open."""
        manager = self._manager
        if manager is None:
            return

        def close_all() -> int:
            infos = manager.list(owner=owner)
            for info in infos:
                try:
                    manager.close(info.id, owner=owner)
                except PhonehomeJumpError:
                    pass        # closed meanwhile
            return len(infos)

        closed = await anyio.to_thread.run_sync(close_all)
        if closed:
            log.info("client %s disconnected: closed its %d session(s)", owner, closed)


@contextmanager
def _errors(tool: str) -> Any:
    """PhonehomeJumpError → its own text; anything else → logged, and a reference only."""
    try:
        yield
    except ToolError:
        raise
    except PhonehomeJumpError as err:
        raise ToolError(str(err)) from None
    except Exception:
        ref = secrets.token_hex(4)
        log.exception("internal error in tool %s (ref %s)", tool, ref)
        raise ToolError(f"internal error in {tool} (ref {ref}); see the phonehome-jump "
                        "server log") from None


def _wait(wait: float) -> float:
    return max(0.0, min(float(wait), MAX_WAIT))


def _annotations(title: str, *, read_only: bool = False, destructive: bool = False,
                 idempotent: bool = False, open_world: bool = True) -> ToolAnnotations:
    return ToolAnnotations(title=title, read_only_hint=read_only, destructive_hint=destructive,
                           idempotent_hint=idempotent, open_world_hint=open_world)


# --------------------------------------------------------------------------- the server

HostName = Annotated[str, Field(description="Inventory host name (see inventory_list).")]
SessionId = Annotated[str, Field(description="Session id from ssh_session_open (or ssh_run).")]
Confirm = Annotated[bool, Field(description="Only where the inventory allows it "
                                            "(mcp_approval: elicit-or-model) and this client "
                                            "cannot ask its user: confirm a command the host's "
                                            "policy asks to confirm. Otherwise the user is "
                                            "asked, and this flag does not approve anything.")]
Wait = Annotated[Seconds, Field(ge=0, description=f"Seconds to wait for the command to finish "
                                                f"(at most {MAX_WAIT:g}; larger values are capped). "
                                                "If it is still running then, running=true is "
                                                "returned and the command keeps running.")]
Until = Annotated[str | None, Field(description="Python regular expression: stop waiting early "
                                                "when new output matches it (e.g. a prompt). "
                                                "At most 2000 characters; a search that takes "
                                                "more than 1 s is given up with an error.")]


def build_server(inventory: Inventory | str | Path, *,
                 agents: Mapping[str, tuple[str, int]] | None = None,
                 workflows: str | Path | None = None,
                 **manager_kwargs: Any) -> MCPServer:
    """The MCP server over ``inventory`` (an Inventory, or a file/directory to load).

    ``agents`` maps ET Phone Home client sites to their agents' (host, port): sessions of
    hosts with that ``client`` run there. ``workflows``: a directory of workflow files for
    workflow_list/run/status (none: no workflow tools; ``serve`` defaults it to ./workflows
    when that exists). ``manager_kwargs`` go to :class:`SessionManager`
    (max_sessions, idle_timeout, cap, ...).
    """
    inv = inventory if isinstance(inventory, Inventory) else Inventory.load(inventory)
    check_sites(inv, agents or {})
    rt = _Runtime(inv, manager_kwargs, agents)
    mcp: MCPServer = _Server("phonehome-jump", version=__version__, instructions=INSTRUCTIONS,
                             lifespan=rt.lifespan, log_level="WARNING")
    mcp.phonehome_jump = rt          # type: ignore[attr-defined]  # for tests and embedding

    @mcp.tool(annotations=_annotations("List inventory hosts", read_only=True, idempotent=True,
                                       open_world=False))
    async def inventory_list(
        group: Annotated[str | None, Field(description="Only hosts in this group.")] = None,
        tag: Annotated[str | None, Field(description="Only hosts with this tag.")] = None,
        query: Annotated[str | None, Field(description="Case-insensitive text in the name, "
                                                       "address or description.")] = None,
    ) -> HostList:
        """List the hosts sessions can be opened to: device type, tags and jump chain."""
        with _errors("inventory_list"):
            return HostList(hosts=[_host_summary(t) for t in inv.targets(group, tag, query)],
                            groups=inv.groups())

    @mcp.tool(annotations=_annotations("Show an inventory host", read_only=True, idempotent=True,
                                       open_world=False))
    async def inventory_show(host: HostName) -> HostDetail:
        """One host resolved: address, user, jump chain hop by hop, auth references (no secrets)."""
        with _errors("inventory_show"):
            s = inv.target(host).summary()
            return HostDetail(**{**s, "chain": [Hop(**h) for h in s["chain"]]})

    @mcp.tool(annotations=_annotations("Open an SSH session"))
    async def ssh_session_open(host: HostName, ctx: Context) -> SessionOut:
        """Open a persistent shell on a host through its jump chain; returns the session id.

        The shell keeps its state (cwd, environment) between commands. Close it when done.
        """
        with _errors("ssh_session_open"):
            owner = rt.owner(ctx)
            chain = " → ".join(h.name for h in inv.target(host).chain) or "directly"
            info = await rt.call_with_progress(
                ctx, lambda: rt.manager.open(host, owner=owner, actor=_actor(ctx, owner)),
                f"connecting to {host} via {chain}")
            return _session_out(info)

    async def command_gate(session_id: str, command: str, ctx: Context) -> Gate:
        owner = rt.owner(ctx)
        return gate(lambda: rt.manager.approval_needed(session_id, command, owner=owner,
                                                       command=True), ctx)

    async def command_question(g: Annotated[Gate, Resolve(command_gate)]) -> Elicit[Approve] | str:
        return question(g)

    @mcp.tool(annotations=_annotations("Run a command in a session", destructive=True))
    async def ssh_session_command(
        session_id: SessionId,
        command: Annotated[str, Field(description="Shell command line (several lines run as one "
                                                  "command).")],
        ctx: Context,
        g: Annotated[Gate, Resolve(command_gate)],
        answer: Annotated[ElicitationResult[Approve], Resolve(command_question)],
        wait: Wait = 20.0,
        until: Until = None,
        confirm: Confirm = False,
    ) -> Output:
        """Run a command in the session's shell and return its output, exit status and cwd.

        Returns early with running=true when it is still running after `wait`, when the output
        matches `until`, or when it asks for input (awaiting_input=true).
        """
        with _errors("ssh_session_command"):
            owner, w = rt.owner(ctx), _wait(wait)
            approval = decide(g, answer, confirm=confirm, actor=_actor(ctx, owner),
                              record=rt.manager.record, session_id=session_id)
            r = await rt.call_with_progress(
                ctx, lambda: rt.manager.command(session_id, command, owner=owner, wait=w,
                                                until=until, confirm=approval),
                f"running on {session_id}", total=w)
            return Output(**_output(session_id, r, waited=w))

    async def send_gate(session_id: str, text: str, newline: bool, control: str | None,
                        secret: bool, sudo_password: bool, ctx: Context) -> Gate:
        owner = rt.owner(ctx)
        return gate(lambda: rt.manager.approval_needed(
            session_id, text, owner=owner, newline=newline, control=control,
            secret=secret or sudo_password), ctx)

    async def send_question(g: Annotated[Gate, Resolve(send_gate)]) -> Elicit[Approve] | str:
        return question(g)

    @mcp.tool(annotations=_annotations("Type into a session", destructive=True))
    async def ssh_session_send(
        session_id: SessionId,
        ctx: Context,
        g: Annotated[Gate, Resolve(send_gate)],
        answer: Annotated[ElicitationResult[Approve], Resolve(send_question)],
        text: Annotated[str, Field(description="Text to type (answer a prompt).")] = "",
        newline: Annotated[bool, Field(description="Press Enter after the text.")] = True,
        control: Annotated[str | None, Field(description="Control key to send after the text: "
                                                         "c (interrupt), d (EOF), z, \\, [ (Esc), "
                                                         "l, u; also 'ctrl-c' or '^C'.")] = None,
        secret: Annotated[bool, Field(description="The text is a secret (a password): it is "
                                                  "masked in all later output.")] = False,
        confirm: Confirm = False,
        sudo_password: Annotated[bool, Field(description="Type the host's sudo password from the "
                                                         "inventory instead of text (you never "
                                                         "see it); for a [sudo] password prompt.")
                                 ] = False,
    ) -> Sent:
        """Type raw text or a control key into the session; then collect output with ssh_session_read."""
        with _errors("ssh_session_send"):
            owner = rt.owner(ctx)
            approval = decide(g, answer, confirm=confirm, actor=_actor(ctx, owner),
                              record=rt.manager.record, session_id=session_id)
            await rt.call(lambda: rt.manager.send(session_id, text, owner=owner, newline=newline,
                                                  control=control, secret=secret,
                                                  confirm=approval, sudo_password=sudo_password))
            return Sent(session_id=session_id, sent=True)

    @mcp.tool(annotations=_annotations("Read session output", read_only=True))
    async def ssh_session_read(
        session_id: SessionId,
        ctx: Context,
        wait: Annotated[Seconds, Field(ge=0, description=f"Seconds to wait for the command to finish "
                                                       f"(at most {MAX_WAIT:g}); 0 returns what has "
                                                       "arrived.")] = 0.0,
        until: Until = None,
        offset: Annotated[Whole | None, Field(ge=0, description="Page the current/last command's "
                                                              "whole output from this character "
                                                              "(see omitted / next_offset).")] = None,
    ) -> Output:
        """Collect new output of the running (or last) command, or page its output by offset."""
        with _errors("ssh_session_read"):
            owner, w = rt.owner(ctx), _wait(wait)

            def read() -> CommandResult:
                return rt.manager.read(session_id, owner=owner, wait=w, until=until, offset=offset)
            r = (await rt.call_with_progress(ctx, read, f"reading {session_id}", total=w) if w
                 else await rt.call(read))
            return Output(**_output(session_id, r, waited=w if w else None))

    @mcp.tool(annotations=_annotations("List open sessions", read_only=True, idempotent=True,
                                       open_world=False))
    async def ssh_session_list(ctx: Context) -> SessionList:
        """The sessions this client has open: host, state (idle, running, dead), cwd."""
        with _errors("ssh_session_list"):
            owner = rt.owner(ctx)
            infos = await rt.call(lambda: rt.manager.list(owner=owner))
            return SessionList(sessions=[_session_out(i) for i in infos])

    @mcp.tool(annotations=_annotations("Close a session", destructive=True, idempotent=True))
    async def ssh_session_close(session_id: SessionId, ctx: Context) -> Closed:
        """Close the session (a command still running in it is killed)."""
        with _errors("ssh_session_close"):
            owner = rt.owner(ctx)
            await rt.call(lambda: rt.manager.close(session_id, owner=owner))
            return Closed(session_id=session_id, closed=True)

    @mcp.tool(annotations=_annotations("Revive a dead session"))
    async def ssh_session_revive(session_id: SessionId, ctx: Context) -> SessionOut:
        """Reopen a dead session (its hop or shell went away) under the same id, back in its
        working directory; shell variables and jobs of the old shell are gone."""
        with _errors("ssh_session_revive"):
            owner = rt.owner(ctx)
            info = await rt.call_with_progress(
                ctx, lambda: rt.manager.revive(session_id, owner=owner),
                f"reopening {session_id}")
            return _session_out(info)

    async def run_gate(host: str, command: str, ctx: Context) -> Gate:
        def needed() -> tuple[Target, str, str] | None:
            target = inv.target(host)
            rule = target.policy.confirm_rule(command, host=target.name)
            return (target, rule, command) if rule is not None else None
        return gate(needed, ctx)

    async def run_question(g: Annotated[Gate, Resolve(run_gate)]) -> Elicit[Approve] | str:
        return question(g)

    @mcp.tool(annotations=_annotations("Run one command on a host", destructive=True))
    async def ssh_run(
        host: HostName,
        command: Annotated[str, Field(description="Shell command line.")],
        ctx: Context,
        g: Annotated[Gate, Resolve(run_gate)],
        answer: Annotated[ElicitationResult[Approve], Resolve(run_question)],
        wait: Wait = 20.0,
        confirm: Confirm = False,
    ) -> RunOutput:
        """Open a session, run one command, close the session.

        If the command is still running after `wait` (or asks for input), the session stays
        open and its id is returned: read, answer or close it with the ssh_session_* tools.
        """
        with _errors("ssh_run"):
            owner, w = rt.owner(ctx), _wait(wait)
            m = rt.manager
            approval = decide(g, answer, confirm=confirm, actor=_actor(ctx, owner),
                              record=m.record)
            info = await rt.call_with_progress(
                ctx, lambda: m.open(host, owner=owner, actor=_actor(ctx, owner)),
                f"connecting to {host}")
            try:
                r = await rt.call_with_progress(
                    ctx, lambda: m.command(info.id, command, owner=owner, wait=w, confirm=approval),
                    f"running on {host}", total=w)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await rt.call(lambda: _close_quietly(m, info.id, owner))
                raise
            if not r.running:
                await rt.call(lambda: _close_quietly(m, info.id, owner))
            return RunOutput(host=host, session_open=r.running, **_output(info.id, r, waited=w))

    from .files_mcp import register as register_files
    register_files(mcp, rt, errors=_errors, annotations=_annotations, actor=_actor)

    if workflows is not None:
        from .workflow_mcp import register
        register(mcp, rt, Path(workflows), errors=_errors, wait_cap=MAX_WAIT,
                 annotations=_annotations)
    return mcp


class _Server(MCPServer):
    """MCPServer whose argument errors name the parameter and the problem, never the value:
    the SDK's text repeats each rejected input (a malformed ``send(secret=true)`` would
    return the secret in the error)."""

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None,
                        *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().call_tool(name, arguments, context, *args, **kwargs)
        except ToolError as exc:
            cause = exc.__cause__
            if not isinstance(cause, ValidationError):
                raise
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'arguments'}: {err['msg']}"
                for err in cause.errors(include_url=False, include_input=False))
            raise ToolError(f"Error executing tool {name}: invalid arguments: {problems} "
                            "(see the tool's input schema)") from None


def _actor(ctx: Context, owner: str) -> str:
    """Who acts, for the audit log: the client's self-declared name and its connection id."""
    try:
        name = ctx.session.client_params.client_info.name  # type: ignore[union-attr]
    except AttributeError:
        name = None
    return f"mcp:{name or 'client'}/{owner}"


def _close_quietly(manager: SessionManager | Router, session_id: str, owner: str) -> None:
    try:
        manager.close(session_id, owner=owner)
    except UnknownSessionError:
        pass


# --------------------------------------------------------------------------- HTTP and serve()

class _RepairingStdin(io.TextIOWrapper):
    """stdin as the SDK reads it (UTF-8, a bad byte becomes U+FFFD), with lone surrogate
    escapes (``"\\ud800"``) made U+FFFD too: the SDK drops a line it cannot parse without an
    answer, while this way the tool answers with an error naming the parameter."""

    def readline(self, size: int = -1) -> str:  # type: ignore[override]
        return repair_json_line(super().readline(size))

    def close(self) -> None:                     # never close the process's stdin
        try:
            self.detach()
        except ValueError:
            pass


async def _serve_stdio(server: MCPServer) -> None:
    """``server.run("stdio")``, reading stdin through :class:`_RepairingStdin`."""
    from mcp.server.stdio import stdio_server

    stdin = anyio.wrap_file(_RepairingStdin(sys.stdin.buffer, encoding="utf-8", errors="replace"))
    async with stdio_server(stdin=stdin) as (read_stream, write_stream):
        low = server._lowlevel_server        # what MCPServer.run_stdio_async runs, too
        await low.run(read_stream, write_stream, low.create_initialization_options())


def _repair_body(body: bytes) -> bytes:
    """A request body with bytes that are not UTF-8 and lone surrogate escapes made U+FFFD,
    so the request parses and its tool names the bad parameter (see :class:`_RepairingStdin`)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = body.decode("utf-8", errors="replace")
    else:
        if "\\u" not in text:
            return body
    return repair_json_line(text).encode("utf-8")


class _HttpGate:
    """ASGI wrapper for the streamable-HTTP app: bearer token, and the handshake era only.

    Sessions belong to connections, and only the handshake era (2025) has them over HTTP, so
    a 2026-07-28 request is answered "unsupported protocol version" listing the handshake
    versions; clients then fall back to the initialize handshake.
    """

    def __init__(self, app: Any, token: str | None) -> None:
        self.app = app
        self.token = token.encode() if token else None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.token is not None and not hmac.compare_digest(
                headers.get(b"authorization", b""), b"Bearer " + self.token):
            return await _respond(send, 401, {"error": "unauthorized: send Authorization: Bearer "
                                                       "<token>"}, [(b"www-authenticate", b"Bearer")])
        version = headers.get(b"mcp-protocol-version", b"").decode("latin-1")
        if version and version not in HANDSHAKE_PROTOCOL_VERSIONS:
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body") or len(body) > 1 << 20:
                    break
            try:
                request_id = json.loads(body).get("id")
            except (ValueError, AttributeError):
                request_id = None
            return await _respond(send, 400, {"jsonrpc": "2.0", "id": request_id, "error": {
                "code": -32022, "message": f"unsupported protocol version {version}: this server "
                "keeps SSH sessions per connection and speaks the initialize handshake",
                "data": {"supported": list(HANDSHAKE_PROTOCOL_VERSIONS), "requested": version}}})
        if scope.get("method") == "POST":
            scope, receive = await _repaired(scope, receive)
        await self.app(scope, receive, send)


async def _repaired(scope: Any, receive: Any) -> tuple[Any, Any]:
    """The request with its body read and repaired (:func:`_repair_body`); others unchanged."""
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] != "http.request":       # the client went away: pass that on
            async def gone() -> Any:
                return message
            return scope, gone
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"".join(chunks)
    fixed = _repair_body(body)
    if fixed is not body:
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
        scope = {**scope, "headers": headers + [(b"content-length", str(len(fixed)).encode())]}
    replayed = False

    async def replay() -> Any:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": fixed, "more_body": False}
        return await receive()
    return scope, replay


async def _respond(send: Any, status: int, payload: dict[str, Any],
                   headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def parse_http(text: str) -> tuple[str, int]:
    """``--http HOST:PORT`` (the agent's address parser, with this option's name)."""
    return parse_listen(text, "--http")


def _read_token(token_file: str | None, token_env: str | None) -> str | None:
    if token_file:
        try:
            token = Path(token_file).expanduser().read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"cannot read the token file {token_file}: {exc.strerror}") from None
        if not token:
            raise ValueError(f"the token file {token_file} is empty")
        return token
    name = token_env or DEFAULT_TOKEN_ENV
    token = os.environ.get(name, "").strip()
    if token_env and not token:
        raise ValueError(f"the environment variable {name} (--token-env) is not set")
    return token or None


def serve(inventory_path: str | None, *, http: str | None = None, token_file: str | None = None,
          token_env: str | None = None, agents: list[str] | None = None,
          audit_log: str | None = None, workflows: str | None = None) -> int:
    """Run the MCP server: stdio, or streamable HTTP on ``http`` = HOST:PORT. Returns an exit code.

    ``agents`` are ``SITE=HOST:PORT`` strings (``--agent``): route the sessions of hosts with
    ``client: SITE`` to that site's agent (loopback addresses only: the protocol has no auth).

    Beyond loopback a bearer token is required: from ``token_file``, else the environment
    variable ``token_env`` (default ``PHONEHOME_JUMP_MCP_TOKEN``). A token given on loopback
    is enforced too.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                            format="phonehome-jump mcp: %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
    path = inventory_path or os.environ.get(ENV_VAR) or str(Path.cwd() / "inventory")
    try:
        routes = parse_agents(agents)
    except ValueError as exc:
        print(f"phonehome-jump: {exc}", file=sys.stderr)
        return 2
    try:
        if workflows is None and (Path.cwd() / "workflows").is_dir():
            workflows = str(Path.cwd() / "workflows")
        server = build_server(path, agents=routes, workflows=workflows, audit_path=audit_log)
    except PhonehomeJumpError as err:
        print(f"phonehome-jump: {err}", file=sys.stderr)
        return 2
    if http is None:
        try:
            anyio.run(_serve_stdio, server)
        except KeyboardInterrupt:
            return 130
        return 0
    try:
        host, port = parse_http(http)
        token = _read_token(token_file, token_env)
        if token is not None and len(token) < MIN_TOKEN_LENGTH:
            raise ValueError(f"the bearer token is shorter than {MIN_TOKEN_LENGTH} characters")
    except ValueError as exc:
        print(f"phonehome-jump: {exc}", file=sys.stderr)
        return 2
    if token is None and not is_loopback(host):
        print(f"phonehome-jump: refusing to serve MCP on {host}:{port} without a bearer token: "
              f"anyone who can reach it could run commands on every inventory host.\n"
              f"  try: --token-file FILE, or set {DEFAULT_TOKEN_ENV} (e.g. to the output of "
              f"`python -c 'import secrets; print(secrets.token_urlsafe(32))'`), or bind "
              f"127.0.0.1", file=sys.stderr)
        return 2

    import uvicorn

    app = _HttpGate(server.streamable_http_app(host=host), token)
    where = f"[{host}]" if ":" in host else host
    print(f"phonehome-jump: MCP on http://{where}:{port}/mcp"
          f"{' (bearer token required)' if token else ''}", file=sys.stderr, flush=True)
    uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning")).run()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m phonehome_jump.mcp_server",
                                description="Serve the phonehome-jump MCP tools (stdio by default).")
    p.add_argument("--inventory", help=f"inventory file or directory (default: ${ENV_VAR}, "
                                       "else ./inventory/)")
    p.add_argument("--http", metavar="HOST:PORT", help="serve streamable HTTP instead of stdio "
                                                       "(HOST defaults to 127.0.0.1)")
    p.add_argument("--token-file", help="file holding the bearer token HTTP clients must send")
    p.add_argument("--token-env", help=f"environment variable holding the token "
                                       f"(default {DEFAULT_TOKEN_ENV})")
    p.add_argument("--agent", action="append", metavar="SITE=HOST:PORT",
                   help="route hosts with `client: SITE` to the agent at HOST:PORT (repeatable)")
    args = p.parse_args(argv)
    return serve(args.inventory, http=args.http, token_file=args.token_file,
                 token_env=args.token_env, agents=args.agent)


if __name__ == "__main__":
    sys.exit(main())
