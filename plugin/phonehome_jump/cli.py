"""The ``phonehome-jump`` command: a thin adapter over the inventory and the session manager.

    phonehome-jump [--inventory PATH] [--audit-log PATH] [-v] COMMAND ...

    inventory check [PATH]                         validate, print a one-line summary
    inventory list [--group G] [--tag T] [--query Q] [--json]
    inventory show HOST [--json]                   resolved target: chain, auth references, source
    inventory import ssh-config|nornir|ansible PATH… [-o FILE]   write an inventory from theirs
    inventory export ssh-config [-o FILE]          an OpenSSH config with the same chains
    cp SRC DEST [--resume] [--confirm]             copy a file, one side HOST:PATH (like scp)
    run HOST [--timeout S] [--confirm] [--sudo-password] -- COMMAND...   like ssh HOST COMMAND
    shell HOST [--timeout S] [--confirm]           a terminal like ssh -t (stdin a tty), or scripted
    inventory check --keys [--host H]... [--write]   every hop's host key at once
    workflow check|run FILE ...                    multi-step YAML runbooks (workflow.py)
    serve [--http HOST:PORT] [--agent SITE=HOST:PORT]... [--workflows DIR]   the MCP server
    agent [--listen HOST:PORT] [--state FILE]      the ET Phone Home agent protocol (agent_server)
    audit verify [PATH]                            check the audit log's hash chain (0/1/2)

Exit codes: the remote exit status for ``run`` and ``shell`` (scripted: its last command's);
0 ok; 1 other phonehome-jump errors (session, secrets, limits); 2 usage and inventory errors
(including unknown host names); 124 a command still running after --timeout (or, on a
network device, waiting for input that ``run`` cannot give); 130 interrupted; 141 stdout closed (broken pipe); 255 connecting
failed (hop unreachable, authentication, host key), like ssh; 70 an internal error; 77 the
inventory's command policy refused the command (see --confirm). ``workflow`` has its own
codes for schedulers: 0 all hosts passed, 1 a host failed, 2 invalid, 3 could not run (lock).

No SSH logic lives here: every connection goes through :class:`SessionManager`. Errors are
printed as ``phonehome-jump: <message>``; tracebacks only go to the log with ``-v``.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from . import __version__
from .audit import ENV_AUDIT
from .errors import ConnectError, InputError, InventoryError, PhonehomeJumpError, PolicyError
from .inputs import count_arg, seconds_arg
from .inventory import ENV_VAR, Inventory, Target
from .limits import add_limit_options
from .output import CommandResult, pages
from .redact import REDACTOR, RedactingFilter, mask

if TYPE_CHECKING:   # the manager pulls in paramiko: imported when a command connects
    from .manager import SessionInfo, SessionManager

log = logging.getLogger(__name__)

PROG = "phonehome-jump"
DEFAULT_INVENTORY = "inventory"
DEFAULT_TIMEOUT = 600.0

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2          # argparse's own code, and inventory problems
EXIT_SOFTWARE = 70      # sysexits EX_SOFTWARE: a bug in phonehome-jump
EXIT_POLICY = 77        # sysexits EX_NOPERM: the inventory's policy refused the command
EXIT_TIMEOUT = 124      # like timeout(1)
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_PIPE = 141         # 128 + SIGPIPE
EXIT_CONNECT = 255      # like ssh



def __getattr__(name: str) -> Any:
    """``cli.SessionManager``/``cli.SessionInfo`` without importing paramiko at start."""
    if name in ("SessionManager", "SessionInfo"):
        from . import manager
        return getattr(manager, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _no_invoke() -> None:
    """Keep paramiko from importing ``invoke`` in this process (tens of ms per start).

    paramiko needs it only for ``Match exec`` in an ssh_config file, which phonehome-jump
    never reads; paramiko treats a missing invoke as optional. Only the command line does
    this: a program that embeds the package keeps its own imports.
    """
    if "invoke" not in sys.modules and "paramiko" not in sys.modules:
        sys.modules["invoke"] = None     # type: ignore[assignment]  # import fails at once


class _Timeout(Exception):
    """A command did not finish within --timeout (already reported)."""


# --------------------------------------------------------------------------- parser

def _timeout(text: str) -> float:
    return seconds_arg(text)    # finite, more than 0, at most a week


def build_parser() -> argparse.ArgumentParser:
    # Global options are accepted before and after the command; the sub-level copies have
    # their own dest so that a later default never overwrites an earlier value.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--inventory", dest="sub_inventory", metavar="PATH",
                        default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("-v", "--verbose", dest="sub_verbose", action="count",
                        default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--audit-log", dest="sub_audit_log", metavar="PATH",
                        default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    parser = argparse.ArgumentParser(
        prog=PROG, description="Persistent, prompt-framed SSH sessions through jump-host chains.",
        epilog=f"The inventory is --inventory PATH, else ${ENV_VAR}, else ./{DEFAULT_INVENTORY}/. "
               "Exit codes: the remote status (run, shell), 1 error, 2 usage/inventory, "
               "70 internal error, 77 refused by the host's policy (see --confirm), "
               "124 timeout, 130 interrupted, 141 stdout closed, 255 connect failed "
               "(or `shell` left with ~.). workflow: 0 passed, 1 a host failed, 2 invalid, "
               "3 locked.")
    parser.add_argument("--inventory", metavar="PATH",
                        help=f"inventory file or directory (default: ${ENV_VAR}, "
                             f"else ./{DEFAULT_INVENTORY}/)")
    parser.add_argument("--audit-log", metavar="PATH",
                        help=f"append JSON Lines audit records here (default: ${ENV_AUDIT}, "
                             "else the inventory's audit.path, else none)")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log to stderr: -v info, -vv debug (with tracebacks)")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    inv = commands.add_parser("inventory", parents=[common], help="check, list and show hosts",
                              description="Check, list and show the inventory.")
    inv_cmds = inv.add_subparsers(dest="inventory_command", metavar="ACTION", required=True)
    p = inv_cmds.add_parser("check", parents=[common], help="validate the inventory",
                            description="Load and validate the inventory; print a summary.")
    p.add_argument("path", nargs="?", metavar="PATH",
                   help="inventory file or directory (default: the global inventory)")
    p.add_argument("--keys", action="store_true",
                   help="also walk each host's chain and show every hop's host key at once: "
                        "known, changed, or missing with the known_hosts line to add (on a "
                        "terminal you confirm each new fingerprint to reach the hops behind it)")
    p.add_argument("--host", action="append", metavar="NAME", dest="key_hosts",
                   help="with --keys: only this host's chain (repeatable; default every host)")
    p.add_argument("--write", action="store_true",
                   help="with --keys: append the keys you confirmed to their known_hosts files")
    p.set_defaults(func=cmd_inventory_check)
    p = inv_cmds.add_parser("list", parents=[common], help="list hosts",
                            description="List hosts: name, host, device type, chain, tags.")
    p.add_argument("--group", metavar="G", help="only hosts in group G")
    p.add_argument("--tag", metavar="T", help="only hosts tagged T")
    p.add_argument("--query", metavar="Q",
                   help="case-insensitive substring of name, address or description")
    p.add_argument("--json", action="store_true", help="print a JSON list of host summaries")
    p.set_defaults(func=cmd_inventory_list)
    p = inv_cmds.add_parser("show", parents=[common], help="show one resolved host",
                            description="Show a resolved host: chain, auth references (never "
                                        "secret values) and where it is defined.")
    p.add_argument("host", metavar="HOST")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_inventory_show)
    from .interop.commands import add_inventory_commands
    add_inventory_commands(inv_cmds, common, _load)
    from .cli_cp import add_cp_command
    add_cp_command(commands, common, _manager)

    p = commands.add_parser(
        "run", parents=[common], help="run one command on a host (like ssh HOST COMMAND)",
        usage=f"{PROG} run [-h] [--timeout S] [--confirm] [--sudo-password] HOST -- COMMAND...",
        description="Run COMMAND on HOST through its jump chain, like `ssh HOST COMMAND`: its "
                    "words are joined with spaces and interpreted by the remote shell; stdin "
                    "is forwarded (EOF at its end), stdout and stderr stay separate, and the "
                    "exit status is the remote command's (141 when stdout closes early). "
                    "Network devices (non-POSIX) run it in a framed session instead: output "
                    "on stdout, no stdin.")
    p.add_argument("host", metavar="HOST")
    p.add_argument("--timeout", type=_timeout, default=None, metavar="S",
                   help="give up after S seconds and exit 124 (default: no limit, like ssh)")
    p.add_argument("--confirm", action="store_true",
                   help="run it even if the host's policy asks for confirmation")
    p.add_argument("--json", action="store_true",
                   help="print the result as JSON (output, exit_status, error_detected, mode, ...)")
    p.add_argument("--parse", action="store_true",
                   help="network devices: also parse the output into rows (TextFSM / "
                        "ntc-templates) as the JSON's 'parsed'; implies --json")
    p.add_argument("--sudo-password", action="store_true",
                   help="answer sudo's password prompt with the host's sudo_password from the "
                        "inventory (the command then runs on a remote terminal: stderr merged "
                        "into stdout, stdin not forwarded)")
    p.add_argument("words", nargs="+", metavar="COMMAND",
                   help="the remote command; put it after -- when it has options")
    p.set_defaults(func=cmd_run)

    p = commands.add_parser(
        "shell", parents=[common], help="a shell on a host (interactive or scripted)",
        description="On a terminal: an interactive terminal through the chain, like "
                    "`ssh -t` (the remote pty is sized like yours and follows resizes; "
                    "full-screen programs, Ctrl-C/Z/\\ work; `~.` at the start of a line "
                    "leaves, `~?` lists the escapes); exits with the remote shell's status. "
                    "Each line entered at a prompt is checked against the host's policy and "
                    "audited (see README). With stdin not a terminal: run each line of stdin "
                    "as one command and print its output; exit with the last command's status.")
    p.add_argument("host", metavar="HOST")
    p.add_argument("--timeout", type=_timeout, default=DEFAULT_TIMEOUT, metavar="S",
                   help="scripted mode: per-command limit, then exit 124 "
                        f"(default {DEFAULT_TIMEOUT:g})")
    p.add_argument("--confirm", action="store_true",
                   help="let through commands the host's policy asks to confirm")
    p.set_defaults(func=cmd_shell)

    p = commands.add_parser(
        "serve", parents=[common], help="serve the MCP tools (stdio, or HTTP)",
        description="Serve the ssh_session_* and inventory MCP tools over stdio (for "
                    "`claude mcp add`), or streamable HTTP with --http. Beyond loopback a "
                    "bearer token is required.")
    p.add_argument("--http", metavar="HOST:PORT",
                   help="serve streamable HTTP at http://HOST:PORT/mcp (HOST defaults to 127.0.0.1)")
    p.add_argument("--token-file", metavar="FILE", help="file holding the bearer token")
    p.add_argument("--token-env", metavar="NAME",
                   help="environment variable holding the bearer token "
                        "(default PHONEHOME_JUMP_MCP_TOKEN)")
    p.add_argument("--agent", action="append", metavar="SITE=HOST:PORT",
                   help="run the sessions of hosts with `client: SITE` at that site's agent "
                        "(loopback HOST:PORT, e.g. the ET Phone Home tunnel port); repeatable")
    add_limit_options(p)
    p.set_defaults(func=cmd_serve)

    # ET Phone Home: the agent protocol (length-prefixed JSON) beside the client (agent_server.py)
    p = commands.add_parser(
        "agent", parents=[common], help="serve the ET Phone Home agent protocol on loopback",
        description="Serve ssh_session_* and inventory_* over the ET Phone Home agent protocol "
                    "(4-byte length + JSON) for the server behind the client's tunnel, or for "
                    "`serve --agent`. No authentication: loopback addresses only.")
    p.add_argument("--listen", default="127.0.0.1:7022", metavar="HOST:PORT",
                   help="loopback address (default 127.0.0.1:7022; port 0 picks a free one)")
    p.add_argument("--state", metavar="FILE",
                   help="non-secret session records for ssh_session_restore (default "
                        "$XDG_STATE_HOME/phonehome-jump/agent-sessions.json)")
    p.add_argument("--max-wait", type=_timeout, default=8.0, metavar="S",
                   help="cap on a request's wait (default 8: under the 10 s the ET Phone Home "
                        "server's health monitor leaves a queued call); keep it below "
                        "--caller-timeout")
    p.add_argument("--caller-timeout", type=_timeout, default=10.0, metavar="S",
                   help="the caller's shortest timeout (default 10): a slower reply may have "
                        "missed it, and its output comes back on the next read")
    p.set_defaults(func=cmd_agent)
    _add_workflow_commands(commands, common)
    from .cli_audit import add_commands as add_audit_commands   # audit verify
    add_audit_commands(commands, common)
    return parser


def cmd_serve(args: argparse.Namespace) -> int:
    import importlib.util
    if importlib.util.find_spec("mcp") is None:     # the `mcp` extra (it brings anyio too)
        print("phonehome-jump: `serve` needs the MCP SDK, which is not installed here\n"
              "  try: pip install 'phonehome-jump[mcp]' in phonehome-jump's own environment (not "
              "in the ET Phone Home server's: it pins its own mcp)", file=sys.stderr)
        return 2
    from .mcp_server import serve, service_options   # the MCP SDK: only for this command

    return serve(args.inventory, http=args.http, token_file=args.token_file,
                 token_env=args.token_env, agents=args.agent,
                 audit_log=args.audit_log, workflows=getattr(args, "workflows", None),
                 **service_options(args))


def cmd_agent(args: argparse.Namespace) -> int:
    from .agent_server import serve_agent

    return serve_agent(args.inventory, args.listen, state_file=args.state,
                       max_wait=args.max_wait, caller_timeout=args.caller_timeout,
                       audit_log=args.audit_log)


# --------------------------------------------------------------------------- helpers

def _inventory_path(args: argparse.Namespace) -> Path:
    given = args.inventory or os.environ.get(ENV_VAR)
    return Path(given) if given else Path.cwd() / DEFAULT_INVENTORY


def _load(args: argparse.Namespace) -> Inventory:
    path = _inventory_path(args)
    log.info("loading inventory %s", path)
    return Inventory.load(path)


def _arrow(stream: TextIO) -> str:
    try:
        "→".encode(getattr(stream, "encoding", None) or "ascii")
        return " → "
    except (UnicodeEncodeError, LookupError):
        return " -> "


def _chain_text(target: Target, arrow: str) -> str:
    return arrow.join(h.name for h in target.chain) or "direct"


def _write_remote(text: str) -> None:
    """Remote output, byte-exact: UTF-8 whatever the local locale (ssh passes bytes through)."""
    if not text:
        return
    out = sys.stdout
    buf = getattr(out, "buffer", None)
    out.flush()
    if buf is None:
        out.write(text)
        out.flush()
        return
    buf.write(text.encode("utf-8", "replace"))
    buf.flush()


STREAM_SLICE = 0.25      # how often a running command's new output is written out


def _pages(manager: SessionManager, sid: str, start: int) -> Iterator[str]:
    """The command's output from character ``start`` on, as far as it has arrived."""
    return pages(lambda offset: manager.read(sid, offset=offset), start)


