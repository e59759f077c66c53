"""``phonehome-jump shell`` on a terminal: a real terminal through the chain, like ``ssh -t``.

The local terminal goes raw; bytes pass both ways as they come over a pty shell channel on
the target (sized like the local terminal, resized on SIGWINCH), so echo, line editing,
history, Tab completion, a network OS's ``?``, ``less``/``top``/``vi`` and Ctrl-C/Z/\\ are
the remote's own. ``~.`` at the start of a line leaves (``~?`` lists the escapes, ``~~``
types one ``~``). The local terminal is restored on every way out (exit, errors, signals).

Policy and audit when the remote edits the line: the remote output is also fed into a
terminal emulator (pyte). When Enter is pressed, it is held until the remote's echo has
settled, and the line is read off the emulated screen from where the cursor was when the
line's first key was typed; the text before that point on the row is the prompt:

* a prompt that asks for a secret (``prompts.line_is_secret``: "Password:", "[sudo] …:",
  "Enter PEM pass phrase:", …), or keys typed that the remote did not echo (echo off is how
  every program asks for a password, whatever its prompt: ``sudo -p 'Code> '``): the line is
  a secret: not checked, audited as ``********``;
* a question (``prompts.awaiting_input``: ``[Y/n]``, ``(yes/no)``): an answer, checked like
  a send into a running command (deny/confirm only) and audited with its text;
* no prompt before it (typed into a running program, or typed ahead of a prompt that has
  not appeared yet, e.g. a password typed before sudo asks): audited as ``********`` too,
  and checked against the policy without its text ever being recorded;
* otherwise it is a command line: checked against the policy (a refused line is not sent:
  Ctrl-C clears it remotely and the refusal is shown) and audited with its text.

In a full-screen program (alternate screen: ``vi``, ``less``, ``top``) keys pass unchecked.
This is a guardrail like the policy itself, not a sandbox: a remote that hides its echo
or redraws oddly shows the policy a different line than the one that runs.
"""

from __future__ import annotations

import codecs
import errno
import logging
import os
import re
import select
import signal
import sys
import threading
import time
from typing import Any

import paramiko

from .direct import DirectChannel, StreamMasker
from .errors import PhonehomeJumpError, PolicyError
from .inventory import Target
from .manager import SessionManager
from .prompts import awaiting_input, line_is_secret
from .redact import MASK

log = logging.getLogger(__name__)

PROG = "phonehome-jump"
EXIT_CONNECT = 255
ESCAPE_HELP = ("Supported escape sequences (at the start of a line):\r\n"
               " ~.   leave (close the connection)\r\n"
               " ~?   this message\r\n"
               " ~~   type one ~\r\n")
_ALT_SCREEN = re.compile(r"\x1b\[\?(?:1049|1047|47)([hl])")
_ENTER = (b"\r", b"\n")
_RESETS = (0x03, 0x04, 0x1a, 0x1c)   # Ctrl-C/D/Z/\: the line being typed is abandoned


class _Hangup(Exception):
    """SIGHUP/SIGTERM while connected: restore the terminal, then exit 128+N."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _screen_class() -> Any:
    import pyte   # only the interactive shell needs the emulator

    class Screen(pyte.Screen):  # type: ignore[misc]
        """Counts scrolls, so a line's start row can be followed up the screen."""

        scrolled = 0

        def index(self) -> None:
            top, bottom = self.margins or (0, self.lines - 1)
            if self.cursor.y == bottom:
                self.scrolled += 1
            super().index()

    return Screen, pyte.Stream


