"""``phonehome-jump run`` on POSIX targets: behaves like ``ssh host command``.

stdin is forwarded and closed at its end, stdout and stderr stay separate and are written
as they arrive (masked, nothing kept), the exit status is the remote's, and a closed stdout
(``| head``) ends the command with 141 like SIGPIPE. The inventory's policy is checked and
the command audited before anything is sent.

``--sudo-password``: the command runs on a remote terminal (sudo needs one to ask) with echo
and CR/LF translation off; sudo's prompt is set to a unique token (``SUDO_PROMPT``) that is
answered once with the inventory's sudo_password and removed from the output. On a terminal
the remote merges stderr into stdout and stdin is not forwarded (like ``ssh -n``).
"""

from __future__ import annotations

import io
import os
import secrets
import select
import sys
import threading
import time
from typing import Any, BinaryIO

import paramiko

from .direct import DirectChannel, StreamMasker
from .manager import SessionManager
from .inventory import Target

PROG = "phonehome-jump"
EXIT_ERROR = 1
EXIT_TIMEOUT = 124
EXIT_CONNECT = 255
_SUDO_RETRY = b"try again"
_SUDO_NEEDS_TTY = (b"a terminal is required to read the password", b"a password is required")


def _binary(stream: Any) -> BinaryIO | None:
    return getattr(stream, "buffer", None)


def _write(stream: Any, data: bytes) -> None:
    if not data:
        return
    buf = _binary(stream)
    if buf is None:                     # a text-only stream (tests): decode as the remote wrote it
        stream.write(data.decode("utf-8", "replace"))
        stream.flush()
        return
    stream.flush()
    buf.write(data)
    buf.flush()


def _stdin_fd(stream: Any) -> int | None:
    """The stdin file descriptor to forward, or None (no usable stdin: the command gets EOF)."""
    try:
        return stream.fileno()
    except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
        return None


class _SudoAnswer:
    """Finds sudo's token prompt in stdout, answers it once, and cuts it from the output."""

    def __init__(self, password: str, host: str) -> None:
        self.chan: paramiko.Channel | None = None     # set once the command is started
        self.password, self.host = password, host
        self.prompt = f"<<phj-sudo:{secrets.token_hex(8)}>>"
        self._token = self.prompt.encode()
        self._held = b""
        self._drop_newline = False
        self.answered = 0
        self.refused = False
        self._since = b""               # output since the last answer (for "try again")

    def filter(self, data: bytes) -> bytes:
        data = self._held + data
        self._held = b""
        if self._drop_newline and data:
            self._drop_newline = False
            if data.startswith(b"\n"):          # sudo's own newline after the (unechoed) answer
                data = data[1:]
        out = b""
        while True:
            i = data.find(self._token)
            if i < 0:
                break
            out += data[:i]
            self._answer((self._since + data[:i])[-256:])
            self._since = b""
            data = data[i + len(self._token):]
            if data.startswith(b"\n"):
                data = data[1:]
            elif not data:
                self._drop_newline = True
        # the token may straddle two pieces: hold back a tail that begins it
        for n in range(min(len(data), len(self._token) - 1), 0, -1):
            if self._token.startswith(data[-n:]):
                self._held, data = data[-n:], data[:-n]
                break
        self._since = (self._since + data)[-256:]
        return out + data

    def flush(self) -> bytes:
        held, self._held = self._held, b""
        return held

    def _answer(self, before: bytes) -> None:
        assert self.chan is not None
        if self.refused or (self.answered and _SUDO_RETRY in before):
            # asked again after "Sorry, try again": the inventory's password is wrong; do
            # not keep typing it (sudo would lock the account). Closing the channel hangs
            # up the remote terminal, which ends sudo (a Ctrl-C at its prompt may not).
            if not self.refused:
                print(f"{PROG}: {self.host}: sudo refused the inventory's sudo_password; "
                      "check the host's sudo_password reference", file=sys.stderr, flush=True)
            self.refused = True
            self.chan.close()
            return
        self.answered += 1
        self.chan.sendall(self.password.encode() + b"\n")


def _forward_stdin(fd: int, chan: paramiko.Channel, stop: threading.Event) -> None:
    """stdin to the remote command until EOF (then EOF to it), in its own thread.

    Its own thread, so a remote command that stops reading (its window full) cannot keep
    the main loop from draining its output: that would deadlock like a full pipe.
    """
    try:
        while not stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.2)
            if not ready:
                continue
            data = os.read(fd, 65536)
            if not data:
                break
            chan.sendall(data)
        if not stop.is_set():
            chan.shutdown_write()
    except (OSError, EOFError, paramiko.SSHException):
        pass                            # the command or the connection ended first


