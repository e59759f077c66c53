"""Command policy: deny, confirm and read-only rules from the inventory, checked in the core.

The policy is a guardrail against mistakes (a model or a tired engineer typing ``reboot`` on
the wrong box), not a sandbox: anyone who can reach the account can do what the account may
do. The SSH account's own permissions are the real boundary.

Resolution (host → its groups → ``defaults``): ``deny``, ``confirm`` and ``allow`` are the
union of every layer, so a rule set on ``defaults`` cannot be dropped by a host; ``read_only``
is taken from the first layer that sets it.

What is checked: every command, and every raw send that ends a line. A line typed at the idle
shell prompt is a command and gets every rule. A line typed while a command runs is input to
that (already checked) command: deny and confirm still apply, ``read_only`` does not, and a
send marked secret (a password answer) is not matched at all.

Who confirms (:class:`Approval`): over MCP a person, through MCP elicitation (the model's
``confirm=true`` alone never passes a confirm rule; see ``mcp_approval``); on the CLI the
person who typed ``--confirm``; in a workflow the author of the file (a step's
``confirm: true``); through the agent protocol the MCP server in front of it. The audit log
records who approved, how and when.

Matching: each rule is a Python regular expression searched in each part of the command line,
the parts being split at ``;``, ``&&``, ``||``, ``|``, ``&`` and newlines (so ``ls; reboot``
is refused by ``\\breboot\\b`` and ``^reboot`` alike). With ``read_only``, every part must
match an ``allow`` rule, and command substitution (``$(``, backticks) and output redirection
(``>``) are refused outright. Rules are run like callers' patterns (:mod:`.patterns`: ``re``
syntax, a time limit per search); a rule that exceeds it refuses the command.
"""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from .errors import PatternError, PatternTimeoutError, PolicyError
from .patterns import SafePattern, compile_safe
from .redact import mask


def _as_tuple(value: object) -> object:
    return (value,) if isinstance(value, str) else value


def _compiles(patterns: tuple[str, ...]) -> tuple[str, ...]:
    for pattern in patterns:
        try:
            _rule(pattern)
        except PatternError as exc:
            raise ValueError(f"has an invalid regular expression {pattern!r}: "
                             f"{exc.detail}") from None
    return patterns


@functools.lru_cache(maxsize=1024)
def _rule(pattern: str) -> SafePattern:
    return compile_safe(pattern, what="policy rule")


def _search(rule: str, text: str, where: str) -> bool:
    """The rule matches ``text``; a rule that backtracks past its time limit refuses (fail
    closed: a guardrail that cannot decide does not let the command through)."""
    try:
        return _rule(rule).search(text) is not None
    except PatternTimeoutError as exc:
        raise PolicyError(f"command refused: {exc.what}", rule=rule, where=where,
                          hint="ask the inventory's owner to simplify this policy rule") from None


Patterns = Annotated[tuple[str, ...], BeforeValidator(_as_tuple), AfterValidator(_compiles),
                     WithJsonSchema({"anyOf": [{"type": "string"},
                                               {"type": "array", "items": {"type": "string"}}]})]


McpApproval = Literal["elicit", "elicit-or-model", "refuse"]

Access = Literal["allow", "confirm", "deny"]


class FilesSpec(BaseModel):
    """File transfer rules (uploads and downloads through the chain)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    upload: Access | None = Field(None, description="allow, confirm or deny uploads. Default: "
                                                    "deny on read_only hosts, else allow.")
    download: Access | None = Field(None, description="allow, confirm or deny downloads. "
                                                      "Default allow.")
    paths: Patterns = Field((), description="When set, only remote paths matching one of these "
                                            "regular expressions may be copied to or from.")
    deny_paths: Patterns = Field((), description="Remote paths that may never be copied.")


class PolicySpec(BaseModel):
    """Command rules (Python regular expressions, searched in each part of a command line)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    deny: Patterns = Field((), description="Refused, naming the rule that matched.")
    confirm: Patterns = Field((), description="Refused unless a person approves: over MCP through "
                                              "elicitation (see mcp_approval), CLI --confirm, "
                                              "workflow step confirm: true.")
    read_only: bool | None = Field(None, description="true: only commands matching `allow` pass.")
    allow: Patterns = Field((), description="With read_only: the commands that pass.")
    files: FilesSpec | None = Field(None, description="File transfer rules: upload/download "
                                                      "allow|confirm|deny, allowed and denied "
                                                      "remote paths.")
    mcp_approval: McpApproval | None = Field(
        None, description="Who passes a confirm rule over MCP. elicit (default): a person, "
                          "through MCP elicitation; a client that cannot elicit is refused. "
                          "elicit-or-model: as elicit, but a client that cannot elicit may "
                          "pass it with the model's confirm=true (weaker: no person involved). "
                          "refuse: never over MCP (CLI --confirm and workflow files only). "
                          "First layer that sets it wins (host, groups, defaults).")