def _stream(manager: SessionManager, sid: str, command: str, timeout: float, confirm: bool,
            write: Callable[[str], None]) -> CommandResult:
    """Run ``command`` and write its output as it arrives; the final (or timed-out) result.

    Ends early, like a single wait, when the output asks for input. Only the page being
    written is in memory: a command's output of any size goes through.
    """
    deadline = time.monotonic() + timeout
    written = 0
    res = manager.command(sid, command, wait=min(timeout, STREAM_SLICE), confirm=confirm)
    while True:
        for piece in _pages(manager, sid, written):
            write(piece)
            written += len(piece)
        remaining = deadline - time.monotonic()
        if not res.running or res.awaiting_input or remaining <= 0:
            return res
        res = manager.read(sid, wait=min(remaining, STREAM_SLICE))


def _print_json(manager: SessionManager, sid: str, fields: dict[str, Any], *,
                parsed: Any = None, whole: str | None = None) -> None:
    """``fields`` as indented JSON with the command's whole output last, written page by page
    (json.dumps of one page at a time: the output is never held whole)."""
    head = json.dumps(fields, indent=2)
    out = sys.stdout
    out.write(head[:-2] + ',\n  "output": "')
    for piece in ([whole] if whole is not None else _pages(manager, sid, 0)):
        out.write(json.dumps(piece)[1:-1])
    out.write('"')
    if parsed is not None:
        out.write(',\n  "parsed": ' + json.dumps(parsed, indent=2).replace("\n", "\n  "))
    out.write("\n}\n")
    out.flush()


