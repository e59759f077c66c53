"""One persistent shell on a target, framed by prompt — never by silence.

netmiko opens the SSH connection over the chain's tunnel (device types, login quirks,
paging) and is then kept out of the hot path: commands are written to and read from the
shell channel directly, and each command ends when its prompt appears.

Two framings:

* ``sentinel`` (POSIX shells: device types ``linux`` and friends). At start the session
  turns terminal echo and CR/LF translation off, turns line editing and job control off (no
  "[1]+ Done" notices in the next command's output), and sets a unique
  prompt that carries the exit status and the cwd. Output is then exactly the bytes the
  command printed, and the prompt gives ``exit_status`` and ``cwd``.
* ``native`` (network OSes whose prompt cannot be set): netmiko's own session preparation
  for the device type (paging off, base prompt), then frame on that base prompt.
"""

from __future__ import annotations

import codecs
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import paramiko

from .callstate import caller_gone
from .chain import SendGate
from .errors import CallAbandonedError, SessionBusyError, SessionDeadError, SessionError
from .framing import SENTINEL_DEVICE_TYPES, Framer, NativeFramer, SentinelFramer
from .inventory import Target
from .liveness import Link, first_failure
from .login import Login
from .output import DEFAULT_CAP, CommandResult, _Run, omission
from .platforms import for_device_type
from .patterns import SafePattern
from .prompts import CONTROL, awaiting_input, compile_pattern
from .redact import add_secret, mask

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_CAP", "CommandResult", "Session", "compile_pattern"]

LOCK_GRACE = 0.5              # how long a call waits for a short holder (paging done output)
HANGUP_WAIT = 1.0             # how long a close waits for a read or write under way on the channel
_EXIT = re.compile(r"(?i)(?:exit|logout|quit|bye)\Z")
DISCARD_WAIT = 5.0            # seconds for the prompt after a bare Ctrl-C at the shell prompt


