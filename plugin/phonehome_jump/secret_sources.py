"""Secret references that keep the value out of every environment and config file.

``keyring:SERVICE/USERNAME`` reads the desktop/OS keyring through the ``keyring`` library
(Secret Service/GNOME Keyring/KWallet on Linux, Keychain on macOS, Windows Credential
Locker; the backend is keyring's choice, or ``PYTHON_KEYRING_BACKEND``). Store a value with
``keyring set SERVICE USERNAME`` (prompted, never on a command line).

``cmd:PROGRAM ARGS…`` runs a command whose standard output is the secret (one trailing
newline dropped), like git credential helpers and Ansible vault password scripts:
``cmd:pass show lab/sl1``, ``cmd:op read op://vault/sl1/password``. It is split like a
shell would split it (``shlex``) and run **without a shell** (no pipes, no ``$VAR``; write a
script for those), with standard input closed, in the environment phonehome-jump runs in,
for at most :data:`CMD_TIMEOUT` seconds. Its standard error is neither shown nor logged
(it might echo the secret); a failure names the reference and the exit status only.

Both are read when a connection needs the value (or when ``sudo_password`` is typed), every
time: nothing is cached here. The value is registered with the masking set at once, so it
is starred wherever text leaves the plugin.
"""

from __future__ import annotations

import os
import shlex
import subprocess

from .errors import SecretError

CMD_TIMEOUT = 30.0


def parse_keyring(rest: str) -> str:
    """Validate ``SERVICE/USERNAME`` (ValueError that never echoes the input)."""
    service, sep, user = rest.rpartition("/")
    if not sep or not service.strip() or not user.strip():
        raise ValueError("keyring: reference needs SERVICE/USERNAME (e.g. keyring:phonehome-jump/"
                         "sl1-admin)")
    return rest


def parse_cmd(rest: str) -> str:
    try:
        words = shlex.split(rest)
    except ValueError as exc:
        raise ValueError(f"cmd: reference cannot be split into words ({exc}); quote it like "
                         "a shell command line") from None
    if not words:
        raise ValueError("cmd: reference needs a command (e.g. cmd:pass show lab/sl1)")
    return rest


def from_keyring(rest: str, ref: str, context: str) -> str:
    service, _, user = rest.rpartition("/")
    hint = f"store it with: keyring set {shlex.quote(service)} {shlex.quote(user)}"
    try:
        import keyring
        import keyring.errors
    except ImportError:
        raise SecretError(f"{ref} needs the Python package 'keyring'", where=context,
                          hint="pip install keyring") from None
    try:
        value = keyring.get_password(service, user)
    except keyring.errors.KeyringError as exc:
        # the message names the backend's problem (locked, no backend), never a value
        raise SecretError(f"the keyring could not be read for {ref}: "
                          f"{type(exc).__name__}: {exc}", where=context,
                          hint="unlock the keyring (or set PYTHON_KEYRING_BACKEND); " + hint
                          ) from None
    if not value:
        backend = type(keyring.get_keyring()).__name__
        raise SecretError(f"no secret for service {service!r}, user {user!r} in the keyring "
                          f"({backend}) (needed by {ref})", where=context, hint=hint)
    return value


def from_command(rest: str, ref: str, context: str) -> str:
    words = shlex.split(rest)
    words[0] = os.path.expanduser(words[0])
    hint = "run the command by hand as this user; it must print the secret and exit 0"
    try:
        proc = subprocess.run(words, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=CMD_TIMEOUT, check=False)
    except FileNotFoundError:
        raise SecretError(f"{ref}: program {words[0]!r} not found", where=context,
                          hint="give the full path, or install it") from None
    except subprocess.TimeoutExpired:
        raise SecretError(f"{ref}: the command did not finish within {CMD_TIMEOUT:g}s (does it "
                          "wait for input? standard input is closed)", where=context,
                          hint=hint) from None
    except OSError as exc:
        raise SecretError(f"{ref}: cannot run the command ({exc.strerror or exc})",
                          where=context, hint=hint) from None
    if proc.returncode != 0:
        raise SecretError(f"{ref}: the command exited with status {proc.returncode} (its "
                          "error output is not shown: it might hold the secret)",
                          where=context, hint=hint)
    try:
        text = proc.stdout.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretError(f"{ref}: the command's output is not UTF-8 text", where=context,
                          hint=hint) from None
    text = text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text
    if not text:
        raise SecretError(f"{ref}: the command printed nothing", where=context, hint=hint)
    return text
