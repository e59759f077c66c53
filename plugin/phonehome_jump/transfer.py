"""Files through the chain: upload and download between this machine and an inventory host.

The target is reached like a hop (the shared :class:`~.chain.HopPool` logs in to it through
its chain, with the same host-key checks), then:

* SFTP where the target offers it; SCP (the ``scp`` package, over the same transport) where
  it does not.
* Exact bytes: SHA-256 computed while sending or receiving, compared with the far side's
  (``sha256sum`` on the target, or reading the file back where that command is missing).
* Restartable: data goes to ``.NAME.phj-part`` beside the destination and is renamed into
  place only once verified, so a broken transfer never leaves a truncated file under the
  real name; with ``resume`` a part whose bytes match the source's first bytes is continued.
* Permissions (mode bits, not setuid/setgid) and the modification time are kept.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shlex
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import paramiko

from .errors import PhonehomeJumpError, SessionError

CHUNK = 1 << 18
Progress = Callable[[int, int], None]     # (bytes done, bytes in all)


class TransferError(SessionError):
    """A file transfer failed; nothing was put under the destination's name."""


@dataclass
class TransferResult:
    host: str
    direction: str          # upload | download
    local: str
    remote: str
    bytes: int
    sha256: str
    duration: float
    protocol: str           # sftp | scp
    resumed_from: int = 0
    mode: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["mode"] = oct(self.mode) if self.mode is not None else None
        return d


def _part_name(path: str, join: Callable[..., str], split: Callable[[str], tuple[str, str]]) -> str:
    head, tail = split(path)
    return join(head, f".{tail}.phj-part")


def _remote_path(path: str) -> str:
    # SFTP paths are relative to the login directory; `~/x` is a shell spelling of that
    if path == "~":
        return "."
    return path[2:] if path.startswith("~/") else path


def _sha_of(fh: BinaryIO, limit: int | None = None) -> str:
    h, left = hashlib.sha256(), limit
    while left is None or left > 0:
        block = fh.read(CHUNK if left is None else min(CHUNK, left))
        if not block:
            break
        h.update(block)
        if left is not None:
            left -= len(block)
    return h.hexdigest()


def remote_sha256(client: paramiko.SSHClient, path: str, *, limit: int | None = None,
                  timeout: float = 600.0) -> str | None:
    """SHA-256 of a remote file (its first ``limit`` bytes) by ``sha256sum``; None if the
    target cannot run it (no POSIX shell, no command)."""
    quoted = shlex.quote(path)
    cmd = (f"head -c {int(limit)} -- {quoted} | sha256sum" if limit is not None
           else f"sha256sum -- {quoted}")
    try:
        _, out, _ = client.exec_command(cmd, timeout=timeout)
        text = out.read().decode("ascii", "replace")
        status = out.channel.recv_exit_status()
    except (paramiko.SSHException, OSError, EOFError):
        return None
    digest = text.split()[0] if text.split() else ""
    return digest if status == 0 and len(digest) == 64 else None


class _Counter:
    def __init__(self, total: int, start: int, progress: Progress | None) -> None:
        self.total, self.done, self.progress = total, start, progress
        self.hash = hashlib.sha256()

    def add(self, block: bytes) -> None:
        self.hash.update(block)
        self.done += len(block)
        if self.progress is not None:
            self.progress(self.done, self.total)


def _sftp(client: paramiko.SSHClient) -> paramiko.SFTPClient | None:
    try:
        return client.open_sftp()
    except (paramiko.SSHException, EOFError, OSError):
        return None       # the server has no sftp subsystem: SCP instead


