"""Framing: where a command's output ends in the shell's stream, found by prompt.

* ``sentinel`` (POSIX shells): a unique prompt that carries the exit status and the cwd.
* ``native`` (network OSes whose prompt cannot be set): the command's echo, then the
  device's own prompt (patterns per platform family in ``platforms/``).
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import SessionError

if TYPE_CHECKING:
    from .platforms import Platform
    from .session import Session

#: Device types whose shell is POSIX enough for the sentinel prompt.
SENTINEL_DEVICE_TYPES = frozenset({"linux", "generic", "ovs_linux", "terminal_server"})

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>]")


class Framer:
    """Finds the end of a command in the shell's output."""

    name = "?"
    pattern: re.Pattern[str]
    canonical = False       # the shell reads a canonical terminal (SentinelFramer)

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

    def check_typed(self, text: str) -> None:
        """Refuse text typed into the session (``send``) that the terminal would change."""


class SentinelFramer(Framer):
    name = "sentinel"

    # A shell whose own line editor echoes what it reads (busybox ash, whatever the terminal
    # says) gets a canonical terminal without echo instead (``canonical``): it then reads
    # plain lines, exactly, with the terminal's limits. busybox ash reads such a line in
    # pieces of 1,023 bytes and shows its prompt again before each piece, which would end a
    # command early: a longer first line goes as a here-document, whose lines it reads
    # without a prompt. The terminal's line holds 4,095 bytes (Linux): a longer one is cut.
    CANON_DIRECT = 1000
    CANON_LINE = 4094
    #: keys a canonical terminal edits the line with (erase, kill, end of file)
    CANON_KEYS = {"\x7f": "Backspace (0x7f)", "\x15": "Ctrl-U", "\x04": "Ctrl-D"}

    def __init__(self) -> None:
        self.token = secrets.token_hex(6)
        self.canonical = False
        self.where = "the host"
        # The rendered prompt never equals the line that defines it, so the echo of the
        # setup line cannot be mistaken for a prompt.
        self.pattern = re.compile(r"<<phj:" + self.token + r":(\d+):([^\n]*?)>>")

    def setup(self, session: "Session") -> None:
        # The pty was asked for without echo, CR/LF translation and line editing (login.py):
        # no `stty` process on the target, unless the server ignored the request, which
        # shows as this line's echo (bash's line editor echoes only when the terminal does;
        # it ends the line with a CR/LF of its own either way, so that tells nothing).
        # What a user's rc file may have the shell print around every command is turned off:
        # bash's PS0 (after reading a line), PROMPT_COMMAND and DEBUG trap (prompt frameworks
        # set them), tracing (`set -x`/`-v`) and job control, each `set` apart (a shell without
        # one of the editing modes refuses the whole command). zsh: its line editor (zle)
        # echoes and redraws whatever the terminal says, its prompt expands `$?` only with
        # prompt_subst and takes `%` as an escape; it marks output without a final newline
        # (prompt_sp/prompt_cr), may print "zsh: exit 1" (print_exit_value) or ask to correct
        # a command (correct), and runs hooks (precmd, preexec, chpwd, periodic): all off, in
        # an eval that other shells never parse.
        line = ("[ -n \"$ZSH_VERSION\" ] && eval 'unsetopt zle prompt_cr prompt_sp prompt_percent "
                "prompt_bang correct correct_all print_exit_value; setopt prompt_subst; "
                "precmd_functions=(); preexec_functions=(); chpwd_functions=(); "
                "periodic_functions=(); unset RPROMPT RPS1; "
                "unfunction precmd preexec chpwd periodic 2>/dev/null'; "
                "[ -n \"$BASH_VERSION\" ] && trap - DEBUG RETURN; "
                "set +m +x +v; set +o emacs 2>/dev/null; set +o vi 2>/dev/null; "
                "unset PROMPT_COMMAND PS0 HISTFILE LS_COLORS; export NO_COLOR=1 PAGER=cat SYSTEMD_PAGER= GIT_PAGER=cat "
                "TERM=dumb; PS2=''; PS3=''; PS4='+ '; "
                f"_phj={self.token}; PS1='<<phj:${{_phj}}:$?:${{PWD}}>>'\n")
        self.where = f"host {session.target.name!r}"
        deadline = time.monotonic() + session.target.endpoint.connect_timeout
        session._write(line)
        session._pump(deadline, setup=True)
        if f"_phj={self.token}" not in session.setup_tail:
            return
        session._write("stty -echo -onlcr -icanon 2>/dev/null\n")
        session._pump(deadline, setup=True)
        # Only an echo seen costs these round trips: is it the shell's own line editor?
        probe = f": phj-{self.token}-echo"
        if not self._echoed(session, probe, deadline):
            return
        session._write("stty icanon -echo -iexten 2>/dev/null\n")
        session._pump(deadline, setup=True)
        if self._echoed(session, probe, deadline):
            raise SessionError("the shell echoes every line it reads, even on a terminal without "
                               "echo: its output cannot be told from the commands")
        self.canonical = True

    @staticmethod
    def _echoed(session: "Session", probe: str, deadline: float) -> bool:
        session._write(probe + "\n")
        session._pump(deadline, setup=True)
        return probe in session.setup_tail

    def wrap(self, command: str) -> str:
        text = command.rstrip("\n")
        if self.canonical:
            self._check_canonical(text)
        if "\n" not in text and not (self.canonical and len(text.encode()) > self.CANON_DIRECT):
            return text + "\n"
        # Several lines would give several prompts; eval of a quoted here-document runs them
        # as one command in this shell (state persists) and ends with one prompt.
        eof = f"PHJ_EOF_{self.token}"
        return f"eval \"$(cat <<'{eof}'\n{text}\n{eof}\n)\"\n"

    def check_typed(self, text: str) -> None:
        """Text typed into the session (``send``): on a canonical terminal a line typed at
        the prompt is read like a command's first line, so it is held to that length."""
        if self.canonical and any(len(line.encode()) > self.CANON_DIRECT
                                  for line in text.replace("\r", "\n").split("\n")):
            raise SessionError(
                f"a line of more than {self.CANON_DIRECT} bytes cannot be typed here: this "
                "host's shell reads lines through its terminal's line discipline", where=self.where,
                hint="type shorter lines, or run the text as a command (long commands are sent "
                     "as a here-document)")

    def _check_canonical(self, text: str) -> None:
        """What a canonical terminal would change: its editing keys, and lines it would cut."""
        for key, name in self.CANON_KEYS.items():
            if key in text:
                raise SessionError(
                    f"the command contains {name}, which this host's terminal takes as a "
                    "line-editing key (its shell's line editor echoes, so the session reads "
                    "lines through the terminal's canonical mode)", where=self.where,
                    hint="write the byte with printf escapes (printf '\\177'), or put it in a "
                         "file (ssh_file_upload) and use that")
        longest = max(len(line.encode()) for line in text.split("\n"))
        if longest > self.CANON_LINE:
            raise SessionError(
                f"a line of this command has {longest} bytes; this host's terminal holds at "
                f"most {self.CANON_LINE} per line (its shell's line editor echoes, so the "
                "session reads lines through the terminal's canonical mode)", where=self.where,
                hint="split the line (a shell line can continue after a backslash), or upload "
                     "a script (ssh_file_upload) and run it")

    def end(self, m: re.Match[str]) -> tuple[int | None, str | None]:
        return int(m.group(1)), m.group(2)