class LineWatch:
    """What line the remote shows when Enter is pressed (for policy and audit)."""

    def __init__(self, cols: int, rows: int) -> None:
        screen_cls, stream_cls = _screen_class()
        self.screen = screen_cls(cols, rows)
        self.stream = stream_cls(self.screen)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.fullscreen = False
        self.start: tuple[int, int, int] | None = None   # row, column, scrolls at the first key
        self.typed = 0                  # printable keys typed on this line

    def output(self, data: bytes) -> None:
        text = self.decoder.decode(data)
        for m in _ALT_SCREEN.finditer(text):
            self.fullscreen = m.group(1) == "h"
        self.stream.feed(text)

    def resize(self, cols: int, rows: int) -> None:
        self.screen.resize(rows, cols)

    def key(self, byte: int) -> None:
        if byte in _RESETS:
            self.start, self.typed = None, 0
            return
        if self.start is None:
            c = self.screen.cursor
            self.start = (c.y, c.x, self.screen.scrolled)
        if 0x20 <= byte != 0x7f:
            self.typed += 1

    def entered(self, command: str | None = None) -> tuple[str, str] | None:
        """The kind of line Enter ends and its text as shown; None in a full-screen program.

        Kinds: "secret" (after a password-like prompt, or typed and not echoed: the remote
        has echo off, as for any password), "answer" (after a [y/n]-style question),
        "input" (nothing before it on its row: typed into a program or ahead of a prompt),
        else "command".
        """
        start, self.start = self.start, None
        typed, self.typed = self.typed, 0
        if self.fullscreen:
            return None
        s = self.screen
        if start is None:                                # Enter alone: nothing typed
            row, col = s.cursor.y, s.cursor.x
        else:
            row, col = start[0] - (s.scrolled - start[2]), start[1]
        display = s.display
        if row < 0:
            row, col = 0, 0
        prompt = display[row][:col]
        end = max(s.cursor.y, row)
        line = display[row][col:] + "".join(display[r] for r in range(row + 1, end + 1))
        line = line.strip()
        # command: the last command line entered, so that after a program that reads
        # passwords any prompt-shaped line counts (the shared rule, prompts.line_is_secret)
        if line_is_secret(prompt, command) or (typed and not line):
            return "secret", line
        if awaiting_input(prompt.rstrip()):
            return "answer", line
        if not prompt.strip():
            return "input", line
        return "command", line


def _terminal_size(fd: int) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(fd)
        return max(size.columns, 1), max(size.lines, 1)
    except OSError:
        return 80, 24


def _write_all(fd: int, data: bytes) -> None:
    while data:
        try:
            n = os.write(fd, data)
        except InterruptedError:
            continue
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        data = data[n:]


