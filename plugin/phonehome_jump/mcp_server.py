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
import json
import logging
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.resolve import Elicit, ElicitationResult, Resolve
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import BaseModel, Field, SerializeAsAny, ValidationError

from . import __version__
from .errors import PhonehomeJumpError, SessionBusyError, UnknownSessionError
from .inputs import Seconds, Whole, repair_json_line
from .inventory import ENV_VAR, Inventory, Target
from .limits import add_limit_options, limit_options
from .manager import SessionInfo, SessionManager
from .mcp_approval import Approve, Gate, decide, gate, question
from .mcp_service import Runtime
from .mcp_stdio import serve_stdio
from .redact import RedactingFilter
from .routing import Router, check_sites, parse_agents
from .session import CommandResult
from .wire import is_loopback, parse_listen

log = logging.getLogger(__name__)

MAX_WAIT = 50.0                 # MCP clients give up on a request after about 60 s
# Every tool result stays under this many characters of JSON (about 10k tokens; Claude Code
# refuses tool output above 25k tokens): command output is capped at 16,000 characters and
# inventory_list pages shrink to fit INVENTORY_BUDGET.
RESULT_BUDGET = 40_000
INVENTORY_BUDGET = 16_000
INVENTORY_PAGE = 50             # inventory_list's default page size
INVENTORY_MAX_PAGE = 500
MAX_GROUPS = 100                # group names listed in one inventory_list result
STRUCTURED_SINCE = "2025-06-18"  # the first protocol version with structuredContent
DEFAULT_TOKEN_ENV = "PHONEHOME_JUMP_MCP_TOKEN"
MIN_TOKEN_LENGTH = 16

INSTRUCTIONS = """\
SSH sessions to the hosts of an inventory, reached through their jump-host chains.
Find hosts with inventory_list (a page at a time: filter by group/tag/query, follow
next_offset) / inventory_show, open a persistent shell with ssh_session_open
(state such as cwd and variables persists between commands), run commands with
ssh_session_command, answer prompts with ssh_session_send (secret=true for passwords) and
collect output with ssh_session_read. A command still running after `wait` returns
running=true: read it later, answer it, or send control='c'. Large output is capped: page it
with ssh_session_read(offset=...). Close sessions when done. ssh_run is a one-shot command.
A session whose hop or shell went away is dead (the error names the hop); ssh_session_revive
reopens it under the same id in the same directory (shell variables are lost). For a [sudo] password prompt use ssh_session_send(sudo_password=true): the inventory's
password is typed without you seeing it. Network devices (framing native): commands run one
line at a time; error_detected flags the device's error message, mode the CLI mode; use
ssh_session_enable, ssh_session_config (configuration lines, errors checked, commit) and
ssh_session_parse (structured rows). The inventory's policy may refuse a command (the
error names the rule). A command the policy asks to confirm is shown to the user, who approves
or declines it in their client; you cannot approve it yourself (confirm=true counts only where
the inventory allows it for clients that cannot ask their user)."""


# --------------------------------------------------------------------------- results

class Hop(BaseModel):
    name: str
    host: str
    port: int
    username: str


class HostBrief(BaseModel):
    """What inventory_list returns per host by default (detail=false)."""

    name: str = Field(description="Inventory name; pass it to ssh_session_open or ssh_run.")
    device_type: str = Field(description="netmiko device type; linux-like types get exact framing.")
    chain: list[str] = Field(description="Jump hosts, first hop first; empty when dialed directly.")
    tags: list[str]
    description: str | None


class HostSummary(HostBrief):
    """inventory_list(detail=true): address, user, groups and site as well."""

    host: str
    port: int
    username: str
    groups: list[str]
    client: str | None = Field(None, description="ET Phone Home client site that reaches the host.")


