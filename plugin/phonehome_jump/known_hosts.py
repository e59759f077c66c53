"""known_hosts, read the way OpenSSH reads it.

paramiko's own parser fails the whole file on one line it does not understand (an
``@cert-authority`` or ``@revoked`` marker, a truncated key: "Incorrect padding"), and
``~/.ssh/known_hosts`` is the default, where enterprises keep CA lines. This reader
follows sshd(8) "SSH_KNOWN_HOSTS FILE FORMAT":

* host patterns: comma-separated names, ``*``/``?`` wildcards, ``!`` negation, ``[host]:port``
  off port 22, and hashed names (``|1|salt|hash``);
* ``@revoked``: that key is refused for every host, even where another line lists it;
* ``@cert-authority``: host certificates are not negotiated by paramiko, so such a line
  cannot vouch for a host; it is skipped with a warning (list the host's own key to reach it);
* a line that cannot be parsed (bad base64, truncated, unknown marker) is skipped with a
  warning naming ``file:line``, as OpenSSH does; the rest of the file still counts.

Only the entries that match the endpoint being connected are handed to paramiko, by exact
name, so paramiko still prefers the key types listed and still refuses a changed key.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import hmac
import logging
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
import paramiko

log = logging.getLogger(__name__)

MAX_BYTES = 64 << 20     # a known_hosts larger than this is a mistake, not a file to parse


class KnownHostsFileError(Exception):
    """The file itself is unusable (a directory, unreadable); ``hint`` says what to do."""

    def __init__(self, what: str, hint: str) -> None:
        self.what, self.hint = what, hint
        super().__init__(what)


@dataclass(frozen=True)
class Entry:
    marker: str | None          # None, "revoked" or "cert-authority"
    patterns: tuple[str, ...]   # as written (hashed ones start with |1|)
    key: paramiko.PKey
    where: str                  # file:line

    def matches(self, names: tuple[str, ...]) -> bool:
        return any(match_patterns(self.patterns, n) for n in names)


@dataclass
class KnownHosts:
    path: Path
    entries: list[Entry] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def host_entries(self, host: str, port: int) -> list[Entry]:
        """Plain (unmarked) entries for ``host:port`` whose key is not revoked."""
        names = (endpoint_name(host, port),)
        revoked = self.revoked_blobs()
        return [e for e in self.entries
                if e.marker is None and e.matches(names) and e.key.asbytes() not in revoked]

    def revoked_blobs(self) -> set[bytes]:
        return {e.key.asbytes() for e in self.entries if e.marker == "revoked"}

    def revoked_entry(self, key: paramiko.PKey) -> Entry | None:
        blob = key.asbytes()
        return next((e for e in self.entries if e.marker == "revoked" and e.key.asbytes() == blob),
                    None)

    def install(self, client: paramiko.SSHClient, host: str, port: int) -> None:
        """Give ``client`` this endpoint's trusted keys (paramiko matches names exactly)."""
        name = endpoint_name(host, port)
        keys = client.get_host_keys()
        for e in self.host_entries(host, port):
            keys.add(name, e.key.get_name(), e.key)


def endpoint_name(host: str, port: int) -> str:
    """The name known_hosts lists an endpoint under (``[host]:port`` off port 22)."""
    return host if port == 22 else f"[{host}]:{port}"


def match_patterns(patterns: tuple[str, ...], name: str) -> bool:
    """OpenSSH's rule: a negated pattern that matches vetoes the line; else any positive match."""
    hit = False
    for pat in patterns:
        if pat.startswith("|1|"):
            if _hashed_match(pat, name):
                hit = True
            continue
        negated = pat.startswith("!")
        if negated:
            pat = pat[1:]
        if fnmatch.fnmatchcase(name.lower(), _glob(pat.lower())):
            if negated:
                return False
            hit = True
    return hit


def _glob(pattern: str) -> str:
    # only * and ? are wildcards in known_hosts: [ is literal ([host]:port)
    return pattern.replace("[", "[[]")


def _hashed_match(pattern: str, name: str) -> bool:
    try:
        _, _, salt, digest = pattern.split("|", 3)
        mac = hmac.new(base64.b64decode(salt), name.encode(), hashlib.sha1).digest()
        return hmac.compare_digest(mac, base64.b64decode(digest))
    except (ValueError, binascii.Error):
        return False