class NativeFramer(Framer):
    """Frame on a network OS's own prompt: the command's echo first, then its prompt.

    Correct by construction rather than by luck:

    * a result starts only after the echo of the command just sent: a prompt left over from
      session preparation or an earlier command comes before it and is dropped (and a
      result says so when what was dropped was more than prompts: ``notice``);
    * it ends only at a prompt of this device (the platform's pattern around the base
      prompt) that is the last line of everything received, with nothing after it for a
      short settle time: an output line that merely looks like the prompt is followed by
      its newline and more output, so it never ends a command;
    * context lines the device prints before the prompt (Junos ``[edit]``, ``{master:0}``)
      belong to the prompt, not to the output;
    * the prompt that ended the command is kept (``prompt``) and names the mode.
    """

    name = "native"

    def __init__(self, platform: "Platform") -> None:
        self.platform = platform
        self.base = ""
        self.prompt: str | None = None      # the exact prompt that ended the last command
        self.mode: str | None = None
        self.settle = 0.02                  # measured at setup: twice the prompt round trip
        self.newline = "\n"
        self._st = _NativeRun(None, None)
        self._end = platform.prompt_at_end("")
        self._alt: re.Pattern[str] | None = None
        self.reply: str | None = None
        self.pattern = re.compile(r"(?!)")  # the sentinel path's hook; unused here

    # -- setup -----------------------------------------------------------------------
    def setup(self, session: "Session") -> None:
        from .platforms import GENERIC
        conn = session._conn
        conn._try_session_preparation()          # netmiko: paging off, base prompt for this OS
        self.base = str(conn.base_prompt).strip()
        self.newline = str(getattr(conn, "RETURN", "\n") or "\n")   # what Enter is on this OS
        self._end = self.platform.prompt_at_end(self.base)
        # at login, also the generic rule: a device of a known family may still show a prompt
        # its module does not expect (netmiko trims a character it assumed was '<')
        self._alt = GENERIC.prompt_at_end(self.base) if self.platform is not GENERIC else None
        timeout = session.target.endpoint.connect_timeout
        # Sync: an Enter, then this device's prompt as the last line. Whatever netmiko's
        # preparation left behind comes before it; leftovers after it precede the next echo.
        started = time.monotonic()
        self.begin(None)
        session._write(self.newline)
        session._pump(time.monotonic() + timeout, setup=True)
        if self.prompt is None:
            raise SessionError(f"no prompt of this device within {timeout:g}s")
        self._alt = None
        if self.platform is not GENERIC and not self.platform.prompt_line(self.base).fullmatch(
                self.prompt + " ") and not self.platform.prompt_line(self.base).fullmatch(self.prompt):
            # the device's prompt is not what its family's module expects: the generic rule
            self.platform = GENERIC
            self._end = GENERIC.prompt_at_end(self.base)
        self.mode = self.platform.mode_of(self.prompt, self.base)
        rtt = time.monotonic() - started
        self.settle = min(max(2 * rtt, 0.01), 0.05)

    # -- one command -------------------------------------------------------------------
    def begin(self, command: str | None) -> None:
        """A new command goes out: wait for its echo (None: no echo expected)."""
        echo = command.strip() if command is not None else None
        self._st = _NativeRun(command, echo or None)
        self.reply = None

    def filter(self, text: str) -> str:
        # Network OS terminals decorate output (CR/LF, bracketed paste, colours, pager erasure).
        text = _ERASE.sub("", text)
        return _ANSI.sub("", text).replace("\r", "")

    def feed(self, text: str) -> str:
        """Take received (filtered) text; return what is now known to be output."""
        st = self._st
        if st.echo is not None:
            st.pre += text
            i = st.pre.find(st.echo, st.scan)
            while i >= 0:
                j = i + len(st.echo)
                rest = st.pre[j:].lstrip(" \t")
                if rest.startswith("\n"):
                    break
                if not rest:                 # the newline has not arrived yet
                    st.scan = i
                    return ""
                i = st.pre.find(st.echo, i + 1)
            if i < 0:
                st.scan = max(0, len(st.pre) - len(st.echo) - 8)
                if len(st.pre) > _PRE_MAX:   # a device that does not echo: keep memory bounded
                    st.dropped += len(st.pre) - _PRE_MAX
                    st.pre = st.pre[-_PRE_MAX:]
                    st.scan = max(0, len(st.pre) - len(st.echo) - 8)
                return ""
            end = st.pre.index("\n", i + len(st.echo)) + 1
            st.discarded, text, st.pre, st.echo = st.pre[:i], st.pre[end:], "", None
        st.pend += text
        out = self._release()
        pager = self.platform.pager_at_end().search(st.pend)
        if pager is not None:                # a pager despite paging off: continue it
            st.pend = st.pend[:pager.start()]
            self.reply = self.platform.pager_key
        st.candidate = self._end.search(st.pend)
        if st.candidate is None and self._alt is not None:
            st.candidate = self._alt.search(st.pend)
        return out

    def _release(self) -> str:
        """Move complete lines out of the held tail unless they may belong to the prompt."""
        st = self._st
        cut = st.pend.rfind("\n") + 1        # the partial last line is always held
        if cut == 0:
            return ""
        if self.platform.context:
            for _ in range(8):               # [edit] / {master:0} lines and the blank before
                prev = st.pend.rfind("\n", 0, cut - 1) + 1
                line = st.pend[prev:cut - 1]
                if line.strip() and not self._is_context(line):
                    break
                cut = prev
                if cut == 0:
                    return ""
        out, st.pend = st.pend[:cut], st.pend[cut:]
        return out

    def _is_context(self, line: str) -> bool:
        if not self.platform.context:
            return False
        return re.fullmatch(r"(?:" + "|".join(self.platform.context) + r")+[ \t]*", line) is not None

    def held(self) -> str:
        """The held tail (the last, unfinished line): a prompt, a question, or output to come."""
        return self._st.pend

    def release_held(self) -> str:
        """Give up the held tail as output (it asks a question; the command goes on)."""
        out, self._st.pend = self._st.pend, ""
        return out

    @property
    def candidate(self) -> bool:
        return self._st.candidate is not None

    def finish(self) -> str:
        """The held prompt ended the command: record it; return the output still held."""
        st = self._st
        m = st.candidate
        assert m is not None
        self.prompt = m.group("prompt").strip()
        self.mode = self.platform.mode_of(self.prompt, self.base) or self.mode
        out = st.pend[:m.start()]
        st.pend, st.candidate = "", None
        return out

    def notice(self) -> str | None:
        """Why this result may not be what was expected, if framing had to recover."""
        st = self._st
        if st.echo is not None:
            return (f"the device has not echoed the command yet ({len(st.pre) + st.dropped} "
                    "characters received before it)")
        prompt = self.platform.prompt_line(self.base)
        leftover = "\n".join(line for line in st.discarded.split("\n")
                             if line.strip() and not prompt.fullmatch(line.strip())
                             and not self._is_context(line))
        if leftover.strip():
            return (f"resynchronised: {len(leftover)} characters arrived before this "
                    "command's echo and were dropped (late output of an earlier command or an "
                    "asynchronous device message); this result holds only this command's output")
        return None

    def clean(self, text: str, command: str | None) -> str:
        return text


@dataclass
class _NativeRun:
    command: str | None
    echo: str | None                 # the command line still to be seen echoed
    pre: str = ""                    # received before the echo (left-overs, stale prompts)
    scan: int = 0                    # where the next echo search starts in ``pre``
    dropped: int = 0
    discarded: str = ""              # what came before the echo, once it was seen
    pend: str = ""                   # after the echo, not yet known to be output
    candidate: re.Match[str] | None = None


_PRE_MAX = 1 << 16
# pager erasure: CR, spaces, CR (IOS/EOS) or backspaces, spaces, backspaces (Comware, VRP)
_ERASE = re.compile(r"\r[ \t]+\r|\x08+[ \t]+\x08+|\x08+")