class _Shell:
    def __init__(self, ch: DirectChannel, chan: Any, fd_in: int, fd_out: int, *, confirm: bool,
                 watch: LineWatch | None) -> None:
        self.ch, self.chan, self.fd_in, self.fd_out = ch, chan, fd_in, fd_out
        self.confirm = confirm
        self.watch = watch
        self.masker = StreamMasker()
        self.line_start = True          # for the ~ escapes
        self.tilde = False
        self.sent_at: float | None = None   # last keys sent, awaiting their echo
        self.rtt = 0.05                 # echo latency estimate, for settling before a check
        self.closed = False
        self.last_command: str | None = None   # the last command line entered (prompt rules)

    # -- remote to local ------------------------------------------------------------
    def pump(self) -> bool:
        """Copy what the remote sent; False once it closed."""
        got = False
        while self.chan.recv_ready():
            data = self.chan.recv(65536)
            if not data:
                break
            got = True
            if self.sent_at is not None:
                sample = time.monotonic() - self.sent_at
                if sample < 1.0:        # longer: output of a command, not an echo
                    self.rtt = 0.7 * self.rtt + 0.3 * sample
                self.sent_at = None
            if self.watch is not None:
                self.watch.output(data)
            _write_all(self.fd_out, self.masker.feed(data))
        while self.chan.recv_stderr_ready():        # a pty merges stderr; keep any anyway
            _write_all(self.fd_out, self.masker.feed(self.chan.recv_stderr(65536)))
        if not got and self.masker.pending:
            _write_all(self.fd_out, self.masker.flush())
        return not (self.chan.eof_received and not self.chan.recv_ready())

    def settle(self) -> None:
        """Wait until the remote's echo of what was typed has arrived (bounded).

        First for some answer to the keys sent (up to 4x the measured echo time: a remote
        with echo off, at a password prompt, never answers), then for output to pause.
        """
        quiet = min(max(2.5 * self.rtt, 0.03), 1.0)
        deadline = time.monotonic() + 2.0
        if self.sent_at is not None:
            first = min(self.sent_at + max(4 * self.rtt, 0.15), deadline)
            while self.sent_at is not None and time.monotonic() < first:
                ready, _, _ = select.select([self.chan], [], [], first - time.monotonic())
                if ready and not self.pump():
                    return
            self.sent_at = None         # no answer (echo off): not an echo-time sample
        last = time.monotonic()
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.chan], [], [], quiet)
            if not ready:
                if time.monotonic() - last >= quiet:
                    return
                continue
            if not self.pump():
                return
            last = time.monotonic()

    # -- local to remote ------------------------------------------------------------
    def send(self, data: bytes) -> None:
        if data:
            self.chan.sendall(data)
            self.sent_at = self.sent_at or time.monotonic()

    def keys(self, data: bytes) -> bool:
        """Handle typed bytes; False when the user left with ``~.``."""
        out = bytearray()
        for byte in data:
            b = bytes([byte])
            if self.tilde:
                self.tilde = False
                if b == b".":
                    self.send(bytes(out))
                    return False
                if b == b"?":
                    _write_all(self.fd_out, ESCAPE_HELP.encode())
                    continue
                if b != b"~":
                    out += b"~"
                    if self.watch is not None:
                        self.watch.key(ord("~"))
            elif self.line_start and b == b"~":
                self.tilde = True
                continue
            self.line_start = b in _ENTER
            if b in _ENTER and self.watch is not None:
                self.send(bytes(out))
                out.clear()
                self.enter(b)
                continue
            if self.watch is not None:
                self.watch.key(byte)
            out += b
        self.send(bytes(out))
        return True

    def enter(self, key: bytes) -> None:
        assert self.watch is not None
        self.settle()
        seen = self.watch.entered(self.last_command)
        if seen is None:                                 # full-screen program: its own keys
            self.send(key)
            return
        kind, line = seen
        if kind == "command" and not line:
            self.send(key)
            return
        try:
            if kind == "command":
                self.ch.check(line, confirm=self.confirm)
            elif kind == "answer":                      # like a send into a running command
                self.ch.check(line, confirm=self.confirm, at_prompt=False)
            elif kind == "input":
                self._check_unseen(line)
            elif self.ch.manager.audit:
                self.ch.manager.audit.check()
        except PhonehomeJumpError as err:
            if not (isinstance(err, PolicyError) and err.needs_confirm and kind == "command"
                    and self._person_confirms(line, err)):
                # not sent: Ctrl-C discards the line on the remote side, which redraws its prompt
                text = err.what if isinstance(err, PolicyError) and kind != "command" else str(err)
                _write_all(self.fd_out, f"\r\n{PROG}: not sent: {text}\r\n".encode()
                           .replace(b"\n  try:", b"\r\n  try:"))
                self.send(b"\x03")
                return
        self.send(key)
        if kind == "command":
            self.last_command = line
            self.ch.record("command", command=line, outcome="entered", terminal=True)
            self.ch.transcript(f"$ {line}\n")
        elif kind == "answer":
            self.ch.record("send", command=line, outcome="sent", terminal=True)
            self.ch.transcript(f"» {line}\n")
        else:
            self.ch.record("send", command=MASK, outcome="sent", terminal=True,
                           secret=True if kind == "secret" else None)
            self.ch.transcript(f"» {MASK}\n")

    def _person_confirms(self, line: str, err: PolicyError) -> bool:
        """A confirm rule matched: the person at this terminal decides (one key, y to send)."""
        _write_all(self.fd_out, (f"\r\n{PROG}: the policy of {self.ch.target.name} asks to "
                                 f"confirm this command (rule {err.rule!r}). Send it? [y/N] ")
                   .encode())
        try:
            answer = os.read(self.fd_in, 1)
        except OSError:
            answer = b""
        _write_all(self.fd_out, answer.replace(b"\r", b"") + b"\r\n")
        if answer not in (b"y", b"Y"):
            return False
        try:
            self.ch.check(line, confirm=True)       # deny still wins over a confirmation
        except PhonehomeJumpError:
            return False
        self.ch.record("policy_confirmed", command=line, rule=err.rule,
                       approved_by="cli terminal: the person typed y")
        return True

    def _check_unseen(self, line: str) -> None:
        """The policy on a line whose text must not be recorded (maybe a typed-ahead password)."""
        target = self.ch.target
        try:
            target.policy.check(line, host=target.name, confirm=self.confirm, at_prompt=True)
        except PolicyError as err:
            self.ch.record("policy_refusal", command=MASK, rule=err.rule,
                           outcome="needs_confirm" if err.needs_confirm else "refused")
            raise PolicyError("the policy refused the line typed without a prompt before it "
                              "(its text is not shown or recorded)", where=f"host {target.name!r}",
                              hint="wait for the prompt, or use --confirm for confirm rules") from None
        if self.ch.manager.audit:
            self.ch.manager.audit.check()


