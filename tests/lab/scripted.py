"""A scripted network device for what fakenos cannot emulate: a pager, slow output, a split prompt.

A paramiko SSH server with an IOS-like CLI (prompt ``paged-r1#``) that echoes what is typed
and knows a few commands:

* ``show paged``: 100 lines with a `` --More-- `` pager every 24 lines, even after
  ``terminal length 0`` (some devices ignore it); a space continues, and the pager text is
  erased with backspaces as IOS does.
* ``show slow``: five lines 0.4 s apart (longer than any settle time).
* ``show late``: nothing for 1 s, then the output.
* ``show split``: a line that is exactly the prompt, sent without its newline, and the
  newline 2 ms later in another packet; then more output.
* anything else: IOS's ``% Invalid input`` error; ``exit`` ends the session.

``expected(command)`` is what it writes for a command (LF line ends, pager removed).
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import paramiko

PROMPT = "paged-r1#"
PAGE = 24
PAGER = " --More-- "


def _paged_lines() -> list[str]:
    return [f"line {i:03d} interface Ethernet{i} is up, line protocol is up" for i in range(1, 101)]


def _slow_lines() -> list[str]:
    return [f"slow line {i}" for i in range(1, 6)]


def expected(command: str) -> str:
    if command == "show paged":
        return "".join(line + "\n" for line in _paged_lines())
    if command == "show slow":
        return "".join(line + "\n" for line in _slow_lines())
    if command == "show late":
        return "late output\n"
    if command == "show split":
        return f"before\n{PROMPT}\nafter\n"
    if command in ("terminal length 0", "terminal width 511", ""):
        return ""
    return "        ^\n% Invalid input detected at '^' marker.\n"


class _Server(paramiko.ServerInterface):
    def __init__(self, username: str, password: str) -> None:
        self.username, self.password = username, password
        self.shell = threading.Event()

    def check_auth_password(self, username: str, password: str) -> int:
        ok = (username, password) == (self.username, self.password)
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def get_allowed_auths(self, username: str) -> str:
        return "password"

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED if kind == "session" else \
            paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_pty_request(self, *args: Any) -> bool:
        return True

    def check_channel_shell_request(self, channel: Any) -> bool:
        self.shell.set()
        return True


def _session(chan: paramiko.Channel) -> None:
    def out(text: str) -> None:
        chan.sendall(text.replace("\n", "\r\n").encode())

    def key() -> str:
        data = chan.recv(1)
        if not data:
            raise EOFError
        return data.decode(errors="replace")

    out(PROMPT)
    line, last = "", ""
    while True:
        ch = key()
        if ch in "\r\n":
            if ch == "\n" and last == "\r":      # CR LF is one Enter
                last = ch
                continue
            last = ch
            chan.sendall(b"\r\n")
            command, line = line.strip(), ""
            if command == "exit":
                chan.close()
                return
            if command == "show paged":
                for i, text in enumerate(_paged_lines()):
                    if i and i % PAGE == 0:
                        out(PAGER)
                        k = key()
                        out("\b" * len(PAGER) + " " * len(PAGER) + "\b" * len(PAGER))
                        if k == "q":
                            break
                    out(text + "\n")
            elif command == "show slow":
                for text in _slow_lines():
                    out(text + "\n")
                    time.sleep(0.4)
            elif command == "show late":
                time.sleep(1.0)
                out("late output\n")
            elif command == "show split":
                out("before\n" + PROMPT)
                time.sleep(0.002)
                out("\nafter\n")
            elif command:
                out(expected(command))
            out(PROMPT)
            continue
        last = ch
        line += ch
        chan.sendall(ch.encode())


def _connection(sock: socket.socket, key: paramiko.PKey, username: str, password: str) -> None:
    t = paramiko.Transport(sock)
    t.add_server_key(key)
    server = _Server(username, password)
    try:
        t.start_server(server=server)
        chan = t.accept(20)
        if chan is None or not server.shell.wait(10):
            return
        _session(chan)
    except (EOFError, OSError, paramiko.SSHException):
        pass
    finally:
        t.close()


def serve(addr: str, port: int, key_file: str, username: str, password: str) -> threading.Thread:
    """Listen on addr:port in a daemon thread; each connection gets its own thread."""
    key = paramiko.RSAKey.from_private_key_file(key_file)
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((addr, port))
    lsock.listen(50)

    def accept() -> None:
        while True:
            conn, _ = lsock.accept()
            threading.Thread(target=_connection, args=(conn, key, username, password),
                             daemon=True).start()
    thread = threading.Thread(target=accept, name="scripted-device", daemon=True)
    thread.start()
    return thread