def parse(text: str, source: str) -> KnownHosts:
    """Parse known_hosts ``text``; bad lines become warnings naming ``source:line``."""
    kh = KnownHosts(Path(source))
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}:{no}"
        fields = line.split()
        marker = None
        if fields[0].startswith("@"):
            marker = fields.pop(0)[1:]
            if marker not in ("revoked", "cert-authority"):
                kh.warnings.append(f"{where}: unknown marker @{marker}; line skipped")
                continue
        if len(fields) < 3:
            kh.warnings.append(f"{where}: expected host patterns, key type and key; line skipped")
            continue
        patterns, ktype, blob = tuple(fields[0].split(",")), fields[1], fields[2]
        try:
            data = base64.b64decode(blob, validate=True)
        except binascii.Error as exc:
            kh.warnings.append(f"{where}: the key is not valid base64 ({exc}; truncated?); "
                               "line skipped")
            continue
        try:
            key = paramiko.PKey.from_type_string(ktype, data)
            whole = key.asbytes() == data    # paramiko pads a short blob with zeros
        except Exception as exc:  # noqa: BLE001 - whatever paramiko raises for this blob
            if "unknown" in type(exc).__name__.lower() or "unknown" in str(exc).lower():
                # a key type paramiko cannot use (sk-*, certificates): OpenSSH may, we cannot
                kh.warnings.append(f"{where}: key type {ktype} is not supported here; "
                                   "line skipped")
                continue
            whole = False
        if not whole:
            kh.warnings.append(f"{where}: the {ktype} key data is incomplete or not of that "
                               "type (truncated?); line skipped")
            continue
        if marker == "cert-authority":
            kh.warnings.append(f"{where}: @cert-authority line skipped: host certificates are "
                               "not verified by this client, so list the host's own key to "
                               "reach it")
        kh.entries.append(Entry(marker, patterns, key, where))
    return kh


_cache: dict[Path, tuple[tuple[int, int, int], KnownHosts]] = {}
_cache_lock = threading.Lock()


def load(path: Path) -> KnownHosts:
    """Read and parse ``path`` (cached until it changes). A missing file is empty.

    Raises KnownHostsFileError when the path is a directory or cannot be read. Warnings are
    logged once per version of the file.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        return KnownHosts(path)
    except OSError as exc:
        raise KnownHostsFileError(f"known_hosts {path} cannot be read ({exc.strerror or exc})",
                                  f"check the path and its permissions ({path})") from exc
    if stat.S_ISDIR(st.st_mode):
        raise KnownHostsFileError(f"known_hosts {path} is a directory, not a file",
                                  "set known_hosts to a file (e.g. ~/.ssh/known_hosts), not "
                                  "the directory that holds it")
    if not stat.S_ISREG(st.st_mode):
        raise KnownHostsFileError(f"known_hosts {path} is not a regular file",
                                  "set known_hosts to a regular file")
    if st.st_size > MAX_BYTES:
        raise KnownHostsFileError(f"known_hosts {path} is {st.st_size} bytes (limit "
                                  f"{MAX_BYTES >> 20} MiB)", "check that known_hosts points at "
                                  "a known_hosts file")
    sig = (st.st_mtime_ns, st.st_size, st.st_ino)
    with _cache_lock:
        hit = _cache.get(path)
        if hit is not None and hit[0] == sig:
            return hit[1]
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        raise KnownHostsFileError(f"known_hosts {path} cannot be read ({exc.strerror or exc})",
                                  f"check the permissions of {path}") from exc
    kh = parse(text, str(path))
    kh.path = path
    for w in kh.warnings:
        log.warning("known_hosts: %s", w)
    with _cache_lock:
        _cache[path] = (sig, kh)
    return kh


def forget(path: Path) -> None:
    """Drop the cached copy (after this process appended to the file)."""
    with _cache_lock:
        _cache.pop(path, None)


__all__ = ["Entry", "KnownHosts", "KnownHostsFileError", "endpoint_name", "load", "parse",
           "match_patterns", "forget"]
