"""Framing: where a command's output ends in the shell's stream, found by prompt.

* ``sentinel`` (POSIX shells): a unique prompt that carries the exit status and the cwd.
* ``native`` (network OSes whose prompt cannot be set): the device's own prompt.
"""

from __future__ import annotations

import re
import secrets
import time
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from .session import Session

#: Device types whose shell is POSIX enough for the sentinel prompt.
SENTINEL_DEVICE_TYPES = frozenset({"linux", "generic", "ovs_linux", "terminal_server"})

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>]")


class Framer:
    """Finds the end of a command in the shell's output."""

    name = "?"
    pattern: re.Pattern[str]

    def setup(self, session: "Session") -> None:
        raise NotImplementedError

    def wrap(self, command: str) -> str:
        return command

    def end(self, m: re.Match[str]) -> tuple[int | None, str | None]:
        return None, None

    def clean(self, text: str, command: str | None) -> str:
        return text

    def filter(self, text: str) -> str:
        """Incoming text before framing; the sentinel framing keeps it byte-exact."""
        return text


class SentinelFramer(Framer):
    name = "sentinel"

    def __init__(self) -> None:
        self.token = secrets.token_hex(6)
        # The rendered prompt never equals the line that defines it, so the echo of the
        # setup line cannot be mistaken for a prompt.
        self.pattern = re.compile(r"<<phj:" + self.token + r":(\d+):([^\n]*?)>>")

    def setup(self, session: "Session") -> None:
        line = ("stty -echo -onlcr -icanon 2>/dev/null; set +o emacs +o vi +m 2>/dev/null; "
                "unset PROMPT_COMMAND HISTFILE LS_COLORS; export NO_COLOR=1 PAGER=cat SYSTEMD_PAGER= GIT_PAGER=cat "
                "TERM=dumb; PS2=''; PS3=''; PS4='+ '; "
                f"_phj={self.token}; PS1='<<phj:${{_phj}}:$?:${{PWD}}>>'\n")
        session._write(line)
        session._pump(time.monotonic() + session.target.endpoint.connect_timeout, setup=True)

    def wrap(self, command: str) -> str:
        if "\n" not in command.rstrip("\n"):
            return command.rstrip("\n") + "\n"
        # Several lines would give several prompts; eval of a quoted here-document runs them
        # as one command in this shell (state persists) and ends with one prompt.
        eof = f"PHJ_EOF_{self.token}"
        return f"eval \"$(cat <<'{eof}'\n{command.rstrip(chr(10))}\n{eof}\n)\"\n"

    def end(self, m: re.Match[str]) -> tuple[int | None, str | None]:
        return int(m.group(1)), m.group(2)


class NativeFramer(Framer):
    name = "native"

    def setup(self, session: "Session") -> None:
        conn = session._conn
        conn._try_session_preparation()          # netmiko: paging off, base prompt for this OS
        base = re.escape(conn.base_prompt)
        self.pattern = re.compile(r"(?:^|\n)" + base + r"[^\n]{0,64}?[>#$%\]]\s*$")

    def filter(self, text: str) -> str:
        # Network OS terminals decorate output (CR/LF, bracketed paste, colours) around the prompt.
        return _ANSI.sub("", text).replace("\r", "")

    def clean(self, text: str, command: str | None) -> str:
        if command and text.startswith(command.strip()):
            text = text[len(command.strip()):].lstrip("\n")
        return text