class HostList(BaseModel):
    hosts: list[SerializeAsAny[HostBrief]]
    total: int = Field(description="Hosts matching the filters (all pages).")
    offset: int = Field(description="Where this page starts among the matching hosts.")
    next_offset: int | None = Field(description="Pass as offset for the next page; null on the "
                                                "last page.")
    groups: list[str] = Field(description="Groups of the inventory, for the group filter "
                                          f"(first {MAX_GROUPS}; see groups_total).")
    groups_total: int


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
    mode: str | None = Field(None, description="Network devices: the CLI mode now.")


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
    error_detected: bool = Field(False, description="Network devices: the output carries the "
                                                    "platform's error marker (% Invalid input, "
                                                    "syntax error, Error:).")
    error: str | None = Field(None, description="The line with that error marker.")
    mode: str | None = Field(None, description="Network devices: the CLI mode now (exec, enable, "
                                               "config, user-view, system-view).")
    notice: str | None = Field(None, description="Framing had to recover: earlier output was "
                                                 "dropped before this command's echo.")


class ParsedOutput(Output):
    platform: str = Field(description="The ntc-templates platform used.")
    parsed: list[dict[str, Any]] = Field(description="Rows of the template's fields.")


class ConfigLineOut(BaseModel):
    line: str
    output: str
    error: str | None


class ConfigOut(BaseModel):
    session_id: str
    host: str
    lines: list[ConfigLineOut] = Field(description="Each line sent, with its output and error.")
    error_detected: bool
    error: str | None = Field(description="The first error, after the line that caused it.")
    not_sent: list[str] = Field(description="Lines after the error, never sent.")
    committed: bool
    rolled_back: bool = Field(description="The uncommitted candidate was discarded after an error.")
    mode: str | None = Field(description="The CLI mode afterwards.")


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


def _host_summary(t: Target, detail: bool = True) -> HostBrief:
    s = t.summary()
    model = HostSummary if detail else HostBrief
    return model(chain=[h["name"] for h in s["chain"]],
                 **{k: s[k] for k in model.model_fields if k != "chain"})