def _last_line(text: str) -> str:
    lines = text.rstrip().splitlines()
    return lines[-1].strip()[-80:] if lines else ""


def _run_one(manager: SessionManager, info: SessionInfo, command: str, timeout: float,
             confirm: bool = False, as_json: bool = False, parse: bool = False) -> int:
    if as_json or parse:
        result = manager.command(info.id, command, wait=timeout, confirm=confirm)
        fields = {"host": info.host, **result.to_dict(), "truncated": False, "omitted": None}
        del fields["output"]
        parsed = whole = None
        if parse and not result.running:   # TextFSM reads the whole text at once
            from .parsing import parse_result
            target = manager.session(info.id).target
            whole = "".join(_pages(manager, info.id, 0))
            parsed = parse_result(target.device_type, CommandResult(
                **{**result.__dict__, "output": whole}), host=info.host).rows
        _print_json(manager, info.id, fields, parsed=parsed if parse else None, whole=whole)
    else:
        result = _stream(manager, info.id, command, timeout, confirm, _write_remote)
    if result.running:
        if result.awaiting_input:
            what = (f"is waiting for input ({_last_line(result.output)!r}); "
                    f"this mode cannot answer prompts: use `{PROG} shell {info.host}` "
                    "on a terminal, or make the command non-interactive")
        else:
            what = f"is still running after {timeout:g}s; raise --timeout"
        print(f"{PROG}: {info.host}: the command {what} (the session is closed, which ends it)",
              file=sys.stderr)
        raise _Timeout
    if result.error_detected:          # a network OS has no exit status: its error marker counts
        print(f"{PROG}: {info.host}: the device reported an error: {result.error}", file=sys.stderr)
        return EXIT_ERROR
    return result.exit_status if result.exit_status is not None else 0


