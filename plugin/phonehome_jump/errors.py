"""One exception root for the package.

Every error says what failed, where (host, hop, file:line) and what to try. Library
exceptions (paramiko, netmiko, yaml, pydantic, OS) are wrapped ``from exc`` at the
layer that understands them; nothing above that layer sees a library type.
"""

from __future__ import annotations


class PhonehomeJumpError(Exception):
    """Root of every error this package raises on purpose.

    ``str(err)`` is the whole user-facing message: ``where: what`` and, when known,
    a ``try:`` line. Adapters (CLI, MCP, agent) print exactly that and nothing else.
    """

    #: JSON-RPC style code used by the agent protocol; subclasses refine it.
    code: int = -32000

    def __init__(self, what: str, *, where: str | None = None, hint: str | None = None) -> None:
        self.what = what
        self.where = where
        self.hint = hint
        super().__init__(self.message)

    @property
    def message(self) -> str:
        text = f"{self.where}: {self.what}" if self.where else self.what
        if self.hint:
            text += f"\n  try: {self.hint}"
        return text

    def __str__(self) -> str:
        return self.message


class InventoryError(PhonehomeJumpError):
    """The inventory (or a workflow file) is malformed or refers to unknown names."""

    code = -32602


class UnknownNameError(InventoryError):
    """A host, group, hop or credential name that the inventory does not define."""


class SecretError(PhonehomeJumpError):
    """A secret reference could not be resolved at connect time (the value is never shown)."""


class ConnectError(PhonehomeJumpError):
    """Reaching a hop or the target failed.

    ``hop`` is the inventory name of the endpoint that failed; ``reason`` is one of
    dns, refused, unreachable, timeout, auth, host-key, forwarding, protocol, closed, dead (stopped
    answering liveness probes), busy (refused new connections before login), local-file.
    """

    code = -32001

    def __init__(self, what: str, *, hop: str, reason: str, where: str | None = None,
                 hint: str | None = None) -> None:
        self.hop = hop
        self.reason = reason
        super().__init__(what, where=where or f"hop {hop!r}", hint=hint)


class HostKeyError(ConnectError):
    """A host key was unknown (strict policy) or changed; carries the offered fingerprint."""

    def __init__(self, what: str, *, hop: str, fingerprint: str, where: str | None = None,
                 hint: str | None = None) -> None:
        self.fingerprint = fingerprint
        super().__init__(what, hop=hop, reason="host-key", where=where, hint=hint)


class AuthError(ConnectError):
    """The hop or target refused our credentials."""

    def __init__(self, what: str, *, hop: str, where: str | None = None,
                 hint: str | None = None) -> None:
        super().__init__(what, hop=hop, reason="auth", where=where, hint=hint)


class LocalFileError(ConnectError):
    """A local file a connection needs (key_file, known_hosts) is missing, a directory, not a
    key, or readable by others; the message names the file and what is wrong with it."""

    def __init__(self, what: str, *, hop: str, where: str | None = None,
                 hint: str | None = None) -> None:
        super().__init__(what, hop=hop, reason="local-file", where=where, hint=hint)


class SessionError(PhonehomeJumpError):
    """A session-level failure: busy, closed, dead, bad input to send/read."""

    code = -32002


class SessionDeadError(SessionError):
    """The shell, the target or a hop under it went away; the session must be reopened."""


class PatternError(SessionError):
    """A caller's regular expression (``until``, a workflow's assert/capture/answer) is invalid."""

    code = -32602
    detail: str = ""        # the problem alone, without the pattern (for file:line messages)


class PatternTimeoutError(PatternError):
    """A caller's regular expression took longer than its time limit to match (backtracking)."""


class InputError(PhonehomeJumpError):
    """A caller's argument is unusable as given: text that is not valid Unicode (a lone
    surrogate, a byte that is not UTF-8), a number that is not finite or out of range."""

    code = -32602


class UnknownSessionError(SessionError):
    """No open session has that id (for this caller)."""

    code = -32004


class LimitError(SessionError):
    """A per-host, per-client or total session limit would be exceeded."""

    code = -32005


class SessionBusyError(SessionError):
    """Another call holds the session (a command still runs, or a call waits on its output).

    Raised at once rather than after the other call's wait; nothing was sent. ``command`` is
    what runs (masked), ``running_for`` its age in seconds, ``holder_left`` how long the call
    waiting on it may still wait (None when no call waits on it).
    """

    code = -32010

    def __init__(self, what: str, *, command: str | None, running_for: float | None,
                 holder_left: float | None, where: str | None = None,
                 hint: str | None = None) -> None:
        self.command = command
        self.running_for = running_for
        self.holder_left = holder_left
        super().__init__(what, where=where, hint=hint)


class CallAbandonedError(SessionError):
    """The caller gave up (cancelled, timed out) before the command was sent: nothing was sent."""

    code = -32011


class PolicyError(PhonehomeJumpError):
    """The inventory's command policy refused a command or a typed line.

    ``rule`` is the pattern (or ``read_only``) that decided; ``needs_confirm`` is True when the
    same call with ``confirm`` set would pass.
    """

    code = -32007

    def __init__(self, what: str, *, rule: str, needs_confirm: bool = False,
                 where: str | None = None, hint: str | None = None) -> None:
        self.rule = rule
        self.needs_confirm = needs_confirm
        super().__init__(what, where=where, hint=hint)


class AuditError(PhonehomeJumpError):
    """The audit log cannot be written, and the inventory says to fail closed."""

    code = -32008


class AgentError(PhonehomeJumpError):
    """The phonehome-jump agent of an ET Phone Home client site could not be reached, or the
    connection to it dropped during a request (the message names the site and the address)."""

    code = -32006


class WorkflowError(InventoryError):
    """A workflow file is malformed, or names hosts, groups or variables that do not exist."""


class WorkflowLockedError(PhonehomeJumpError):
    """Another run of the same workflow holds its lock (or the lock cannot be taken)."""

    code = -32009