@dataclass(frozen=True)
class Approval:
    """Who let a command through a confirm rule, how, and when (for the audit log).

    ``via``: ``mcp-elicitation`` (a person answered the MCP client's dialog),
    ``mcp-model-confirm`` (the model's confirm=true, only under ``mcp_approval:
    elicit-or-model``), ``cli-confirm-flag``, ``workflow-file``, ``agent-protocol`` (the
    caller of the agent protocol) or ``api`` (a Python caller's confirm=True).
    """

    via: str
    by: str | None = None
    at: float = field(default_factory=time.time)
    #: the exact line a person was shown and approved (None: whatever the call sends)
    command: str | None = None
    rule: str | None = None

    def fields(self) -> dict[str, Any]:
        """The audit record's fields."""
        return {"approved_via": self.via, "approved_by": self.by,
                "approved_at": datetime.fromtimestamp(self.at, timezone.utc)
                .isoformat(timespec="milliseconds")}

    def to_wire(self) -> dict[str, Any]:
        return {"via": self.via, "by": self.by, "at": self.at, "command": self.command}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Approval:
        def text(key: str) -> str | None:
            return str(data[key]) if data.get(key) is not None else None
        at = data.get("at")
        return cls(text("via") or "agent-protocol", text("by"),
                   float(at) if isinstance(at, (int, float)) else time.time(), text("command"))


# A command line's parts: split at ; && || | & and newlines (quotes are not parsed: a
# guardrail errs towards checking more parts, never fewer).
_SPLIT = re.compile(r"\|\||&&|[;|&\n\r]")
_READ_ONLY_FORBIDDEN = re.compile(r"\$\(|`|>")