def run_exec(manager: SessionManager, target: Target, command: str, *, timeout: float | None,
             confirm: bool = False, sudo: bool = False, stdin: Any = None, stdout: Any = None,
             stderr: Any = None) -> int:
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    ch = DirectChannel(manager, target, kind="exec")
    ch.check(command, confirm=confirm)                  # before anything connects
    password = ch.sudo_password() if sudo else None
    started = time.monotonic()
    stop = threading.Event()
    total = 0
    outcome = "error"
    status: int | None = None
    ran = False
    try:
        sudo_answer = _SudoAnswer(password, target.name) if password is not None else None
        remote = command
        if sudo_answer is not None:
            # a terminal for sudo, made byte-exact; sudo's prompt is a token only we print
            remote = (f"stty -echo -onlcr 2>/dev/null; SUDO_PROMPT='{sudo_answer.prompt}'; "
                      f"export SUDO_PROMPT; {command}")
        chan = ch.exec(remote, pty=("dumb", 80, 24) if sudo_answer is not None else None)
        ran = True
        if sudo_answer is not None:
            sudo_answer.chan = chan
        ch.transcript(f"$ {command}\n")
        fd = None if password is not None else _stdin_fd(stdin)
        if fd is None and password is None:
            chan.shutdown_write()                       # no stdin: EOF at once, like ssh -n
        elif fd is not None:
            threading.Thread(target=_forward_stdin, args=(fd, chan, stop), daemon=True,
                             name="phj-run-stdin").start()
        masks = {"out": StreamMasker(), "err": StreamMasker()}
        err_tail = b""
        deadline = started + timeout if timeout else None

        def emit(which: str, data: bytes) -> None:
            nonlocal total
            total += len(data)
            if which == "out" and sudo_answer is not None:
                data = sudo_answer.filter(data)
            clean = masks[which].feed(data)
            _write(stdout if which == "out" else stderr, clean)
            if clean:
                ch.transcript(clean.decode("utf-8", "replace"))

        def flush_held() -> None:
            for which, m in masks.items():
                extra = sudo_answer.flush() if which == "out" and sudo_answer else b""
                clean = m.flush() if not extra else m.feed(extra) + m.flush()
                _write(stdout if which == "out" else stderr, clean)

        while True:
            held = any(m.pending for m in masks.values())
            wait = 0.05 if held else 1.0
            if deadline is not None:
                wait = min(wait, max(deadline - time.monotonic(), 0.0))
            ready, _, _ = select.select([chan], [], [], wait)
            if not ready:
                flush_held()
                if deadline is not None and time.monotonic() >= deadline:
                    print(f"{PROG}: {target.name}: the command is still running after "
                          f"{timeout:g}s; raise --timeout (the channel is closed, which ends it)",
                          file=stderr, flush=True)
                    outcome = "timeout"
                    return EXIT_TIMEOUT
                continue
            while chan.recv_ready():
                emit("out", chan.recv(65536))
            while chan.recv_stderr_ready():
                data = chan.recv_stderr(65536)
                err_tail = (err_tail + data)[-512:]
                emit("err", data)
            if ((chan.eof_received or chan.closed) and not chan.recv_ready()
                    and not chan.recv_stderr_ready()):
                break                   # (closed: a close without EOF, e.g. a hop went away)
        flush_held()
        if sudo_answer is not None and sudo_answer.refused:
            outcome = "sudo_refused"
            return EXIT_ERROR
        if chan.status_event.wait(5.0) and chan.exit_status >= 0:
            status = chan.exit_status
        if status is None:
            outcome = "lost"
            print(f"{PROG}: {target.name}: the command ended without an exit status (killed "
                  "by a signal, or the connection closed)", file=stderr, flush=True)
            return EXIT_CONNECT
        outcome = "ok" if status == 0 else "failed"
        if (status and not sudo and target.endpoint.auth.sudo_password is not None
                and any(s in err_tail for s in _SUDO_NEEDS_TTY)):
            print(f"{PROG}: {target.name}: sudo asked for a password; add --sudo-password to "
                  "answer it with the inventory's sudo_password", file=stderr, flush=True)
        return status
    finally:
        stop.set()
        if ran:
            ch.record("command", command=command, exit_status=status, bytes=total,
                      sudo=True if sudo else None,
                      duration=round(time.monotonic() - started, 4), outcome=outcome)
            ch.transcript(f"\n# exit {status}, {time.monotonic() - started:.3f}s\n")
        ch.close()