def interactive(manager: SessionManager, target: Target, *, confirm: bool = False,
                fd_in: int | None = None, fd_out: int | None = None) -> int:
    import termios
    import tty

    fd_in = sys.stdin.fileno() if fd_in is None else fd_in
    fd_out = sys.stdout.fileno() if fd_out is None else fd_out
    cols, rows = _terminal_size(fd_in)
    term = os.environ.get("TERM") or "vt100"
    ch = DirectChannel(manager, target, kind="terminal")
    try:
        chan = ch.shell(term, cols, rows)          # connect errors come before raw mode
    except BaseException:
        ch.close("error")
        raise
    watch = LineWatch(cols, rows) if (not target.policy.empty or manager.audit) else None
    shell = _Shell(ch, chan, fd_in, fd_out, confirm=confirm, watch=watch)
    arrow = " → " if (getattr(sys.stderr, "encoding", "") or "").lower().startswith("utf") else " -> "
    via = arrow.join(h.name for h in target.chain) or "direct"
    print(f"Connected to {target.name} via {via}. Escape sequence: ~. at the start of a line "
          "leaves, ~? lists the others.", file=sys.stderr, flush=True)

    main_thread = threading.current_thread() is threading.main_thread()
    resized = [False]
    saved_handlers: dict[int, Any] = {}
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    old_wakeup = None

    def on_winch(signum: int, frame: Any) -> None:
        resized[0] = True

    hangup: list[int] = []

    def on_hangup(signum: int, frame: Any) -> None:
        # noted, not raised: an exception thrown into whatever runs (a paramiko send, a
        # lock) could be swallowed or surface as another error; set_wakeup_fd wakes the loop
        hangup.append(signum)

    saved = termios.tcgetattr(fd_in)
    status: int | None = None
    left = False
    try:
        if main_thread:
            old_wakeup = signal.set_wakeup_fd(wake_w)
            for signum, handler in ((signal.SIGWINCH, on_winch), (signal.SIGHUP, on_hangup),
                                    (signal.SIGTERM, on_hangup)):
                saved_handlers[signum] = signal.signal(signum, handler)
        tty.setraw(fd_in)
        while True:
            try:
                ready, _, _ = select.select([chan, fd_in, wake_r], [], [],
                                            0.05 if shell.masker.pending else 1.0)
            except InterruptedError:
                ready = []
            if not ready and shell.masker.pending:     # a held tail that began no secret
                _write_all(fd_out, shell.masker.flush())
            if wake_r in ready:
                try:
                    os.read(wake_r, 512)
                except BlockingIOError:
                    pass
            if hangup:
                raise _Hangup(hangup[0])
            if resized[0]:
                resized[0] = False
                cols, rows = _terminal_size(fd_in)
                chan.resize_pty(width=cols, height=rows)
                if watch is not None:
                    watch.resize(cols, rows)
            if chan in ready or chan.recv_ready():
                if not shell.pump():
                    break
            if fd_in in ready:
                try:
                    data = os.read(fd_in, 4096)
                except OSError as exc:
                    if exc.errno == errno.EIO:          # the local terminal went away
                        break
                    raise
                if not data:
                    break
                if not shell.keys(data):
                    left = True
                    break
            if chan.closed or (chan.exit_status_ready() and chan.eof_received
                               and not chan.recv_ready()):
                shell.pump()
                break
        _write_all(fd_out, shell.masker.flush())
        if not left and chan.status_event.wait(2.0) and chan.exit_status >= 0:
            status = chan.exit_status
    except _Hangup as hup:
        status = 128 + hup.signum
        left = True
    finally:
        termios.tcsetattr(fd_in, termios.TCSADRAIN, saved)
        if main_thread:
            for signum, handler in saved_handlers.items():
                signal.signal(signum, handler)
            if old_wakeup is not None:
                signal.set_wakeup_fd(old_wakeup)
        os.close(wake_r)
        os.close(wake_w)
        try:
            ch.close("closed" if status is not None else "lost")
        except (OSError, EOFError, paramiko.SSHException) as exc:   # already gone: nothing to undo
            log.debug("closing the terminal channel: %s", exc)
    if status is not None and not left:
        killed = getattr(chan, "exit_signal", None)
        if killed:      # (a shell's `exit N` says nothing; a killed shell is worth a line)
            print(f"\r\n{PROG}: {target.name}: the remote shell was killed by signal {killed}",
                  file=sys.stderr, flush=True)
        return status
    if left and status is None:
        print(f"\r\nConnection to {target.name} closed.", file=sys.stderr, flush=True)
        return EXIT_CONNECT
    if status is None:
        print(f"\r\n{PROG}: {target.name}: the connection closed without an exit status "
              "(a hop or the target went away)", file=sys.stderr, flush=True)
        return EXIT_CONNECT
    return status
