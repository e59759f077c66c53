"""Network device modes: enable with the inventory's secret, and configuration blocks.

Built only on a manager's ``command`` / ``send`` / ``read`` (a :class:`SessionManager` or the
MCP router), so every line goes through the inventory's policy and the audit log like any
other command. What a mode is and how to reach it comes from the session's platform
(``platforms/``); the mode after each command comes from the prompt that ended it.

``apply_config`` is in the spirit of netmiko's ``send_config_set``: every line is checked
against the policy before anything is sent, then the lines go one by one in configuration
mode, each one's output checked for the platform's error markers; it stops at the first
error (a Junos candidate is rolled back), commits where the platform has a commit and it was
asked for, and returns to the mode it started from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import SessionError
from .inventory import Target
from .output import CommandResult
from .platforms import Platform, for_device_type


@dataclass
class ConfigLine:
    line: str
    output: str
    error: str | None = None


@dataclass
class ConfigResult:
    """What a configuration block did, line by line."""

    host: str
    lines: list[ConfigLine] = field(default_factory=list)
    error_detected: bool = False
    error: str | None = None           # the first error line, with the config line that caused it
    not_sent: list[str] = field(default_factory=list)   # lines after an error, never sent
    committed: bool = False
    rolled_back: bool = False
    mode: str | None = None            # the mode the session is in afterwards

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["lines"] = [dict(x.__dict__) for x in self.lines]
        return d


def platform_of(target: Target) -> Platform:
    if target.device_type in ("linux", "generic", "ovs_linux", "terminal_server"):
        raise SessionError(f"{target.name} is a {target.device_type} host, not a network device",
                           where=f"host {target.name!r}",
                           hint="modes and configuration blocks are for network devices: set "
                                "its device_type (cisco_ios, juniper_junos, ...) in the inventory")
    return for_device_type(target.device_type)


def _done(r: CommandResult, what: str, target: Target) -> CommandResult:
    if r.running:
        raise SessionError(f"{what!r} is still running (no prompt came back)",
                           where=f"host {target.name!r}",
                           hint="read the session's output (ssh_session_read) to see what the "
                                "device asks, or raise the wait")
    return r


def enable(m: Any, session_id: str, target: Target, *, owner: str | None = None,
           wait: float = 20.0) -> CommandResult:
    """Enter the privileged mode, typing the inventory's enable_secret at the device's prompt."""
    p = platform_of(target)
    if p.enable is None:
        raise SessionError(f"{p.name} has no enable mode", where=f"host {target.name!r}",
                           hint="its login mode already allows show and configuration commands")
    r = m.command(session_id, p.enable, owner=owner, wait=wait)
    if r.running and r.awaiting_input:
        ref = target.endpoint.auth.enable_secret
        if ref is None:
            m.send(session_id, "", owner=owner)        # an empty answer: the device gives up
            m.read(session_id, owner=owner, wait=wait)
            raise SessionError("the device asks for the enable secret and the inventory has none",
                               where=f"host {target.name!r}",
                               hint="add enable_secret: env:VAR (or file:PATH) to the host's "
                                    "credentials")
        secret = ref.resolve(f"host {target.name!r} enable_secret")
        m.send(session_id, secret, owner=owner, secret=True)
        r = m.read(session_id, owner=owner, wait=wait)
        if r.running and r.awaiting_input:
            raise SessionError("the device refused the enable secret (it asks again)",
                               where=f"host {target.name!r}",
                               hint="check the inventory's enable_secret for this host")
    _done(r, p.enable, target)
    if r.mode is not None and r.mode != p.enable_mode:
        raise SessionError(f"enable did not reach the privileged mode (now {r.mode}): "
                           f"{r.error or r.output.strip()[-200:]}", where=f"host {target.name!r}",
                           hint="check the enable secret and the account's privilege level")
    return r


def apply_config(m: Any, session_id: str, target: Target, lines: list[str], *,
                 owner: str | None = None, commit: bool = False, wait: float = 20.0,
                 confirm: bool = False, stop_on_error: bool = True,
                 mode: str | None = None) -> ConfigResult:
    """Apply ``lines`` in configuration mode; see the module's description.

    ``mode``: the session's current mode if the caller knows it (the last result's ``mode``).
    """
    p = platform_of(target)
    lines = [line.strip() for line in lines if line.strip()]
    if not lines:
        raise SessionError("no configuration lines given", where=f"host {target.name!r}",
                           hint="pass a list of configuration lines")
    for line in lines:
        if "\n" in line or "\r" in line:
            raise SessionError("a configuration line holds a line break",
                               where=f"host {target.name!r}", hint="pass one line per list item")
    if p.config_enter is None or p.config_exit is None:
        raise SessionError(f"no configuration mode is known for {p.name}",
                           where=f"host {target.name!r}")
    if commit and p.commit is None:
        raise SessionError(f"{p.name} applies configuration lines at once: it has no commit",
                           where=f"host {target.name!r}", hint="leave commit off")
    wrapper = [p.config_enter, p.config_exit] + ([p.commit] if commit and p.commit else [])
    check = getattr(m, "check_policy", None)
    for text in wrapper + lines:        # all of it, before anything is sent
        if check is not None:
            check(target, text, confirm=confirm, at_prompt=True)
        else:
            target.policy.check(text, host=target.name, confirm=confirm, at_prompt=True)
    out = ConfigResult(host=target.name)
    entered = not p.in_config(mode)
    if entered:
        r = _done(m.command(session_id, p.config_enter, owner=owner, wait=wait, confirm=confirm),
                  p.config_enter, target)
        if r.error_detected or (r.mode is not None and not p.in_config(r.mode)):
            raise SessionError(f"{p.config_enter!r} did not enter configuration mode"
                               f"{f' (now {r.mode})' if r.mode else ''}: "
                               f"{r.error or r.output.strip()[-200:]}",
                               where=f"host {target.name!r}",
                               hint=("enable first (the privileged mode), "
                                     if p.enable and p.config_from else "") +
                                    "check the account's privileges")
    for i, line in enumerate(lines):
        r = _done(m.command(session_id, line, owner=owner, wait=wait, confirm=confirm), line, target)
        out.lines.append(ConfigLine(line, r.output, r.error))
        out.mode = r.mode
        if r.error_detected:
            if not out.error_detected:
                out.error_detected, out.error = True, f"{line}: {r.error}"
            if stop_on_error:
                out.not_sent = lines[i + 1:]
                break
    if p.commit and out.error_detected and p.discard:
        r = _done(m.command(session_id, p.discard, owner=owner, wait=wait, confirm=confirm),
                  p.discard, target)
        out.rolled_back = not r.error_detected
    elif commit and p.commit:
        r = _done(m.command(session_id, p.commit, owner=owner, wait=wait, confirm=confirm),
                  p.commit, target)
        out.lines.append(ConfigLine(p.commit, r.output, r.error))
        out.committed = not r.error_detected
        if r.error_detected:
            out.error_detected, out.error = True, f"{p.commit}: {r.error}"
    if entered:
        r = _done(m.command(session_id, p.config_exit, owner=owner, wait=wait, confirm=confirm),
                  p.config_exit, target)
        out.mode = r.mode
    return out