def _manager(args: argparse.Namespace) -> SessionManager:
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry (bare containers): the audit still says "cli"
        user = "?"
    from .manager import SessionManager

    return SessionManager(_load(args), audit_path=args.audit_log, actor=f"cli:{user}")


def _open(args: argparse.Namespace) -> tuple[SessionManager, SessionInfo]:
    manager = _manager(args)
    try:
        info = manager.open(args.host)
    except BaseException:
        manager.shutdown()
        raise
    return manager, info


# --------------------------------------------------------------------------- inventory

def cmd_inventory_check(args: argparse.Namespace) -> int:
    path = Path(args.path) if args.path else _inventory_path(args)
    log.info("loading inventory %s", path)
    inv = Inventory.load(path)
    n, g = len(inv), len(inv.groups())
    files = ", ".join(str(f) for f in inv.sources) or str(path)
    print(f"ok: {n} host{'s' * (n != 1)}, {g} group{'s' * (g != 1)} in "
          f"{len(inv.sources)} file{'s' * (len(inv.sources) != 1)}: {files}")
    from .localfiles import preflight    # key files, env: variables, known_hosts lines
    for warning in preflight(inv):
        print(f"warning: {warning}", file=sys.stderr)
    if args.keys:
        from .cli_keys import check_keys

        return check_keys(inv, args.key_hosts or inv.names(), write=args.write)
    if args.key_hosts or args.write:
        print(f"{PROG}: --host and --write go with --keys", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def cmd_inventory_list(args: argparse.Namespace) -> int:
    targets = _load(args).targets(group=args.group, tag=args.tag, query=args.query)
    if args.json:
        print(json.dumps([t.summary() for t in targets], indent=2))
        return EXIT_OK
    if not targets:
        print(f"{PROG}: no hosts match", file=sys.stderr)
        return EXIT_OK
    arrow = _arrow(sys.stdout)
    rows = [("NAME", "HOST", "DEVICE_TYPE", "CHAIN", "TAGS")] + [
        (t.name, t.endpoint.host if t.endpoint.port == 22 else f"{t.endpoint.host}:{t.endpoint.port}",
         t.device_type, _chain_text(t, arrow), ",".join(t.tags) or "-") for t in targets]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    return EXIT_OK


def cmd_inventory_show(args: argparse.Namespace) -> int:
    summary = _load(args).target(args.host).summary()   # references only, never secret values
    if args.json:
        print(json.dumps(summary, indent=2))
        return EXIT_OK
    arrow = _arrow(sys.stdout)
    auth = summary["auth"]
    auth_text = ", ".join([f"{k}={v}" for k, v in auth.items() if k != "agent"]
                          + [f"agent={'yes' if auth.get('agent') else 'no'}"])
    chain = arrow.join(f"{h['name']} ({h['username']}@{h['host']}:{h['port']})"
                       for h in summary["chain"]) or "direct"
    fields = [
        ("name", summary["name"]),
        ("host", f"{summary['username']}@{summary['host']}:{summary['port']}"),
        ("device_type", summary["device_type"]),
        ("chain", chain),
        ("auth", auth_text),
        ("groups", ", ".join(summary["groups"]) or "-"),
        ("tags", ", ".join(summary["tags"]) or "-"),
        ("description", summary["description"] or "-"),
        ("policy", _policy_text(summary["policy"])),
        ("source", summary["source"]),
    ]
    for key, value in fields:
        print(f"{key + ':':<13}{value}")
    return EXIT_OK


def _policy_text(policy: dict[str, Any]) -> str:
    parts = [f"{k}: {', '.join(policy[k])}" for k in ("deny", "confirm") if policy[k]]
    if policy["read_only"]:
        parts.append(f"read-only, allow: {', '.join(policy['allow']) or 'nothing'}")
    return "; ".join(parts) or "-"


# --------------------------------------------------------------------------- run / shell

def cmd_run(args: argparse.Namespace) -> int:
    from .framing import SENTINEL_DEVICE_TYPES

    command = " ".join(args.words)
    from .inputs import check_text
    check_text(command, "command", where=f"host {args.host!r}")   # before anything connects
    manager = _manager(args)
    try:
        target = manager.inventory.target(args.host)
        as_json = args.json or args.parse
        if target.device_type in SENTINEL_DEVICE_TYPES and not as_json:
            from .cli_run import run_exec           # a POSIX shell: exec, like ssh

            return run_exec(manager, target, command, timeout=args.timeout,
                            confirm=args.confirm, sudo=args.sudo_password)
        if args.sudo_password:
            why = (f"device_type {target.device_type!r} has no sudo" if not as_json
                   else "it cannot be combined with --json/--parse")
            print(f"{PROG}: {target.name}: --sudo-password is for POSIX hosts ({why})",
                  file=sys.stderr)
            return EXIT_USAGE
        info = manager.open(args.host)            # framed session: devices, or --json/--parse
        return _run_one(manager, info, command, args.timeout or DEFAULT_TIMEOUT, args.confirm,
                        as_json=as_json, parse=args.parse)
    except _Timeout:
        return EXIT_TIMEOUT
    finally:
        manager.shutdown()


def cmd_shell(args: argparse.Namespace) -> int:
    manager = _manager(args)
    try:
        target = manager.inventory.target(args.host)
        if _isatty(sys.stdin):          # a person: a real terminal through the chain (ssh -t)
            from .cli_terminal import interactive

            return interactive(manager, target, confirm=args.confirm)
        info = manager.open(args.host)
        return _scripted(manager, info, sys.stdin, args.timeout, args.confirm)
    except _Timeout:
        return EXIT_TIMEOUT
    finally:
        manager.shutdown()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _scripted(manager: SessionManager, info: SessionInfo, lines: Any, timeout: float,
              confirm: bool = False) -> int:
    """Each stdin line is one command in the same shell (cwd and variables persist)."""
    try:    # a byte that is not UTF-8 then reaches the core, which names it (not a traceback)
        lines.reconfigure(errors="surrogateescape")
    except (AttributeError, ValueError, OSError):
        pass
    status = EXIT_OK
    for line in lines:
        command = line.rstrip("\r\n")
        if not command.strip():
            continue
        status = _run_one(manager, info, command, timeout, confirm)
    return status


# --------------------------------------------------------------------------- workflow

EXIT_WF_FAILED = 1      # some host failed a step
EXIT_WF_INVALID = EXIT_USAGE  # the workflow or the inventory is invalid (main() maps it)
EXIT_WF_LOCKED = 3      # could not run: another run holds the lock


def _add_workflow_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    wf = commands.add_parser(
        "workflow", parents=[common], help="check and run multi-step YAML workflows",
        description="Multi-step runbooks (workflows/*.yaml) on inventory hosts, one persistent "
                    "session per host. Exit codes: 0 all hosts passed, 1 some host failed a "
                    "step, 2 invalid workflow or inventory, 3 could not run (lock held).")
    wf_cmds = wf.add_subparsers(dest="workflow_command", metavar="ACTION", required=True)
    p = wf_cmds.add_parser("check", parents=[common], help="validate a workflow",
                           description="Validate FILE and its targets against the inventory.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                   help="a variable, as for run (repeatable)")
    p.set_defaults(func=cmd_workflow_check)
    p = wf_cmds.add_parser("run", parents=[common], help="run a workflow",
                           description="Run FILE's steps on its target hosts.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--hosts", nargs="+", metavar="HOST", help="only these of its targets")
    p.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                   help="set or override a variable (repeatable)")
    p.add_argument("--concurrency", type=count_arg(1, 100), metavar="N",
                   help="hosts in parallel, 1-100 (default: the workflow's)")
    p.add_argument("--dry-run", action="store_true",
                   help="print what would run on which host; connect to nothing")
    p.add_argument("--report", metavar="OUT.json", help="write the JSON report here")
    p.add_argument("--junit", metavar="OUT.xml", help="write JUnit XML here")
    p.set_defaults(func=cmd_workflow_run)
    serve_p = commands.choices["serve"]
    serve_p.add_argument("--workflows", metavar="DIR",
                         help="directory of workflows for workflow_list/workflow_run "
                              "(default ./workflows if it exists)")


def _workflow_prepare(args: argparse.Namespace) -> tuple[Any, Inventory, list[str], dict[str, str]]:
    from .workflow import Workflow, parse_vars

    values = parse_vars(args.var)
    wf = Workflow.load(args.file)
    inv = _load(args)
    names = wf.check(inv, hosts=getattr(args, "hosts", None), vars=values)
    return wf, inv, names, values


def cmd_workflow_check(args: argparse.Namespace) -> int:
    # an invalid workflow or inventory raises InventoryError: main() prints it, exit 2
    wf, _, names, _ = _workflow_prepare(args)
    n = len(wf.spec.steps)
    print(f"ok: workflow '{wf.name}': {n} step{'s' * (n != 1)} on {len(names)} "
          f"host{'s' * (len(names) != 1)}: {', '.join(names)}")
    return EXIT_OK


def cmd_workflow_run(args: argparse.Namespace) -> int:
    from .errors import WorkflowLockedError
    from .workflow import WorkflowLock, junit_xml, plan, run_workflow

    wf, inv, names, values = _workflow_prepare(args)     # InventoryError: exit 2 in main()
    if args.dry_run:
        result = plan(wf, names, values)
        for host, hr in result.hosts.items():
            for s in hr.steps:
                print(f"{host}: step {s.index}: {s.command}")
        n, h = len(wf.spec.steps), len(names)
        print(f"dry run: {n} step{'s' * (n != 1)} on {h} host{'s' * (h != 1)}; nothing was run")
    else:
        try:
            lock = WorkflowLock(wf).acquire(f"{PROG} workflow run {args.file}")
        except WorkflowLockedError as err:
            print(f"{PROG}: {err}", file=sys.stderr)
            return EXIT_WF_LOCKED
        from .cli_progress import WorkflowProgress

        try:
            with WorkflowProgress(names, sys.stderr) as progress:
                result = run_workflow(wf, inv, hosts=names, vars=values,
                                      audit_path=args.audit_log,
                                      concurrency=args.concurrency, on_event=progress)
        finally:
            lock.release()
        failed = result.failed_hosts
        print(f"workflow '{wf.name}': {len(names) - len(failed)}/{len(names)} hosts passed in "
              f"{result.duration:.2f}s" + (f"; failed: {', '.join(failed)}" if failed else ""))
    # reports are masked whole (outputs already are): nothing secret reaches the disk
    for path, text in ((args.report, lambda: json.dumps(REDACTOR.mask_data(result.to_dict()),
                                                        indent=2) + "\n"),
                       (args.junit, lambda: mask(junit_xml(result)))):
        if path:
            try:
                Path(path).write_text(text(), encoding="utf-8")
            except OSError as exc:
                print(f"{PROG}: cannot write {path}: {exc.strerror}", file=sys.stderr)
                return EXIT_ERROR
    return EXIT_OK if result.ok else EXIT_WF_FAILED

# --------------------------------------------------------------------------- main

def _setup_logging(verbosity: int) -> Callable[[], None]:
    """Log to stderr; returns an undo (main() is also called in-process, e.g. by tests)."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        "%(levelname)s %(name)s: %(message)s" if verbosity < 2
        else "%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"))
    handler.setLevel(level)
    handler.addFilter(RedactingFilter())
    saved_root = root.level
    root.addHandler(handler)
    root.setLevel(min(level, saved_root) if saved_root else level)
    # paramiko logs its transport thread's tracebacks at ERROR; the package wraps those
    # failures into one-line errors, so without -v they are noise (and a traceback).
    quiet = logging.getLogger("paramiko")
    saved_quiet = quiet.level
    if verbosity <= 0:
        quiet.setLevel(logging.CRITICAL)

    def undo() -> None:
        root.removeHandler(handler)
        root.setLevel(saved_root)
        quiet.setLevel(saved_quiet)
    return undo


def exit_code(err: PhonehomeJumpError) -> int:
    if isinstance(err, (InventoryError, InputError)):
        return EXIT_USAGE
    if isinstance(err, ConnectError):
        return EXIT_CONNECT
    if isinstance(err, PolicyError):
        return EXIT_POLICY
    return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:           # --help, --version, usage errors
        return EXIT_OK if exc.code is None else exc.code if isinstance(exc.code, int) else EXIT_USAGE
    args.verbose += getattr(args, "sub_verbose", 0)
    args.inventory = getattr(args, "sub_inventory", None) or args.inventory
    args.audit_log = (getattr(args, "sub_audit_log", None) or args.audit_log
                      or os.environ.get(ENV_AUDIT) or None)
    undo = _setup_logging(args.verbose)
    _no_invoke()
    try:
        return args.func(args)
    except PhonehomeJumpError as err:
        log.debug("%s", type(err).__name__, exc_info=True)
        print(f"{PROG}: {mask(str(err))}", file=sys.stderr)
        return exit_code(err)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # stdout went away (e.g. `| head`); Python would complain again at exit when it
        # flushes stdout, so point it at /dev/null first.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return EXIT_PIPE
    except Exception as exc:  # noqa: BLE001 - the one place a bug becomes an exit code
        log.info("internal error", exc_info=True)
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"{PROG}: internal error: {type(exc).__name__}: {msg} (run with -v for details)",
              file=sys.stderr)
        return EXIT_SOFTWARE
    finally:
        undo()


if __name__ == "__main__":
    sys.exit(main())
