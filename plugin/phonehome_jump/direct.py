"""Direct channels on a target, beside the framed session: like ``ssh host cmd`` and ``ssh -t``.

The framed :class:`~phonehome_jump.session.Session` is made for callers that need exact,
paged results (MCP, workflows). A person at a terminal or a script piping data wants what
ssh gives instead: one exec'd command with stdin, stdout and stderr as separate streams and
its exit status, or an interactive pty shell whose echo and line editing are the remote's.

Both go through the manager's hop pool (the target is dialled through its chain like one
more hop, host keys verified and secrets resolved the same way), the inventory's policy
and the audit log. Only POSIX targets (the sentinel device types) get exec channels; for
network OSes the CLI keeps going through the session.
"""

from __future__ import annotations

import codecs
import logging
import secrets
import time
from typing import Any

import paramiko

from .chain import Hop
from .errors import PhonehomeJumpError, SessionError
from .inventory import Target
from .manager import SessionManager
from .redact import REDACTOR, add_secret

log = logging.getLogger(__name__)


class StreamMasker:
    """Masks registered secrets in a byte stream that arrives in pieces.

    Each secret becomes as many stars (as the CLI always printed them). A secret may
    straddle two pieces, so a tail that begins some secret is held back until
    the next piece (or :meth:`flush`); any other text passes at once, so an interactive
    echo is not delayed. Bytes that are not UTF-8 pass unchanged.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
        self._held = ""

    def feed(self, data: bytes) -> bytes:
        if not REDACTOR.longest and not self._held and not self._decoder.getstate()[0]:
            return data         # nothing to mask: the bytes as they came (no decode, no encode)
        text = self._held + self._decoder.decode(data)
        self._held = ""
        if not REDACTOR.longest or not text:
            return self._encode(text)
        masked = REDACTOR.mask(text, keep_length=True)
        hold = REDACTOR.pending(text)       # a tail that may begin a secret: wait for more
        if hold and masked.endswith(text[-hold:]):
            self._held = text[-hold:]
            return self._encode(masked[:-hold])
        return self._encode(masked)

    def flush(self) -> bytes:
        text = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return self._encode(REDACTOR.mask(text, keep_length=True))

    @property
    def pending(self) -> bool:
        return bool(self._held)

    @staticmethod
    def _encode(text: str) -> bytes:
        return text.encode("utf-8", "surrogateescape")


class DirectChannel:
    """One exec or pty-shell channel on a target; audited from open to close."""

    def __init__(self, manager: SessionManager, target: Target, *, actor: str | None = None,
                 kind: str = "exec") -> None:
        self.manager = manager
        self.target = target
        self.actor = actor or manager.actor
        self.kind = kind
        self.id = ("x-" if kind == "exec" else "t-") + secrets.token_hex(8)
        self.hops: list[Hop] = []
        self.chan: paramiko.Channel | None = None
        self.started = time.time()

    # -- audit and policy -------------------------------------------------------------
    @property
    def chain(self) -> list[str]:
        return [h.name for h in self.target.chain]

    def record(self, event: str, *, strict: bool = False, **fields: Any) -> None:
        self.manager.record(event, strict=strict, actor=self.actor, host=self.target.name,
                            chain=self.chain, session_id=self.id, **fields)

    def check(self, text: str, *, confirm: bool, at_prompt: bool = True,
              secret: bool = False) -> None:
        """The inventory's policy on ``text`` (refusals audited), and the audit gate."""
        self.manager.check_policy(self.target, text, confirm=confirm, at_prompt=at_prompt,
                                  secret=secret, actor=self.actor, session_id=self.id)
        if self.manager.audit:
            self.manager.audit.check()

    def transcript(self, text: str) -> None:
        if self.manager.audit:
            self.manager.audit.transcript(self.id, text)

    # -- opening ----------------------------------------------------------------------
    def connect(self) -> paramiko.Transport:
        """The target's SSH transport, through its chain (shared with other users of the pool)."""
        if self.manager.audit:
            self.manager.audit.check()
        try:
            self.hops = self.manager.pool.acquire((*self.target.chain, self.target.endpoint),
                                                 target=True)
        except BaseException as exc:
            if isinstance(exc, PhonehomeJumpError) and (exc.where or "").startswith(
                    f"hop {self.target.name!r}"):
                # the pool dials the target like one more hop; name it as what it is
                exc.where = "host" + exc.where[3:]
            self.record("open", outcome="error", kind=self.kind,
                        error=str(exc) if isinstance(exc, PhonehomeJumpError) else type(exc).__name__,
                        duration=round(time.time() - self.started, 4))
            raise
        self.record("open", outcome="ok", kind=self.kind,
                    duration=round(time.time() - self.started, 4))
        self.transcript(f"# {self.kind} {self.id} to {self.target.name} via "
                        f"{' -> '.join(self.chain) or 'direct'}, actor {self.actor or '-'}\n")
        return self.hops[-1].transport

    def _session(self) -> paramiko.Channel:
        transport = self.connect()
        try:
            chan = transport.open_session(timeout=self.target.endpoint.connect_timeout)
        except Exception as exc:
            raise SessionError(f"{self.target.name} refused a session channel: {exc}",
                               where=f"host {self.target.name!r}",
                               hint="check the account's sshd settings (ForceCommand, "
                                    "MaxSessions)") from exc
        self.chan = chan
        return chan

    def exec(self, command: str, *, pty: tuple[str, int, int] | None = None) -> paramiko.Channel:
        """Start ``command`` (already policy-checked) like ``ssh host command``."""
        chan = self._session()
        try:
            if pty:
                term, cols, rows = pty
                chan.get_pty(term=term, width=cols, height=rows)
            chan.exec_command(command)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise self._refused("run a command" + (" on a terminal" if pty else ""), exc) from exc
        return chan

    def shell(self, term: str, cols: int, rows: int) -> paramiko.Channel:
        """An interactive login shell on a pty sized like the local terminal."""
        chan = self._session()
        try:
            chan.get_pty(term=term, width=cols, height=rows)
            chan.invoke_shell()
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise self._refused("start a shell on a terminal", exc) from exc
        return chan

    def _refused(self, what: str, exc: BaseException) -> SessionError:
        return SessionError(f"{self.target.name} refused to {what}: {exc or type(exc).__name__}",
                            where=f"host {self.target.name!r}",
                            hint="check the account's sshd settings (PermitTTY, ForceCommand) "
                                 "and login shell")

    def sudo_password(self) -> str:
        """The inventory's sudo password for this target, resolved now and registered as secret."""
        ref = self.target.endpoint.auth.sudo_password
        if ref is None:
            raise SessionError("the inventory has no sudo_password for this host",
                               where=f"host {self.target.name!r}",
                               hint="add sudo_password: env:VAR (or file:PATH) to its credentials")
        value = ref.resolve(f"host {self.target.name!r} sudo_password")
        add_secret(value)
        return value

    def close(self, outcome: str = "closed") -> None:
        if self.chan is not None:
            try:
                self.chan.close()
            except Exception:   # already gone with its hop
                pass
        if self.hops:
            self.manager.pool.release(self.hops)
            self.hops = []
            self.record("close", outcome=outcome)
