"""What the remote side is asking for: input prompts, control keys and caller patterns.

One definition shared by the session (when a command's wait ends early), the secret-send
guard of the manager, the CLI shell (which lines are typed in secret mode), MCP's
``awaiting_input`` and workflows.

Two kinds of evidence say a prompt wants a secret:

* its words (``password``, ``passphrase``, ``pass phrase``, ``passcode``, ``PIN``, ``secret``,
  ``token``, ``verification code``, ``OTP``, ``[sudo]``), at the very end of the output;
* the program that printed it: a command line that runs a program known to read passwords
  (``sudo``, ``su``, ``passwd``, ``openssl``, ``gpg``, ``ssh``, ``mysql -p``, …) and output
  that ends in a prompt-shaped line (text, then ``:`` or ``?`` and a space, no newline) — so a
  custom ``sudo -p 'Say the magic word: '`` counts, whatever its words. (The session's early
  stop uses the words only: a wait must not end at ``sudo: `` cut from the middle of sudo's
  error message; the guard and the shell use both.)

The words err towards "secret": a wrong guess stars out a harmless answer, a missed one
would echo and log a password.

Every pattern is anchored with ``\\Z``, not ``$``: a prompt already answered (followed by a
newline) asks for nothing.
"""

from __future__ import annotations

import re

from .patterns import SafePattern, compile_safe

_SECRET_WORDS = (r"password|passphrase|pass\s?phrase|passcode|\bpin\b|\bsecret\b|\btoken\b"
                 r"|verification\s+code|\botp\b|one-time\s+code|\bpassword\s+again")

#: The last line asks for something that must not be echoed or logged.
SECRET_PROMPT = re.compile(
    rf"(?i)(?:{_SECRET_WORDS})[^\n]{{0,80}}[:?][ \t]*\Z"     # Password: / Enter PEM pass phrase:
    r"|\[sudo\][^\n]*:[ \t]*\Z"                             # [sudo] password for bob:
    r"|(?:password|passphrase|pass\s?phrase)[ \t]*>[ \t]*\Z")  # password>

#: A yes/no question: input, never a secret.
QUESTION_PROMPT = re.compile(r"(?i)\[y/n\][ \t]*\Z|\(y/n\)[ \t]*\Z|\[yes/no\][ \t]*\Z"
                             r"|\(yes/no[^)\n]*\)\??[ \t]*\Z")  # ssh's (yes/no/[fingerprint])?

#: Ends the wait of a command early (it keeps running): the program asks for input.
INPUT_PROMPT = re.compile(SECRET_PROMPT.pattern + "|" + QUESTION_PROMPT.pattern.removeprefix("(?i)"),
                          re.IGNORECASE)

#: Programs that read passwords from the terminal: after them, any prompt-shaped last line
#: (``sudo -p 'Say the magic word: '``) is taken as asking for a secret.
PASSWORD_PROGRAMS = frozenset({
    "sudo", "su", "doas", "passwd", "chpasswd", "openssl", "gpg", "gpg2", "ssh", "scp", "sftp",
    "ssh-keygen", "ssh-add", "mysql", "mariadb", "psql", "kinit", "htpasswd", "cryptsetup",
    "keytool", "pkcs12", "vault", "ansible-vault", "git", "smbclient", "ldapsearch", "ldapmodify",
    "expect", "pass", "zip", "unzip", "7z", "openconnect",
})
#: A prompt-shaped last line: some text, then ``:`` or ``?`` and at least one space.
_PROMPT_SHAPE = re.compile(r"(?:^|\n)[^\n]*\S[:?][ \t]+\Z")
_WORDS = re.compile(r"[A-Za-z0-9_./+-]+")


# Every pattern above ends in one of these, then blanks: output ending otherwise (a newline,
# a digit: nearly every chunk of a command's output) is told apart without running them,
# which at each of the ~250 positions of a tail tried a dozen case-blind alternatives.
_PROMPT_ENDS = frozenset(":?>])")


def _may_ask(tail: str) -> bool:
    return tail.rstrip(" \t")[-1:] in _PROMPT_ENDS


def runs_password_program(command: str | None) -> bool:
    """True when ``command`` runs (anywhere in its line) a program that reads passwords."""
    if not command:
        return False
    return any(word.rsplit("/", 1)[-1] in PASSWORD_PROGRAMS for word in _WORDS.findall(command))


def asks_for_secret(tail: str, command: str | None = None) -> bool:
    """True when ``tail`` (the newest output) ends with a prompt whose answer is secret.

    ``command``: the command line that produced the output, if known; with a program that
    reads passwords (:data:`PASSWORD_PROGRAMS`), any prompt-shaped last line counts.
    """
    if not _may_ask(tail):
        return False
    if SECRET_PROMPT.search(tail) is not None:
        return True
    if not runs_password_program(command) or QUESTION_PROMPT.search(tail) is not None:
        return False
    m = _PROMPT_SHAPE.search(tail)
    # "sudo: " is the start of sudo's own error message cut by a chunk boundary, not a prompt
    return m is not None and m.group().strip().rstrip(":?") not in PASSWORD_PROGRAMS


def awaiting_input(tail: str, command: str | None = None) -> bool:
    """True when ``tail`` (the newest output, unseen by the caller) ends by asking for input."""
    return _may_ask(tail) and (INPUT_PROMPT.search(tail) is not None
                               or asks_for_secret(tail, command))


def prompt_waiting(tail: str, command: str | None = None) -> bool:
    """The secret-send guard's test: ``tail`` ends in :func:`awaiting_input`, or in any
    prompt-shaped last line (a program's own ``Enter value: ``), not in plain output."""
    return _may_ask(tail) and (awaiting_input(tail, command)
                               or _PROMPT_SHAPE.search(tail) is not None)


def line_is_secret(tail: str, command: str | None = None) -> bool:
    """The rule for a line typed by a person: secret by default after a password-like prompt.

    ``tail`` is the output as it is *now*, just before the line is read (a prompt answered
    since, or a ``[Y/n]`` that follows it, is not password-like): call it again for every
    line. True means: read the line without echo, register it as a secret and log it masked.
    """
    return asks_for_secret(tail, command)


CONTROL = {"c": "\x03", "d": "\x04", "z": "\x1a", "\\": "\x1c", "[": "\x1b", "l": "\x0c", "u": "\x15"}


def compile_pattern(pattern: str | None) -> SafePattern | None:
    """An ``until`` pattern, compiled with a time limit per search (:mod:`.patterns`);
    PatternError (a SessionError) if it is not a valid regular expression."""
    if pattern is None:
        return None
    return compile_safe(pattern, what="'until' pattern")