def upload(client: paramiko.SSHClient, host: str, local: str | os.PathLike[str], remote: str, *,
           resume: bool = False, preserve: bool = True, progress: Progress | None = None,
           max_bytes: int | None = None) -> TransferResult:
    src = Path(local).expanduser()
    where = f"host {host!r}"
    try:
        st = src.stat()
    except OSError as exc:
        raise TransferError(f"cannot read {src}: {exc.strerror}", where="local file",
                            hint="check the local path") from exc
    if not stat.S_ISREG(st.st_mode):
        raise TransferError(f"{src} is not a regular file", where="local file",
                            hint="copy files one at a time (directories are not copied)")
    if max_bytes is not None and st.st_size > max_bytes:
        raise TransferError(f"{src} has {st.st_size:,} bytes, over the limit of {max_bytes:,}",
                            where=where, hint="raise the transfer size limit or copy it another way")
    started = time.monotonic()
    sftp = _sftp(client)
    remote = _remote_path(remote)
    if sftp is None:
        return _scp_upload(client, host, src, remote, st, preserve, progress, started)
    try:
        with sftp:
            try:
                if stat.S_ISDIR(sftp.stat(remote).st_mode or 0):
                    remote = posixpath.join(remote, src.name)
            except OSError:
                pass                       # does not exist yet: the destination file itself
            part = _part_name(remote, posixpath.join, posixpath.split)
            offset = 0
            if resume:
                offset = _resumable_remote(client, sftp, part, src, st.st_size)
            counter = _Counter(st.st_size, offset, progress)
            with open(src, "rb") as fh:
                if offset:                    # hash what is there; read on from offset
                    counter.hash = _prefix_hash(fh, offset)
                with sftp.open(part, "ab" if offset else "wb") as out:
                    out.set_pipelined(True)
                    while block := fh.read(CHUNK):
                        out.write(block)
                        counter.add(block)
            digest = counter.hash.hexdigest()
            theirs = remote_sha256(client, part)
            if theirs is None:                       # no sha256sum there: read it back
                with sftp.open(part, "rb") as back:
                    back.prefetch()
                    theirs = _sha_of(back)
            if theirs != digest:
                raise TransferError(f"checksum mismatch after upload of {src} to {remote} "
                                    f"(sent {digest[:12]}…, the host has {theirs[:12]}…)",
                                    where=where, hint="try again; the partial file "
                                    f"{part} is left for inspection")
            if preserve:
                sftp.chmod(part, stat.S_IMODE(st.st_mode) & 0o777)
                sftp.utime(part, (st.st_atime, st.st_mtime))
            try:
                sftp.posix_rename(part, remote)
            except OSError:
                sftp.remove(remote)
                sftp.rename(part, remote)
            return TransferResult(host, "upload", str(src), remote, st.st_size, digest,
                                  round(time.monotonic() - started, 4), "sftp", offset,
                                  stat.S_IMODE(st.st_mode) & 0o777 if preserve else None)
    except PhonehomeJumpError:
        raise
    except (OSError, paramiko.SSHException, EOFError) as exc:
        raise TransferError(f"upload of {src} to {host}:{remote} failed: {_why(exc)}",
                            where=where, hint="check the remote path and its permissions; "
                                              "with resume=true a retry continues") from exc


def _prefix_hash(fh: BinaryIO, offset: int) -> Any:
    fh.seek(0)
    h, left = hashlib.sha256(), offset
    while left:
        block = fh.read(min(CHUNK, left))
        if not block:
            break
        h.update(block)
        left -= len(block)
    return h


def _resumable_remote(client: paramiko.SSHClient, sftp: paramiko.SFTPClient, part: str,
                      src: Path, size: int) -> int:
    """Bytes of a remote part file that equal the source's first bytes (0: start over)."""
    try:
        have = sftp.stat(part).st_size or 0
    except OSError:
        return 0
    if not 0 < have <= size:
        return 0
    with open(src, "rb") as fh:
        mine = _sha_of(fh, have)
    return have if remote_sha256(client, part) == mine else 0


def download(client: paramiko.SSHClient, host: str, remote: str, local: str | os.PathLike[str], *,
             resume: bool = False, preserve: bool = True, progress: Progress | None = None,
             max_bytes: int | None = None) -> TransferResult:
    where = f"host {host!r}"
    dest = Path(local).expanduser()
    remote = _remote_path(remote)
    if dest.is_dir():
        dest = dest / posixpath.basename(remote.rstrip("/"))
    if not dest.parent.is_dir():
        raise TransferError(f"{dest.parent} is not a directory", where="local path",
                            hint="create the directory first")
    started = time.monotonic()
    sftp = _sftp(client)
    if sftp is None:
        return _scp_download(client, host, remote, dest, preserve, progress, max_bytes, started)
    part = dest.with_name(f".{dest.name}.phj-part")
    try:
        with sftp:
            st = sftp.stat(remote)
            if stat.S_ISDIR(st.st_mode or 0):
                raise TransferError(f"{host}:{remote} is a directory", where=where,
                                    hint="copy files one at a time")
            size = st.st_size or 0
            if max_bytes is not None and size > max_bytes:
                raise TransferError(f"{host}:{remote} has {size:,} bytes, over the limit of "
                                    f"{max_bytes:,}", where=where,
                                    hint="raise the transfer size limit or copy it another way")
            offset = 0
            if resume and part.exists() and 0 < part.stat().st_size <= size:
                have = part.stat().st_size
                with open(part, "rb") as fh:
                    if remote_sha256(client, remote, limit=have) == _sha_of(fh):
                        offset = have
            counter = _Counter(size, offset, progress)
            # the host hashes its copy while we read ours: the check costs no extra pass
            theirs_box: list[str | None] = []
            hasher = threading.Thread(target=lambda: theirs_box.append(remote_sha256(client, remote)),
                                      name="phj-remote-sha256", daemon=True)
            hasher.start()
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if offset else os.O_TRUNC),
                         0o600)
            with os.fdopen(fd, "ab" if offset else "wb") as out:
                if offset:
                    with open(part, "rb") as fh:
                        counter.hash = _prefix_hash(fh, offset)
                with sftp.open(remote, "rb") as fh:
                    fh.seek(offset)
                    fh.prefetch(size - offset)
                    while block := fh.read(CHUNK):
                        out.write(block)
                        counter.add(block)
            digest = counter.hash.hexdigest()
            hasher.join()
            theirs = theirs_box[0] if theirs_box else None
            if counter.done != size or (theirs is not None and theirs != digest):
                raise TransferError(f"checksum mismatch after download of {host}:{remote} "
                                    f"({counter.done:,} of {size:,} bytes)", where=where,
                                    hint="the file may have changed while it was copied; try again")
            mode = stat.S_IMODE(st.st_mode or 0o644) & 0o777
            if preserve:
                os.chmod(part, mode)
                if st.st_mtime is not None:
                    os.utime(part, (st.st_atime or st.st_mtime, st.st_mtime))
            os.replace(part, dest)
            return TransferResult(host, "download", str(dest), remote, size, digest,
                                  round(time.monotonic() - started, 4), "sftp", offset,
                                  mode if preserve else None)
    except PhonehomeJumpError:
        raise
    except (OSError, paramiko.SSHException, EOFError) as exc:
        raise TransferError(f"download of {host}:{remote} failed: {_why(exc)}", where=where,
                            hint="check the remote path and its permissions; with resume=true "
                                 "a retry continues") from exc