@dataclass(frozen=True)
class Policy:
    """The resolved rules of one target."""

    deny: tuple[str, ...] = ()
    confirm: tuple[str, ...] = ()
    read_only: bool = False
    allow: tuple[str, ...] = ()
    upload: str | None = None            # allow | confirm | deny; None: by read_only
    download: str = "allow"
    paths: tuple[str, ...] = ()
    deny_paths: tuple[str, ...] = ()
    mcp_approval: McpApproval = "elicit"

    @classmethod
    def resolve(cls, layers: list[PolicySpec | None]) -> Policy:
        """``layers`` first wins: host, its groups in order, defaults."""
        specs = [s for s in layers if s is not None]

        def union(name: str) -> tuple[str, ...]:
            return tuple(dict.fromkeys(p for s in specs for p in getattr(s, name)))
        read_only = next((s.read_only for s in specs if s.read_only is not None), False)
        approval = next((s.mcp_approval for s in specs if s.mcp_approval is not None), "elicit")
        files = [s.files for s in specs if s.files is not None]
        upload = next((f.upload for f in files if f.upload is not None), None)
        download = next((f.download for f in files if f.download is not None), "allow")
        return cls(union("deny"), union("confirm"), read_only, union("allow"), upload, download,
                   tuple(dict.fromkeys(p for f in files for p in f.paths)),
                   tuple(dict.fromkeys(p for f in files for p in f.deny_paths)),
                   mcp_approval=approval)

    @property
    def empty(self) -> bool:
        return not (self.deny or self.confirm or self.read_only)

    def summary(self) -> dict[str, object]:
        return {"deny": list(self.deny), "confirm": list(self.confirm),
                "read_only": self.read_only, "allow": list(self.allow),
                "mcp_approval": self.mcp_approval,
                "files": {"upload": self.upload_access, "download": self.download,
                          "paths": list(self.paths), "deny_paths": list(self.deny_paths)}}

    @property
    def upload_access(self) -> str:
        return self.upload or ("deny" if self.read_only else "allow")

    def check_transfer(self, direction: str, remote_path: str, *, host: str,
                       confirm: bool | Approval = False) -> None:
        """Raise :class:`PolicyError` if ``direction`` (upload/download) of ``remote_path`` to
        or from ``host`` is not allowed."""
        where = f"host {host!r}"
        access = self.upload_access if direction == "upload" else self.download
        if access == "deny":
            why = " (the host is read-only)" if direction == "upload" and self.upload is None else ""
            raise PolicyError(f"{direction}s are refused on this host{why}", rule=f"files.{direction}",
                              where=where, hint="the inventory's policy forbids it; ask its owner")
        for rule in self.deny_paths:
            if _search(rule, remote_path, where):
                raise PolicyError(f"{direction} of {remote_path!r} refused by the deny_paths rule "
                                  f"{rule!r}", rule=rule, where=where,
                                  hint="this path may not be copied on this host")
        if self.paths and not any(_search(rule, remote_path, where) for rule in self.paths):
            raise PolicyError(f"{direction} of {remote_path!r} refused: it matches no files.paths "
                              "rule", rule="files.paths", where=where,
                              hint="allowed paths match: " + ", ".join(map(repr, self.paths)))
        if access == "confirm" and not confirm:
            raise PolicyError(f"{direction} needs confirmation (rule files.{direction})",
                              rule=f"files.{direction}", needs_confirm=True, where=where,
                              hint="a person must approve it: over MCP the client asks its "
                                   "user (elicitation); CLI: --confirm; workflow step: "
                                   "confirm: true")

    def transfer_confirm_rule(self, direction: str, remote_path: str, *, host: str) -> str | None:
        """As :meth:`confirm_rule`, for a file copy: ``files.upload``/``files.download`` when
        only that ``confirm`` access stands in the way."""
        try:
            self.check_transfer(direction, remote_path, host=host)
        except PolicyError as err:
            return err.rule if err.needs_confirm else None
        return None

    def confirm_rule(self, command: str, *, host: str, at_prompt: bool = True,
                     secret: bool = False) -> str | None:
        """The confirm rule that alone stands between ``command`` and the host, if any.

        None when the command passes unconfirmed, and None too when another rule refuses it
        (deny, read_only: no approval would help; :meth:`check` then says why).
        """
        try:
            self.check(command, host=host, at_prompt=at_prompt, secret=secret)
        except PolicyError as err:
            return err.rule if err.needs_confirm else None
        return None

    def check(self, command: str, *, host: str, confirm: bool | Approval = False,
              at_prompt: bool = True,
              secret: bool = False) -> None:
        """Raise :class:`PolicyError` if ``command`` may not be sent to ``host``.

        ``at_prompt``: the text starts a command at the shell (False: it is input to a running
        command). ``secret``: the text is a secret answer (never matched, never shown).
        """
        if self.empty or (secret and not at_prompt):
            return
        where = f"host {host!r}"
        parts = [p.strip() for p in _SPLIT.split(command)]
        parts = [p for p in parts if p] or [command.strip()]
        for rule in self.deny:
            if any(_search(rule, part, where) for part in parts):
                raise PolicyError(f"command refused by the deny rule {rule!r}", rule=rule,
                                  where=where, hint="this command is not allowed on this host by "
                                  "the inventory's policy; ask its owner if it must run")
        if self.read_only and at_prompt:
            if _READ_ONLY_FORBIDDEN.search(command):
                raise PolicyError("command refused: the host is read-only and the command uses "
                                  "$(...), backticks or > redirection", rule="read_only",
                                  where=where, hint="run a plain read-only command")
            for part in parts:
                if not any(_search(rule, part, where) for rule in self.allow):
                    allowed = ", ".join(repr(r) for r in self.allow) or "none"
                    raise PolicyError(f"command refused: the host is read-only and {mask(part)!r} "
                                      "matches no allow rule", rule="read_only", where=where,
                                      hint=f"allowed commands match: {allowed}")
        if not confirm:
            for rule in self.confirm:
                if any(_search(rule, part, where) for part in parts):
                    raise PolicyError(f"command needs confirmation (rule {rule!r})", rule=rule,
                                      needs_confirm=True, where=where,
                                      hint="a person must approve it: over MCP the client "
                                           "asks its user (elicitation); CLI: --confirm; "
                                           "workflow step: confirm: true")