class Session:
    """A persistent shell on one target. Thread-safe: one operation at a time.

    The lock is never taken blindly: a call that cannot have the session within its own wait
    gets :class:`SessionBusyError` (what runs, for how long, how long its waiter may still
    wait) instead of waiting behind another call's wait.
    """

    def __init__(self, target: Target, login: Login, channel: paramiko.Channel, framer: Framer,
                 *, cap: int = DEFAULT_CAP, memory: int | None = None) -> None:
        self.target = target
        self.login = login                # the connection its shell runs on (maybe shared)
        self._conn = login.conn           # netmiko connection; never leaves the core
        self._released = False            # close() has let go of the login
        self._close_lock = threading.Lock()
        self._chan = channel
        self.framer = framer
        self.cap = cap
        self.memory = memory              # characters of a command's output kept in memory
        self._lock = threading.RLock()    # one reader/command at a time
        self._wlock = threading.Lock()    # writes; send() may answer while a command waits
        # the server's CLOSE (the shell exited) is answered between two writes (chain.SendGate)
        self._gate = channel.phj_gate = SendGate(self._wlock, wait=HANGUP_WAIT)
        self._rlock = threading.Lock()    # held by the reader inside the channel's recv
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="backslashreplace")
        self._run: _Run | None = None
        self.cwd: str | None = None
        self.dead: str | None = None      # why, once the shell or a hop went away
        self._holder_until: float | None = None   # monotonic end of the wait of the lock holder
        self._partial = False             # a command line typed at the prompt, no Enter yet
        self._held = ""                   # sentinel: that line, not sent until its Enter
        self.ended: int | None = None     # exit status, when the shell itself exited (`exit`)
        self.links: list[Link] = []       # the hops, then the target: who to blame
        self.setup_tail = ""              # the end of what preceded the last setup prompt
        self.last_activity = time.time()

    # -- opening ----------------------------------------------------------------------
    @classmethod
    def start(cls, target: Target, sock: Any, *, cap: int = DEFAULT_CAP,
              framing: str | None = None, links: list[Link] | tuple[Link, ...] = (),
              logged_in: Callable[[], None] | None = None,
              memory: int | None = None) -> "Session":
        """Log in to ``target`` over ``sock`` (a tunnel channel or a TCP socket) and frame the shell.

        ``links`` are the liveness links of the hops before it (first hop first); the
        target's own link is added, so a failure is blamed on the right one. ``logged_in``
        is called once authentication is done (the caller paces logins up to there). The
        session's :class:`Login` (``session.login``) can carry more sessions: :meth:`attach`.
        """
        from .chain import wrap_error
        ep = target.endpoint
        framing = framing or ("sentinel" if target.device_type in SENTINEL_DEVICE_TYPES else "native")
        try:
            login = Login.connect(target, sock, posix=framing == "sentinel", logged_in=logged_in,
                                  outer=links)
        except Exception as exc:
            raise wrap_error(exc, ep, target.chain[-1] if target.chain else None, role="host") from exc
        return cls._framed(target, login, login.first_channel, framing, links,
                           cap=cap, memory=memory)

    @classmethod
    def attach(cls, login: Login, *, cap: int = DEFAULT_CAP,
               links: list[Link] | tuple[Link, ...] = (), memory: int | None = None) -> "Session | None":
        """A new POSIX session on an existing login, counted by :meth:`Login.share` already.

        None when the server refuses the channel, the pty or the shell (MaxSessions; or the
        connection is going): the login takes no more sessions, and the caller logs in anew.
        """
        try:
            chan = login.shell()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            log.info("%s: no further shell on its login (%s); logging in anew",
                     login.target.name, exc or type(exc).__name__)
            login.full = True
            login.release()
            return None
        except BaseException:
            login.release()
            raise
        return cls._framed(login.target, login, chan, "sentinel", links, cap=cap, memory=memory)

    @classmethod
    def _framed(cls, target: Target, login: Login, chan: paramiko.Channel, framing: str,
                links: list[Link] | tuple[Link, ...], *, cap: int, memory: int | None) -> "Session":
        from .chain import wrap_error
        chan.settimeout(None)
        framer: Framer = (SentinelFramer() if framing == "sentinel"
                          else NativeFramer(for_device_type(target.device_type)))
        session = cls(target, login, chan, framer, cap=cap, memory=memory)   # its secrets: registered by resolve()
        session.links = [*links, login.link]
        try:
            framer.setup(session)
            session.last_activity = time.time()
        except Exception as exc:
            session.close()
            if isinstance(exc, SessionError):
                raise SessionError(f"the shell on {target.name} did not come up: {exc.what}",
                                   where=f"host {target.name!r}",
                                   hint="check the account's login shell; device_type decides "
                                        "the framing (sentinel needs a POSIX shell)") from exc
            raise wrap_error(exc, target.endpoint, None, role="host") from exc
        return session

    # -- the wire ---------------------------------------------------------------------
    def _write(self, text: str) -> None:
        self._write_bytes(text.encode("utf-8"))

    def _write_bytes(self, data: bytes) -> None:
        try:
            with self._gate.sending():
                self._chan.sendall(data)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            chan = self._chan
            if chan.status_event.is_set() and chan.exit_status >= 0 and not getattr(
                    chan, "exit_signal", None):    # the shell exited (`exit 3`) before this input
                self._exited(chan.exit_status)
            else:
                self._die(f"the connection closed while sending: {self.blame()}")
            raise self._dead_error() from exc

    def _die(self, why: str) -> None:
        if self.dead is None:
            self.dead = why

    def _exited(self, status: int) -> None:
        """The shell itself ended (`exit 3`): a normal end, with its status."""
        self.ended = status
        self._die(f"the shell exited with status {status}")

    def _dead_error(self) -> SessionDeadError:
        if self.ended is not None:
            return SessionDeadError(f"the session has ended: {self.dead}",
                                    where=f"host {self.target.name!r}",
                                    hint="open a new session, or revive this one to reopen it "
                                         "under the same id")
        return SessionDeadError(f"session is dead: {self.dead}", where=f"host {self.target.name!r}",
                                hint="revive it (same id, same directory) or close it and open "
                                     "a new session")

    def blame(self, settle: float = 0.5) -> str:
        """Why the channel closed without an exit status: the first failed link, or the shell.

        A hop's transport notices its EOF a moment after the channels through it close, so
        look for up to ``settle`` seconds before concluding that only the shell went away.
        """
        deadline = time.monotonic() + settle
        while True:
            why = first_failure(self.links)
            if why is not None:
                return why
            if time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        if self.links:
            why = (f"the remote shell ended without an exit status (killed by a signal, e.g. "
                   f"kill -9); the connection to {self.target.name} is still up")
            if self.framer.canonical:
                # busybox ash reads a canonical terminal with stdio: a child's SIGCHLD at its
                # prompt reads as the end of its input, and it leaves
                why += ("; on this host a background job that ends while the shell waits at "
                        "its prompt ends the shell: start such jobs as `(command &)`")
            return why
        return "the remote shell or a hop closed the connection"

    def check_links(self) -> None:
        """Mark the session dead, naming the link, if a hop or the target is down."""
        if self.dead is None and (why := first_failure(self.links)) is not None:
            self._die(why)
        elif self.dead is None and self._chan.closed and (self._run is None or self._run.done):
            self._die(self.blame(settle=0.2))   # idle: no waiting call will look at the close

    def _pump(self, deadline: float, *, setup: bool = False, until: SafePattern | None = None,
              stop_on_input: bool = False) -> bool:
        """Read until the prompt ends the current run, ``until`` matches, or the deadline.

        Returns True when the wait ended early because of ``until``/an input prompt.
        """
        run = self._run
        if setup:
            run = self._new_run(None)
        assert run is not None
        native = isinstance(self.framer, NativeFramer)
        while not run.done:
            remaining = deadline - time.monotonic()
            if remaining <= 0 and not self._chan.recv_ready():   # past the wait: drain, don't block
                if native and self.framer.candidate:
                    self._end_native(run)
                    break
                if setup:
                    raise SessionError(f"no framed prompt within {self.target.endpoint.connect_timeout:g}s")
                return False
            # native: a prompt at the end of the stream ends the command once nothing follows
            # it for the settle time (a prompt-looking line split from its newline does not)
            settling = native and self.framer.candidate
            self._chan.settimeout(min(max(remaining, 0.0), self.framer.settle) if settling
                                  else max(remaining, 0.0))
            try:
                with self._rlock:
                    data = self._chan.recv(1 << 16)
            except socket.timeout:
                if settling:
                    self._end_native(run)
                continue
            except (OSError, EOFError, paramiko.SSHException):
                data = b""
            if not data:
                if setup:
                    raise SessionError("the remote end closed the connection during setup")
                if native and run.command is not None and _EXIT.match(run.command.strip()):
                    # `exit`/`quit` at the top level: the device ended the session as asked
                    # (a normal end, like a shell's `exit`; a device sends no status: 0)
                    self.ended = self._chan.exit_status if self._chan.status_event.is_set() else 0
                    self._die(f"the device closed the session after {run.command.strip()!r}")
                    run.done, run.ended = True, time.monotonic()
                    return False
                # The shell itself exited (`exit 3`): sshd sends the status around the EOF, so
                # give it a moment; a dead hop closes the channel with no status (-1).
                self._chan.status_event.wait(1.0)
                status = self._chan.exit_status if self._chan.status_event.is_set() else -1
                killed = getattr(self._chan, "exit_signal", None)
                if killed:                       # `kill -9 $$`: not a normal end, not a hop
                    self._die(f"the remote shell was killed by signal {killed}; the connection "
                              f"to {self.target.name} is still up")
                    raise self._dead_error()
                if status >= 0:
                    # `exit`: a normal end, with its status; a login shell's "logout" is not output
                    self._exited(status)
                    end = run.length - len("logout\n")
                    if end >= run.delivered and run.out.slice(end, run.length) == "logout\n":
                        run.out.truncate(end)
                    run.exit_status, run.cwd, run.done, run.ended = status, self.cwd, True, time.monotonic()
                    return False
                self._die(self.blame())
                raise self._dead_error()
            before = run.length
            self._feed(run, self.framer.filter(self._decoder.decode(data)))
            if native and self.framer.candidate and self._chan.recv_ready():
                continue                         # more is already here: not the end yet
            if setup and run.done:
                # what came before the prompt: the framer looks for its own echo in it
                self.setup_tail = run.out.slice(max(run.length - 8192, 0), run.length)
                self._run = None
                return False
            if not run.done and (until or stop_on_input):
                # a prompt may straddle chunks (look back), but output the caller was already
                # given cannot match again (a second, identical prompt must be a new one)
                # (only the newest text is read: linear in the output, however long)
                window = run.out.slice(max(before - 256, run.delivered, 0), run.length)
                held = self.framer.held() if native and not self.framer.candidate else ""
                if until is not None and until.search(window + held):
                    if held:
                        self._release_held(run)
                    return True
                # only output the caller has not seen yet can be a new question; by its words
                # only (not by the program): a wait must not end at "prog: " cut mid-message
                if stop_on_input and awaiting_input(run.out.slice(
                        max(run.delivered, run.answered, run.length - 256), run.length)):
                    return True
                # native: a question (Password:) is the held last line, not yet output
                if stop_on_input and held and awaiting_input(held):
                    self._release_held(run)
                    return True
        if setup:
            self._run = None
        return False

    @staticmethod
    def _append(run: _Run, text: str) -> None:
        """Native: output the framing released, into the run's buffer."""
        if text:
            run.out.append(text)

    def _release_held(self, run: _Run) -> None:
        """Native: give the caller the held last line (a question, or what ``until`` matched)."""
        self._append(run, self.framer.release_held())

    def _end_native(self, run: _Run) -> None:
        self._append(run, self.framer.finish())
        run.cwd = self.cwd
        run.done, run.ended = True, time.monotonic()

    def _drain(self) -> None:
        """Give output that arrived after the last prompt to the run it belongs to.

        Nothing should be pending between commands; if something is (a background job's
        output), it must not be mistaken for the next command's output.
        """
        # native: left-overs precede the next command's echo, where framing drops them
        if self._run is not None and self._chan.recv_ready() and not isinstance(self.framer, NativeFramer):
            self._run.done = False   # reopen to collect; its exit status is already known
            status, cwd = self._run.exit_status, self._run.cwd
            self._pump(time.monotonic())
            self._run.done, self._run.exit_status, self._run.cwd = True, status, cwd

    def _feed(self, run: _Run, text: str) -> None:
        if not text:
            return
        if isinstance(self.framer, NativeFramer):
            self._append(run, self.framer.feed(text))
            if self.framer.reply:                # a pager asks for a key
                self._write(self.framer.reply)
                self.framer.reply = None
            return
        window = run.tail + text
        m = self.framer.pattern.search(window)
        if m is None:
            run.out.append(text)
            run.tail = window[-4096:]
            return
        # The prompt may straddle chunks: cut the stored output back to where it began.
        keep = m.start() - len(run.tail)
        if keep >= 0:
            run.out.append(text[:keep])
        else:
            run.out.truncate(run.length + keep)
        run.exit_status, cwd = self.framer.end(m)
        if cwd is not None:
            self.cwd = cwd
        run.cwd = self.cwd
        run.done, run.ended = True, time.monotonic()
        if self.framer.name == "native":
            self._clean_native(run)

    def _clean_native(self, run: _Run) -> None:
        """The framer's cleanup (the echoed command) on the output; on a large one, its head."""
        if run.length <= 65_536:
            run.out.reset(self.framer.clean(run.out.text(), run.command))
            return
        head = run.out.slice(0, 65_536)
        cleaned = self.framer.clean(head, run.command)
        if head.endswith(cleaned) and not run.out.spilled:
            run.out.drop_head(len(head) - len(cleaned))

    # -- public API -------------------------------------------------------------------
    def command(self, command: str, *, wait: float = 20.0, until: str | None = None) -> CommandResult:
        """Run ``command``; return when its prompt comes back or after ``wait`` seconds.

        A command still running after ``wait`` (or that stops at an input prompt or at
        ``until``) returns ``running=True``; :meth:`read` continues it.
        """
        pattern = compile_pattern(until)        # before anything is sent
        start = time.monotonic()
        self._check_idle()                      # busy: answer now, without the lock
        self._acquire(min(wait, LOCK_GRACE))
        try:
            self._check_idle()
            if caller_gone():                   # the caller gave up while this call queued
                raise CallAbandonedError("the caller gave up before the command was sent; "
                                         "nothing was sent", where=f"host {self.target.name!r}")
            self._drain()
            if isinstance(self.framer, NativeFramer):
                self._native_line(command)
            self._holder_until = start + wait   # before the run shows as running
            if isinstance(self.framer, NativeFramer):
                self.framer.begin(command)
                self._new_run(command)
                self._write(command.strip() + self.framer.newline)
            else:
                line = self.framer.wrap(command)    # may refuse it: before any state changes
                self._new_run(command)
                self._write(line)
            stopped = self._pump(start + wait, until=pattern, stop_on_input=True)
            return self._result(awaiting=stopped)
        finally:
            self._holder_until = None
            self._lock.release()

    def _native_line(self, command: str) -> None:
        if "\n" in command.strip() or "\r" in command.strip():
            raise SessionError(
                "a network device takes one command line at a time; this command has several "
                "lines", where=f"host {self.target.name!r}",
                hint="run the lines one by one, or apply a configuration block with config() "
                     "(MCP ssh_session_config), which checks every line for errors")

    def send(self, text: str = "", *, newline: bool = True, control: str | None = None,
             secret: bool = False) -> None:
        """Type raw text (answer a prompt, send Ctrl-C). ``secret`` text is masked in all output.

        Nothing to type (``text=""`` with ``newline=False``, or ``control=""``) is a no-op.
        At the shell prompt, Ctrl-U or Ctrl-C discards a line typed without Enter and leaves
        the session idle again (on a POSIX shell that line is only sent with its Enter).
        """
        if self.dead:
            raise self._dead_error()
        key = None
        if control:
            key = control.lower().removeprefix("ctrl-").removeprefix("^")
            if key not in CONTROL:
                raise SessionError(f"unknown control key {control!r}", where=f"host {self.target.name!r}",
                                   hint=f"use one of: {', '.join('ctrl-' + k for k in CONTROL)}")
        payload = text + ("\n" if newline and text else "") + (CONTROL[key] if key else "")
        if not payload and newline and control is None:
            payload = "\n"
        if not payload:
            return                  # nothing to type: the session's state is left as it was
        if caller_gone():
            raise CallAbandonedError("the caller gave up before the text was typed; nothing "
                                     "was sent", where=f"host {self.target.name!r}")
        data = payload.encode("utf-8")          # before any state changes (a lone surrogate)
        self.framer.check_typed(payload)
        if secret and text:
            add_secret(text)
        self.last_activity = time.time()
        answers = "\n" in payload or "\r" in payload or bool(control)
        sentinel = self.framer.name == "sentinel"
        if not self._lock.acquire(blocking=False):
            run = self._run
            if run is not None and not run.done:
                # Another call is waiting on this command's output: this is an answer or a
                # Ctrl-C for it, so write now rather than after that call's wait.
                if sentinel and self._partial:      # it waits on a line typed at the prompt
                    self._type_at_prompt(text, payload, key, waited_on=True)
                    return
                self._write_bytes(data)
                if key in ("c", "u") or "\n" in payload or "\r" in payload:
                    self._partial = False
                if answers:
                    run.answered = run.length
                return
            self._acquire(LOCK_GRACE)   # a short holder (a read of finished output)
        try:
            at_prompt = self._run is None or self._run.done or self._partial
            if self._run is None or self._run.done:
                if isinstance(self.framer, NativeFramer):
                    # a whole line typed at the prompt is a command: frame it by its echo too,
                    # so the shell shows what the API returns
                    line = text.strip() if newline and text and "\n" not in text.strip() else None
                    self.framer.begin(line)
                self._new_run(None)     # typed at the shell: frame it like a command
            if sentinel and at_prompt:
                self._type_at_prompt(text, payload, key)
                return
            if key in ("c", "u") and self._partial:
                self._discard_line(text, key)
                return
            self._write_bytes(data)
            if answers:     # a prompt printed before this answer asks for nothing any more
                self._run.answered = self._run.length
            if "\n" in payload or "\r" in payload or key:
                self._partial = False           # a line was entered: a program may run now
            elif at_prompt:
                self._partial = True            # part of a command line, not entered yet
        finally:
            self._lock.release()

    def _discard_line(self, text: str, key: str) -> None:
        """Network OS: Ctrl-U/Ctrl-C drop a line typed at the prompt; back to idle.

        The device's own line editing handles the key; nothing ran, so the run ends here.
        """
        run = self._run
        assert run is not None
        self._partial = False
        self._write_bytes((text + CONTROL[key]).encode("utf-8"))
        run.done, run.ended = True, time.monotonic()

    def _type_at_prompt(self, text: str, payload: str, key: str | None, *,
                        waited_on: bool = False) -> None:
        """Sentinel: what is typed at the shell prompt. A line reaches the shell with its Enter.

        The framing turns the shell's line editing and echo off, so a half-typed line does
        nothing there; held here instead, Ctrl-U or Ctrl-C drops it exactly. Sent, it could
        only be dropped by a SIGINT, and bash hit by one while it reads that line could lose
        the first characters of the next command (2 runs in 400 on a busy machine).
        ``waited_on``: another call holds the lock, waiting on this typed-input run.
        """
        run = self._run
        assert run is not None
        with self._wlock:                       # two callers typing at once lose nothing
            line_ends = "\n" in payload or "\r" in payload
            if key in ("c", "u"):
                held, self._held, self._partial = self._held + text, "", False
                if (not held and key == "c") or waited_on:
                    data = CONTROL["c"]         # the shell reads nothing now: nothing to race
                else:                           # nothing reached the shell: nothing ran
                    run.cwd, run.done, run.ended = self.cwd, True, time.monotonic()
                    return
            elif line_ends or key:
                data, self._held, self._partial = self._held + payload, "", False
            else:
                self._held += text
                self._partial = True
                return
        self._write_bytes(data.encode("utf-8"))
        run.answered = run.length
        if key == "c" and not waited_on:        # a bare Ctrl-C: $? is 130 at its prompt
            self._pump(time.monotonic() + DISCARD_WAIT)

    def fresh_input(self) -> tuple[str, str | None] | None:
        """What the running command asks for *now*: (newest output, its command line).

        None when no command runs. Output already waiting on the channel is taken in first
        (without waiting for more), so a command that has ended since the last read counts as
        ended; and the text is only what arrived since a line or control key was last typed,
        so a prompt already answered asks for nothing. Callers judge the text with
        :func:`~.prompts.awaiting_input`.
        """
        if self.dead:
            raise self._dead_error()
        if self._lock.acquire(blocking=False):     # never delays a send behind a long wait
            try:
                run = self._run
                if run is None or run.done:
                    return None
                self._pump(time.monotonic())            # drain what has arrived; never blocks
                if run.done:
                    return None
                return run.out.slice(max(run.answered, run.length - 256), run.length), run.command
            finally:
                self._lock.release()
        # another call is reading this command's output right now: its view is fresh
        run = self._run
        if run is None or run.done:
            return None
        tail, length, answered = run.tail, run.length, run.answered
        return tail[max(0, len(tail) - (length - answered)):], run.command

    def read(self, *, wait: float = 0.0, until: str | None = None, offset: int | None = None) -> CommandResult:
        """Collect pending output (waiting up to ``wait`` for the prompt or ``until``), or page.

        With ``offset``, return the output of the current/last command from that character on.
        """
        start = time.monotonic()
        pattern = compile_pattern(until)
        # within its own wait; with none, only a short holder is waited for, never a waiter
        self._acquire(wait if wait > 0 else 0.0 if self._holder_until else LOCK_GRACE)
        try:
            if self._run is None:
                r = CommandResult(None, "", None, False, self.cwd, 0.0)
                if isinstance(self.framer, NativeFramer):
                    r.mode, r.prompt = self.framer.mode, self.framer.prompt
                return r
            stopped = False
            if not self._run.done and not self.dead:
                self._holder_until = start + wait
                stopped = self._pump(start + wait, until=pattern, stop_on_input=wait > 0)
            return self._result(offset=offset, awaiting=stopped)
        finally:
            self._holder_until = None
            self._lock.release()

    def interrupt(self, wait: float = 5.0) -> CommandResult:
        """Ctrl-C the running command and wait for the prompt."""
        self.send(control="c", newline=False)
        return self.read(wait=wait)

    def output_text(self) -> str:
        """The whole (masked) output of the current or last command (see :meth:`output_pieces`)."""
        return "".join(self.output_pieces())

    def output_pieces(self, size: int = 1 << 20) -> Iterator[str]:
        """The (masked) output of the current or last command, piece by piece: bounded memory."""
        with self._lock:
            run = self._run
            if run is None:
                return
            for a in range(0, run.length, size):
                yield run.masked(a, min(a + size, run.length))

    @property
    def mode(self) -> str | None:
        """Network devices: the CLI mode the last prompt showed (exec, enable, config, ...)."""
        return self.framer.mode if isinstance(self.framer, NativeFramer) else None

    @property
    def running(self) -> bool:
        return self._run is not None and not self._run.done

    @property
    def state(self) -> str:
        return "dead" if self.dead else "running" if self.running else "idle"

    def close(self, why: str = "the session was closed", *, logout: float = 0.0) -> None:
        """Close, even while another call waits on output (it then ends as dead, told ``why``).

        ``logout``: seconds a POSIX shell at its prompt gets to log out (``exit``, so its
        ``~/.bash_logout`` runs) before the channel closes; 0 hangs it up at once, as a
        dropped connection or a closed terminal would. A running command is always hung up.
        """
        at_prompt = self.dead is None and not self.running
        self._die(why)
        if self._run is not None and self._run.done:
            self._run.out.close()     # a running command's reader still owns its buffer
        with self._close_lock:
            if self._released:
                return
            self._released = True
        if isinstance(self.framer, SentinelFramer):
            # At its prompt the shell logs out with its own `exit` and is waited for: closing
            # the channel right after it let the hangup win nearly every time, so whether
            # ~/.bash_logout ran was luck. A running command is hung up, never typed into
            # ("exit" would be its next line of input). Only this channel closes: the login
            # may go on carrying other sessions' shells.
            if at_prompt and logout > 0:
                try:
                    with self._gate.sending():
                        self._chan.sendall(b"exit\n")
                    self._chan.status_event.wait(logout)    # its exit status, or the channel's close
                except Exception:  # already gone; nothing to report to the caller
                    pass
            self._hang_up()
        self.login.release()

    def _hang_up(self) -> None:
        """Close the channel once no thread of ours is between paramiko's check that it is
        open and the message it then sends (a window adjust in ``recv``, data in ``send``).

        The RFC allows nothing on a channel after its CLOSE. OpenSSH and dropbear end the
        whole connection for late data ("referred to nonexistent channel", "Received data
        after eof"), and on a shared login every other session's shell goes with it; a late
        window adjust they log or ignore. A reader waiting for output is woken; one stuck
        writing into a full window is given up on after HANGUP_WAIT (the close wakes it, and
        it sends nothing).
        """
        chan = self._chan
        with self._gate.last("hanging up"):     # no write under way (or given up on), none after
            chan.shutdown_read()          # no window adjust from here on
            chan.in_buffer.close()        # a reader waiting for output returns now, with nothing
            read = self._rlock.acquire(timeout=HANGUP_WAIT)
            try:
                chan.close()
            finally:
                if read:
                    self._rlock.release()

    # -- helpers ----------------------------------------------------------------------
    def _check_idle(self) -> None:
        if self.dead:
            raise self._dead_error()
        if self.running:
            raise self._busy()

    def _acquire(self, timeout: float) -> None:
        """Take the session lock within ``timeout`` seconds, or raise SessionBusyError."""
        if not self._lock.acquire(timeout=max(timeout, 0.0)):
            if self.dead:
                raise self._dead_error()
            raise self._busy()

    def _busy(self) -> SessionBusyError:
        run, until = self._run, self._holder_until
        now = time.monotonic()
        left = max(0.0, until - now) if until is not None else None
        if run is not None and not run.done:
            command = self._mask(run.command or "(typed input)")
            age = now - run.started
            what = f"a command is still running: {command!r} (for {age:.0f}s)"
        else:                                   # finished; another call still pages/reads it
            command, age = None, None
            what = "another call is reading this session's output"
        if left is not None:
            what += f"; another call waits on its output for up to {left:.0f}s more"
        return SessionBusyError(
            what, command=command, running_for=age, holder_left=left,
            where=f"host {self.target.name!r}",
            hint="read its output with read(wait=...), answer it with send(), or interrupt it "
                 "(Ctrl-C); nothing was sent")

    def _mask(self, text: str) -> str:
        return mask(text)

    def _new_run(self, command: str | None) -> _Run:
        if self._run is not None:
            self._run.out.close()
        self._run = _Run(command, time.monotonic(), self.memory)
        return self._run

    def _result(self, *, offset: int | None = None, awaiting: bool = False) -> CommandResult:
        """One result from the run's output: read by offset and masked slice by slice, so its
        cost is the size of what is returned, not of the whole output."""
        run = self._run
        assert run is not None
        self.last_activity = time.time()
        total = run.length
        # while the command runs, its newest characters may be the start of a secret whose
        # rest has not arrived: they wait for the next read (masking needs the whole of it)
        end = total if run.done else max(total - run.pending(), run.delivered)
        start = run.delivered if offset is None else max(0, min(offset, end))
        omitted = None
        truncated = False
        if offset is not None and end - start > self.cap:       # paging: one page from offset
            piece, next_offset, truncated = run.masked(start, start + self.cap), start + self.cap, True
        elif end - start > self.cap:                            # head and tail, middle omitted
            half = self.cap // 2
            omitted = (start + half, end - half)
            piece = (run.masked(start, start + half)
                     + omission(*omitted, f"; read with offset={omitted[0]}")
                     + run.masked(end - half, end))
            next_offset, truncated = end, True
        else:
            piece, next_offset = run.masked(start, end), end
        if offset is None:
            run.delivered = end
        end = run.ended if run.done and run.ended else time.monotonic()
        result = CommandResult(
            command=self._mask(run.command) if run.command else None, output=piece,
            exit_status=run.exit_status, running=not run.done, cwd=run.cwd if run.done else self.cwd,
            duration=round(end - run.started, 4), offset=start, total=total, next_offset=next_offset,
            truncated=truncated, omitted=omitted, awaiting_input=awaiting and not run.done)
        if isinstance(self.framer, NativeFramer):
            # no exit status on a network OS: the platform's error markers, the mode, the prompt
            result.mode, result.prompt = self.framer.mode, self._mask(self.framer.prompt or "") or None
            if run.done:
                # error markers lead or end a device's output: its head and tail (linear cost)
                sample = (run.masked(0, total) if total <= 16_384 else
                          run.masked(0, 8192) + "\n" + run.masked(total - 8192, total))
                error = self.framer.platform.error_in(sample)
                result.error_detected, result.error = error is not None, error
            result.notice = self.framer.notice() if run.command is not None else None
        return result


