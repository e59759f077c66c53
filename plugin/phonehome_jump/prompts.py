"""What the remote side is asking for: input prompts, control keys and caller patterns.

One definition shared by the session, the CLI shell, MCP's ``awaiting_input`` and workflows.
"""

from __future__ import annotations

import re

from .errors import SessionError

#: Ends the wait of a command early (it keeps running): the program asks for input.
#: ``\Z``, not ``$``: a prompt already answered (followed by a newline) asks for nothing.
INPUT_PROMPT = re.compile(
    r"(?i)(?:password|pass ?phrase|passcode)[^\n]{0,40}:[ \t]*\Z|\[y/n\][ \t]*\Z"
    r"|\(yes/no[^)\n]*\)\??[ \t]*\Z|\[sudo\][^\n]*:[ \t]*\Z")

#: The last line asks for something that must not be echoed or logged (a subset of INPUT_PROMPT).
SECRET_PROMPT = re.compile(r"(?i)(?:password|pass ?phrase|passcode|pin)[^\n]{0,40}:[ \t]*\Z"
                           r"|\[sudo\][^\n]*:[ \t]*\Z")


def awaiting_input(tail: str) -> bool:
    """True when ``tail`` (the newest output, unseen by the caller) ends by asking for input."""
    return INPUT_PROMPT.search(tail) is not None


def asks_for_secret(tail: str) -> bool:
    """True when ``tail`` ends with a prompt whose answer is secret (not echoed, masked)."""
    return SECRET_PROMPT.search(tail) is not None


CONTROL = {"c": "\x03", "d": "\x04", "z": "\x1a", "\\": "\x1c", "[": "\x1b", "l": "\x0c", "u": "\x15"}


def compile_pattern(pattern: str | None) -> re.Pattern[str] | None:
    """An ``until`` pattern, compiled; SessionError if it is not a valid regular expression."""
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise SessionError(f"invalid 'until' pattern {pattern!r}: {exc}",
                           hint="pass a Python regular expression") from exc
