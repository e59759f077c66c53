"""What the remote side is asking for: input prompts, control keys and caller patterns.

One definition shared by the session, the CLI shell, MCP's ``awaiting_input`` and workflows.
"""

from __future__ import annotations

import re

from .errors import SessionError

#: Ends the wait of a command early (it keeps running): the program asks for input.
INPUT_PROMPT = re.compile(
    r"(?i)(?:password|passphrase|passcode)[^\n]{0,40}:[ \t]*$|\[y/n\][ \t]*$"
    r"|\(yes/no[^)\n]*\)\??[ \t]*$|\[sudo\][^\n]*:[ \t]*$")

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
