"""Local files a connection needs: private keys and known_hosts, checked before any packet.

A missing key file, a directory given as key_file or known_hosts, or a file that is not a
key used to surface as a network problem ("cannot reach … check the address and routing",
"check that the endpoint is an SSH server"). These checks name the file and what is wrong
with it. A private key that group or others can read is refused, as ssh refuses it
("UNPROTECTED PRIVATE KEY FILE"), with the chmod to run.

:func:`preflight` is what ``inventory check`` runs: every problem it can find without
connecting, as warnings (missing key files, unset ``env:`` variables, bad known_hosts lines).
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import paramiko

from . import known_hosts as kh_mod
from .errors import LocalFileError

if TYPE_CHECKING:
    from .inventory import Endpoint, Inventory

_ok: dict[Path, tuple[int, int, int, int]] = {}   # keys already read, by file version
_ok_lock = threading.Lock()


def key_file_problem(path: Path, *, parse: bool = True,
                     passphrase: str | None = None, have_passphrase: bool = False
                     ) -> tuple[str, str] | None:
    """What is wrong with private key ``path`` as (what, hint), or None if it is usable."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return (f"key_file {path} does not exist",
                "check the credentials' key_file path (the private key, not the .pub)")
    except OSError as exc:
        return (f"key_file {path} cannot be read ({exc.strerror or exc})",
                f"check the permissions of {path} and its directories")
    if stat.S_ISDIR(st.st_mode):
        return (f"key_file {path} is a directory, not a private key file",
                "set key_file to the private key file itself (e.g. ~/.ssh/id_ed25519)")
    if not stat.S_ISREG(st.st_mode):
        return (f"key_file {path} is not a regular file", "set key_file to a private key file")
    if st.st_mode & 0o077:
        return (f"key_file {path} is accessible by group or others (mode "
                f"{st.st_mode & 0o777:04o}); ssh refuses such a key, and so does this plugin",
                f"chmod 600 {path}")
    if not parse:
        return None
    sig = (st.st_mtime_ns, st.st_size, st.st_ino, st.st_mode)
    with _ok_lock:
        if _ok.get(path) == sig:
            return None
    try:
        paramiko.PKey.from_path(path, passphrase.encode() if passphrase is not None else None)
    except (paramiko.SSHException, ValueError, TypeError) as exc:
        text = str(exc).lower()
        if passphrase is None and (isinstance(exc, paramiko.PasswordRequiredException)
                                   or "password" in text or "encrypted" in text):
            if have_passphrase:
                return None           # preflight: the passphrase is resolved at connect time
            return (f"key_file {path} is encrypted and no passphrase is set",
                    "add passphrase: env:VAR (or file:PATH) to the credentials entry")
        if passphrase is not None and ("encrypt" in text or "passphrase" in text
                                       or "password" in text or "decrypt" in text):
            return (f"key_file {path} could not be decrypted with the configured passphrase",
                    "check the passphrase reference of the credentials entry")
        return (f"key_file {path} is not a private key that can be read ({exc})",
                "point key_file at an OpenSSH or PEM private key (not the .pub file)")
    except OSError as exc:
        return (f"key_file {path} cannot be read ({exc.strerror or exc})",
                f"check the permissions of {path}")
    with _ok_lock:
        _ok[path] = sig
    return None


def check_key_file(ep: "Endpoint", passphrase: str | None) -> None:
    """Raise LocalFileError naming the hop and the file if ``ep``'s key_file is unusable."""
    path = ep.auth.key_file
    if path is None:
        return
    problem = key_file_problem(path, passphrase=passphrase)
    if problem is not None:
        raise LocalFileError(problem[0], hop=ep.name, where=f"hop {ep.name!r} ({ep.source})",
                             hint=problem[1])


def known_hosts_for(ep: "Endpoint") -> kh_mod.KnownHosts:
    """``ep``'s known_hosts, parsed; LocalFileError naming the hop if the file is unusable."""
    try:
        return kh_mod.load(ep.known_hosts)
    except kh_mod.KnownHostsFileError as exc:
        raise LocalFileError(exc.what, hop=ep.name, where=f"hop {ep.name!r} ({ep.source})",
                             hint=exc.hint) from None


def preflight(inventory: "Inventory") -> list[str]:
    """Problems found without connecting, one line each (``inventory check`` prints them)."""
    out: list[str] = []
    seen: set[tuple[str, str]] = set()

    def once(kind: str, key: str, text: str) -> None:
        if (kind, key) not in seen:
            seen.add((kind, key))
            out.append(text)

    endpoints: dict[str, Endpoint] = {}
    for t in inventory.targets():
        for ep in (*t.chain, t.endpoint):
            endpoints.setdefault(ep.name, ep)
    for name, ep in sorted(endpoints.items()):
        a = ep.auth
        at = f"{name} ({ep.source})"
        if a.key_file is not None:
            problem = key_file_problem(a.key_file, have_passphrase=a.passphrase is not None)
            if problem is not None:
                once("key", str(a.key_file), f"{at}: {problem[0]} (try: {problem[1]})")
        for field in ("password", "passphrase", "sudo_password"):
            ref = getattr(a, field)
            if ref is not None and ref.kind == "env" and not os.environ.get(ref.name):
                once("env", ref.name, f"{at}: {field} {ref} is not set in this environment "
                                      f"(try: export {ref.name}=… where phonehome-jump runs)")
        try:
            kh = kh_mod.load(ep.known_hosts)
        except kh_mod.KnownHostsFileError as exc:
            once("kh", str(ep.known_hosts), f"{at}: {exc.what} (try: {exc.hint})")
            continue
        for w in kh.warnings:
            once("khline", w, f"known_hosts {w}")
    return out