def _host_page(inv: Inventory, group: str | None, tag: str | None, query: str | None,
               limit: int, offset: int, detail: bool) -> HostList:
    """One page of matching hosts, shrunk until its JSON fits INVENTORY_BUDGET."""
    matching = inv.targets(group, tag, query)
    groups = inv.groups()
    hosts = [_host_summary(t, detail) for t in matching[offset:offset + limit]]
    while True:
        end = offset + len(hosts)
        page = HostList(hosts=hosts, total=len(matching), offset=offset,
                        next_offset=end if end < len(matching) else None,
                        groups=groups[:MAX_GROUPS], groups_total=len(groups))
        if len(hosts) <= 1 or len(page.model_dump_json()) <= INVENTORY_BUDGET:
            return page
        hosts = hosts[: max(1, len(hosts) * 3 // 4)]


def _tool_result(ctx: Context, model: BaseModel, full_text: bool,
                 summary: Callable[[dict[str, Any]], str] | None = None) -> CallToolResult:
    """A structured result whose text block does not repeat the output when it need not.

    Clients of protocol 2025-06-18 and later read structuredContent (Claude Code gives the
    model only structuredContent when a result has it); the spec's serialized-JSON text block
    is a backwards-compatibility SHOULD, so they get a one-line summary instead of the output
    a second time. Older clients, and every client with ``serve --full-text-results``, get
    the whole JSON.
    """
    data = model.model_dump(mode="json")
    version = ctx.protocol_version or ""
    if full_text or version < STRUCTURED_SINCE:
        text = model.model_dump_json()
    elif summary is not None:
        text = summary(data)
    else:
        state = ("running" if data.get("running") else
                 f"exit status {data['exit_status']}" if data.get("exit_status") is not None
                 else "done")
        text = (f"{data['session_id']}: {state}; {len(data['output'])} characters of output "
                f"(of {data['total']}), cwd {data.get('cwd')}; the output and every field are "
                "in structuredContent")
        if data.get("note"):
            text += f"; note: {data['note']}"
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=data)


def _hosts_summary(d: dict[str, Any]) -> str:
    names = ", ".join(h["name"] for h in d["hosts"])
    more = (f"; next page: offset={d['next_offset']}" if d["next_offset"] is not None
            else "; last page")
    return (f"hosts {d['offset'] + 1}-{d['offset'] + len(d['hosts'])} of {d['total']}{more}: "
            f"{names} (details in structuredContent)")


def _left(start: float, wait: float) -> float:
    """What remains of a call's ``wait`` after it queued (time.monotonic based)."""
    return max(0.0, wait - (time.monotonic() - start))


def _busy_text(err: SessionBusyError) -> str:
    """A busy session, in the tools' terms: what runs and how to follow it."""
    follow = "ssh_session_read(session_id=..., wait=...) collects its output"
    if err.holder_left is not None:
        follow += (f" once the call now waiting on it returns (within {err.holder_left:.0f}s); "
                   "that call gets the output up to then")
    return (f"{err.where}: session busy: {err.what}. Nothing was sent.\n  try: {follow}; "
            "ssh_session_send(control='c') interrupts it; ssh_session_list shows the state")


def _session_out(i: SessionInfo) -> SessionOut:
    return SessionOut(session_id=i.id, host=i.host, chain=i.chain, state=i.state, cwd=i.cwd,
                      framing=i.framing, created=i.created, last_activity=i.last_activity,
                      dead_reason=i.dead_reason, mode=getattr(i, "mode", None))


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

@contextmanager
def _errors(tool: str) -> Any:
    """PhonehomeJumpError → its own text; anything else → logged, and a reference only."""
    try:
        yield
    except ToolError:
        raise
    except SessionBusyError as err:
        raise ToolError(_busy_text(err)) from None
    except PhonehomeJumpError as err:
        raise ToolError(str(err)) from None
    except Exception:
        ref = secrets.token_hex(4)
        log.exception("internal error in tool %s (ref %s)", tool, ref)
        raise ToolError(f"internal error in {tool} (ref {ref}); see the phonehome-jump "
                        "server log") from None


def _titled(mcp: MCPServer) -> None:
    """Every tool registered on ``mcp`` gets a top-level title: its annotations' title.

    Clients show the top-level ``title`` (annotations.title is the older place); tools added
    here or by other modules (workflows, files) get it without repeating it.
    """
    register = mcp.tool

    def tool(*args: Any, **kwargs: Any) -> Any:
        ann = kwargs.get("annotations")
        if kwargs.get("title") is None and ann is not None and ann.title:
            kwargs["title"] = ann.title
        return register(*args, **kwargs)
    mcp.tool = tool  # type: ignore[method-assign]


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
                 calls_per_client: int | None = None, full_text_results: bool = False,
                 **manager_kwargs: Any) -> MCPServer:
    """The MCP server over ``inventory`` (an Inventory, or a file/directory to load).

    ``agents`` maps ET Phone Home client sites to their agents' (host, port): sessions of
    hosts with that ``client`` run there. ``workflows``: a directory of workflow files for
    workflow_list/run/status (none: no workflow tools; ``serve`` defaults it to ./workflows
    when that exists). ``calls_per_client``: blocking calls one client runs at once (the
    rest queue; :mod:`.mcp_service`). ``full_text_results``: repeat every result's JSON in its
    text block. ``manager_kwargs`` go to :class:`SessionManager` (max_sessions,
    max_per_client, idle_timeout, running_timeout, cap, ...).
    """
    inv = inventory if isinstance(inventory, Inventory) else Inventory.load(inventory)
    check_sites(inv, agents or {})
    rt = Runtime(inv, manager_kwargs, agents, **(
        {"calls_per_client": calls_per_client} if calls_per_client else {}))
    full_text = full_text_results
    mcp: MCPServer = _Server("phonehome-jump", version=__version__, instructions=INSTRUCTIONS,
                             lifespan=rt.lifespan, log_level="WARNING")
    mcp.phonehome_jump = rt          # type: ignore[attr-defined]  # for tests and embedding
    _titled(mcp)

    @mcp.tool(annotations=_annotations("List inventory hosts", read_only=True, idempotent=True,
                                       open_world=False))
    async def inventory_list(
        group: Annotated[str | None, Field(description="Only hosts in this group.")] = None,
        tag: Annotated[str | None, Field(description="Only hosts with this tag.")] = None,
        query: Annotated[str | None, Field(description="Case-insensitive text in the name, "
                                                       "address or description.")] = None,
        limit: Annotated[int, Field(ge=1, le=INVENTORY_MAX_PAGE,
                                    description="Hosts per page (a page may hold fewer to stay "
                                                "small; follow next_offset).")] = INVENTORY_PAGE,
        offset: Annotated[int, Field(ge=0, description="Start at this matching host (the "
                                                       "previous page's next_offset).")] = 0,
        detail: Annotated[bool, Field(description="Also address, port, user, groups and site "
                                                  "(default: name, device type, chain, tags, "
                                                  "description).")] = False,
        *, ctx: Context,
    ) -> Annotated[CallToolResult, HostList]:
        """List the hosts sessions can be opened to, a page at a time: device type, tags, chain.

        Filter with group/tag/query; page with offset=next_offset until next_offset is null.
        """
        with _errors("inventory_list"):
            page = _host_page(inv, group, tag, query, limit, offset, detail)
            return _tool_result(ctx, page, full_text, _hosts_summary)

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
                f"connecting to {host} via {chain}", owner=owner)
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
    ) -> Annotated[CallToolResult, Output]:
        """Run a command in the session's shell and return its output, exit status and cwd.

        Returns early with running=true when it is still running after `wait`, when the output
        matches `until`, or when it asks for input (awaiting_input=true).
        """
        with _errors("ssh_session_command"):
            owner, w, start = rt.owner(ctx), _wait(wait), time.monotonic()
            approval = decide(g, answer, confirm=confirm, actor=_actor(ctx, owner),
                              record=rt.manager.record, session_id=session_id)
            r = await rt.call_with_progress(
                ctx, lambda: rt.manager.command(session_id, command, owner=owner,
                                                wait=_left(start, w), until=until,
                                                confirm=approval),
                f"running on {session_id}", total=w, owner=owner, wait=w)
            return _tool_result(ctx, Output(**_output(session_id, r, waited=w)), full_text)

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
                                                         "c (interrupt), d, z, \\, [ (Esc), "
                                                         "l, u; also 'ctrl-c' or '^C'. On a Linux "
                                                         "session the terminal is raw: d ends the "
                                                         "input only of programs that read keys "
                                                         "themselves (python, a REPL), not of "
                                                         "cat or read; give those their input in "
                                                         "the command (a here-document).")] = None,
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
            # never queued behind the client's long calls: a Ctrl-C must get through at once
            await rt.fast(lambda: rt.manager.send(session_id, text, owner=owner, newline=newline,
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
    ) -> Annotated[CallToolResult, Output]:
        """Collect new output of the running (or last) command, or page its output by offset."""
        with _errors("ssh_session_read"):
            owner, w, start = rt.owner(ctx), _wait(wait), time.monotonic()

            def read() -> CommandResult:
                return rt.manager.read(session_id, owner=owner, wait=_left(start, w), until=until,
                                       offset=offset)
            r = (await rt.call_with_progress(ctx, read, f"reading {session_id}", total=w,
                                             owner=owner, wait=w) if w
                 else await rt.call(read, owner=owner, wait=w))
            return _tool_result(ctx, Output(**_output(session_id, r, waited=w if w else None)),
                                full_text)

    @mcp.tool(annotations=_annotations("List open sessions", read_only=True, idempotent=True,
                                       open_world=False))
    async def ssh_session_list(ctx: Context) -> SessionList:
        """The sessions this client has open: host, state (idle, running, dead), cwd."""
        with _errors("ssh_session_list"):
            owner = rt.owner(ctx)
            infos = await rt.fast(lambda: rt.manager.list(owner=owner))   # no SSH: never queues
            return SessionList(sessions=[_session_out(i) for i in infos])

    @mcp.tool(annotations=_annotations("Close a session", destructive=True, idempotent=True))
    async def ssh_session_close(session_id: SessionId, ctx: Context) -> Closed:
        """Close the session (a command still running in it is killed)."""
        with _errors("ssh_session_close"):
            owner = rt.owner(ctx)
            await rt.call(lambda: rt.manager.close(session_id, owner=owner), owner=owner)
            return Closed(session_id=session_id, closed=True)

    @mcp.tool(annotations=_annotations("Revive a dead session"))
    async def ssh_session_revive(session_id: SessionId, ctx: Context) -> SessionOut:
        """Reopen a dead session (its hop or shell went away) under the same id, back in its
        working directory; shell variables and jobs of the old shell are gone."""
        with _errors("ssh_session_revive"):
            owner = rt.owner(ctx)
            info = await rt.call_with_progress(
                ctx, lambda: rt.manager.revive(session_id, owner=owner),
                f"reopening {session_id}", owner=owner)
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
    ) -> Annotated[CallToolResult, RunOutput]:
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
                f"connecting to {host}", owner=owner)
            start = time.monotonic()
            try:
                r = await rt.call_with_progress(
                    ctx, lambda: m.command(info.id, command, owner=owner, wait=_left(start, w),
                                           confirm=approval),
                    f"running on {host}", total=w, owner=owner, wait=w)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await rt.fast(lambda: _close_quietly(m, info.id, owner))
                raise
            if not r.running:
                await rt.fast(lambda: _close_quietly(m, info.id, owner))
            return _tool_result(ctx, RunOutput(host=host, session_open=r.running,
                                               **_output(info.id, r, waited=w)), full_text)

    def _device(session_id: str, owner: str) -> tuple[Target, str | None]:
        for i in rt.manager.list(owner=owner):
            if i.id == session_id:
                return inv.target(i.host), getattr(i, "mode", None)
        raise UnknownSessionError(f"no open session {session_id!r}", where="session manager",
                                  hint="open one with ssh_session_open (ssh_session_list shows yours)")

    @mcp.tool(annotations=_annotations("Enter a network device's privileged mode", destructive=True))
    async def ssh_session_enable(session_id: SessionId, ctx: Context, wait: Wait = 20.0) -> Output:
        """Network devices: run `enable`, typing the inventory's enable secret at the device's
        Password: prompt (you never see it). The result's `mode` says where the session is."""
        with _errors("ssh_session_enable"):
            owner, w = rt.owner(ctx), _wait(wait)

            def go() -> CommandResult:
                from .modes import enable
                target, _ = _device(session_id, owner)
                return enable(rt.manager, session_id, target, owner=owner, wait=w)
            r = await rt.call_with_progress(ctx, go, f"enable on {session_id}", total=w)
            return Output(**_output(session_id, r, waited=w))

    @mcp.tool(annotations=_annotations("Apply configuration lines to a network device",
                                       destructive=True))
    async def ssh_session_config(
        session_id: SessionId,
        lines: Annotated[list[str], Field(description="Configuration lines, one per item, as "
                                                      "typed in configuration mode.")],
        ctx: Context,
        commit: Annotated[bool, Field(description="Commit at the end (Junos and other platforms "
                                                  "with a candidate configuration).")] = False,
        stop_on_error: Annotated[bool, Field(description="Stop at the first line the device "
                                                         "rejects (the rest is not sent).")] = True,
        wait: Wait = 20.0,
    ) -> ConfigOut:
        """Network devices: enter configuration mode, send the lines one by one (each checked
        for the platform's error markers), commit if asked, and return to the mode before.
        Every line is checked against the inventory's policy before anything is sent; a line
        the policy asks to confirm is refused here (send it with ssh_session_command, where
        the user approves it)."""
        with _errors("ssh_session_config"):
            owner, w = rt.owner(ctx), _wait(wait)

            def go() -> Any:
                from .modes import apply_config
                target, mode = _device(session_id, owner)
                return apply_config(rt.manager, session_id, target, lines, owner=owner,
                                    commit=commit, wait=w, confirm=False,
                                    stop_on_error=stop_on_error, mode=mode)
            c = await rt.call_with_progress(ctx, go, f"configuring {session_id}", total=w)
            return ConfigOut(session_id=session_id, **c.to_dict())

    @mcp.tool(annotations=_annotations("Run a command and parse its output", destructive=True))
    async def ssh_session_parse(
        session_id: SessionId,
        command: Annotated[str, Field(description="A show/display command ntc-templates knows "
                                                  "for the device's platform.")],
        ctx: Context,
        g: Annotated[Gate, Resolve(command_gate)],
        answer: Annotated[ElicitationResult[Approve], Resolve(command_question)],
        wait: Wait = 20.0,
        confirm: Confirm = False,
    ) -> ParsedOutput:
        """Network devices: run a command and return its output as rows (TextFSM with the
        ntc-templates index), or a clear error when no template fits."""
        with _errors("ssh_session_parse"):
            owner, w = rt.owner(ctx), _wait(wait)
            approval = decide(g, answer, confirm=confirm, actor=_actor(ctx, owner),
                              record=rt.manager.record, session_id=session_id)

            def go() -> tuple[CommandResult, Any]:
                from .parsing import parse_result
                target, _ = _device(session_id, owner)
                r = rt.manager.command(session_id, command, owner=owner, wait=w, confirm=approval)
                whole = r
                if r.truncated and not r.running:
                    parts, offset = [], 0
                    while True:
                        page = rt.manager.read(session_id, owner=owner, offset=offset)
                        parts.append(page.output)
                        if page.next_offset >= page.total or page.next_offset <= offset:
                            break
                        offset = page.next_offset
                    whole = CommandResult(**{**r.__dict__, "output": "".join(parts),
                                             "truncated": False, "omitted": None})
                return r, parse_result(target.device_type, whole, host=target.name)
            r, p = await rt.call_with_progress(ctx, go, f"running on {session_id}", total=w)
            return ParsedOutput(platform=p.platform, parsed=p.rows, **_output(session_id, r, waited=w))

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