def _why(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError) or getattr(exc, "errno", None) == 2:
        return "no such file"
    if isinstance(exc, PermissionError) or getattr(exc, "errno", None) == 13:
        return "permission denied"
    return str(exc) or type(exc).__name__


# -- SCP, for targets without SFTP ------------------------------------------------------

def _scp_client(client: paramiko.SSHClient, counter: _Counter) -> Any:
    from scp import SCPClient         # installed with netmiko
    last = [0]

    def on_progress(_name: bytes, size: int, sent: int) -> None:
        if counter.progress is not None:
            counter.progress(counter.done - (last[0] - sent), size)
        last[0] = sent
    transport = client.get_transport()
    assert transport is not None
    return SCPClient(transport, progress=on_progress, socket_timeout=60.0)


def _scp_upload(client: paramiko.SSHClient, host: str, src: Path, remote: str,
                st: os.stat_result, preserve: bool, progress: Progress | None,
                started: float) -> TransferResult:
    with open(src, "rb") as fh:
        digest = _sha_of(fh)
    counter = _Counter(st.st_size, 0, progress)
    try:
        with _scp_client(client, counter) as scp:
            scp.put(str(src), remote_path=remote, preserve_times=preserve)
    except Exception as exc:  # the scp package raises SCPException, socket errors
        raise TransferError(f"SCP upload of {src} to {host}:{remote} failed: {exc}",
                            where=f"host {host!r}", hint="check the remote path") from exc
    theirs = remote_sha256(client, remote)
    if theirs is not None and theirs != digest:
        raise TransferError(f"checksum mismatch after SCP upload to {host}:{remote}",
                            where=f"host {host!r}", hint="try again")
    return TransferResult(host, "upload", str(src), remote, st.st_size, digest,
                          round(time.monotonic() - started, 4), "scp")


def _scp_download(client: paramiko.SSHClient, host: str, remote: str, dest: Path, preserve: bool,
                  progress: Progress | None, max_bytes: int | None, started: float) -> TransferResult:
    part = dest.with_name(f".{dest.name}.phj-part")
    counter = _Counter(0, 0, progress)
    try:
        with _scp_client(client, counter) as scp:
            scp.get(remote, local_path=str(part), preserve_times=preserve)
    except Exception as exc:
        part.unlink(missing_ok=True)
        raise TransferError(f"SCP download of {host}:{remote} failed: {exc}",
                            where=f"host {host!r}", hint="check the remote path") from exc
    size = part.stat().st_size
    if max_bytes is not None and size > max_bytes:
        part.unlink()
        raise TransferError(f"{host}:{remote} has {size:,} bytes, over the limit of {max_bytes:,}",
                            where=f"host {host!r}", hint="raise the transfer size limit")
    with open(part, "rb") as fh:
        digest = _sha_of(fh)
    theirs = remote_sha256(client, remote)
    if theirs is not None and theirs != digest:
        part.unlink()
        raise TransferError(f"checksum mismatch after SCP download of {host}:{remote}",
                            where=f"host {host!r}", hint="try again")
    os.replace(part, dest)
    return TransferResult(host, "download", str(dest), remote, size, digest,
                          round(time.monotonic() - started, 4), "scp")