def _repair_body(body: bytes) -> bytes:
    """A request body with bytes that are not UTF-8 and lone surrogate escapes made U+FFFD,
    so the request parses and its tool names the bad parameter (see :class:`.mcp_stdio._RepairingStdin`)."""
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
          audit_log: str | None = None, workflows: str | None = None,
          limits: Mapping[str, Any] | None = None, calls_per_client: int | None = None,
          client_timeout: float | None = None, full_text_results: bool = False) -> int:
    """Run the MCP server: stdio, or streamable HTTP on ``http`` = HOST:PORT. Returns an exit code.

    ``agents`` are ``SITE=HOST:PORT`` strings (``--agent``): route the sessions of hosts with
    ``client: SITE`` to that site's agent (loopback addresses only: the protocol has no auth).

    Beyond loopback a bearer token is required: from ``token_file``, else the environment
    variable ``token_env`` (default ``PHONEHOME_JUMP_MCP_TOKEN``). A token given on loopback
    is enforced too.

    ``limits`` override the inventory's ``limits:`` (idle_timeout, running_timeout,
    max_sessions, max_per_host, max_per_client). Over HTTP a client with no request in flight
    and no open event stream for ``client_timeout`` seconds (default 60) is gone: its MCP
    session ends and its SSH sessions close. TCP keepalive and a user timeout end the
    connections of a peer that vanished without closing them (within about 45 s). SIGTERM
    closes every SSH session at once, then stops within SHUTDOWN_GRACE seconds.
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
        server = build_server(path, agents=routes, workflows=workflows, audit_path=audit_log,
                              calls_per_client=calls_per_client,
                              full_text_results=full_text_results, **dict(limits or {}))
    except PhonehomeJumpError as err:
        print(f"phonehome-jump: {err}", file=sys.stderr)
        return 2
    if http is None:
        rt_stdio: Runtime = server.phonehome_jump   # type: ignore[attr-defined]
        signal.signal(signal.SIGTERM, lambda signum, _frame: _exit_now(rt_stdio, signum))
        try:
            anyio.run(serve_stdio, server)
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

    rt: Runtime = server.phonehome_jump   # type: ignore[attr-defined]
    app = _HttpGate(server.streamable_http_app(
        host=host, session_idle_timeout=client_timeout or CLIENT_TIMEOUT), token)
    try:
        sock = _listen(host, port)
    except OSError as exc:
        print(f"phonehome-jump: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        return 2
    where = f"[{host}]" if ":" in host else host
    print(f"phonehome-jump: MCP on http://{where}:{port}/mcp"
          f"{' (bearer token required)' if token else ''}", file=sys.stderr, flush=True)
    _uvicorn(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=SHUTDOWN_GRACE),
             rt.stop_sessions).run(sockets=[sock])
    return 0


def _exit_now(rt: Runtime, signum: int) -> None:
    """stdio and SIGTERM (an MCP client quitting): close every session, audited, and exit at
    once; a call still waiting on output is abandoned (nothing more is sent)."""
    try:
        rt.shutdown_now()
    except Exception:   # exiting regardless: the kernel closes what is left
        log.warning("closing the sessions at SIGTERM failed", exc_info=True)
    finally:
        os._exit(128 + signum)


CLIENT_TIMEOUT = 60.0       # HTTP: no request and no event stream this long = the client is gone
SHUTDOWN_GRACE = 3          # SIGTERM: open HTTP streams get this long before they are cut
KEEPALIVE = (15, 5, 3)      # TCP keepalive idle, interval, probes: a vanished peer in ~30 s
# ... and while the server has data in flight to it (event-stream pings), keepalive does not
# probe: then unacknowledged data for this long ends the connection
USER_TIMEOUT_MS = 30_000


def _listen(host: str, port: int) -> Any:
    """The listening socket, with TCP keepalive and a user timeout that accepted connections
    inherit (Linux): a peer that vanished without closing is dropped within about 45 s."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in zip(("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT", "TCP_USER_TIMEOUT"),
                           (*KEEPALIVE, USER_TIMEOUT_MS)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _uvicorn(config: Any, on_exit: Callable[[], None]) -> Any:
    """uvicorn, whose SIGTERM/SIGINT first closes every SSH session (from a thread), so calls
    waiting on output return at once ("closed at server shutdown") instead of holding the
    graceful shutdown for their whole wait."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if not self.should_exit:
                threading.Thread(target=on_exit, name="phj-shutdown", daemon=True).start()
            super().handle_exit(sig, frame)

    return Server(config)


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
    add_limit_options(p)
    args = p.parse_args(argv)
    return serve(args.inventory, http=args.http, token_file=args.token_file,
                 token_env=args.token_env, agents=args.agent, **service_options(args))


def service_options(args: argparse.Namespace) -> dict[str, Any]:
    """serve()'s keyword arguments from the options of :func:`add_limit_options`."""
    return dict(limits=limit_options(args), calls_per_client=args.calls_per_client,
                client_timeout=args.client_timeout, full_text_results=args.full_text_results)


if __name__ == "__main__":
    sys.exit(main())
