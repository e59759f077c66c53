"""Audit log: one JSON line per session open/close, command, send, workflow step and refusal.

Written through the standard logging machinery (a private logger and a
``RotatingFileHandler``), so rotation is logging's own. Every record is masked with the
process-wide secret set before it is written. Files are created mode 0600.

Fail closed: when a record cannot be written (unwritable path, full disk), the next command,
send or open is refused with :class:`AuditError` until the log can be written again — unless
the inventory says ``on_error: continue``, in which case a warning goes to the ordinary log.

Tamper-evident: every record is hash-chained to the one before it, across rotation and
across processes that share the file (:mod:`.audit_chain`; ``phonehome-jump audit verify``).
Optionally each record also goes to syslog/journald (``syslog:``), through the standard
library's ``SysLogHandler``; a sink that cannot take a record fails closed like the file.

Optional per-session transcripts (``transcripts: DIR``): ``DIR/<session id>.log`` holds each
command with its whole output, and each typed line, masked the same way.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import logging.handlers
import os
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .audit_chain import GENESIS, last_link, seal
from .errors import AuditError
from .inputs import Whole
from .redact import REDACTOR

log = logging.getLogger(__name__)

ENV_AUDIT = "PHONEHOME_JUMP_AUDIT_LOG"


FACILITIES = Literal["auth", "authpriv", "daemon", "user", "local0", "local1", "local2",
                     "local3", "local4", "local5", "local6", "local7"]


class SyslogSpec(BaseModel):
    """Also send each audit record to syslog (journald reads /dev/log too)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    address: str = Field("/dev/log", min_length=1,
                         description="A local socket path (/dev/log), or HOST:PORT.")
    protocol: Literal["udp", "tcp"] = Field("udp", description="For HOST:PORT: udp (no "
                                            "delivery check) or tcp.")
    facility: FACILITIES = Field("authpriv", description="Syslog facility.")
    tag: str = Field("phonehome-jump", pattern=r"^[A-Za-z0-9._-]{1,48}$",
                     description="The program name in each syslog line.")


class AuditSpec(BaseModel):
    """Where and how the audit log is written (top-level ``audit:`` in the inventory)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    path: str = Field(min_length=1, description="JSON Lines audit file ('~' expanded). "
                                                "The CLI's --audit-log overrides it.")
    max_bytes: Whole = Field(10_000_000, ge=0, description="Rotate when the file reaches this "
                                                         "size; 0 never rotates.")
    backups: Whole = Field(5, ge=0, le=1000, description="Rotated files to keep (path.1 … path.N).")
    on_error: Literal["refuse", "continue"] = Field(
        "refuse", description="refuse: refuse commands while the log cannot be written "
                              "(fail closed); continue: warn and go on.")
    transcripts: str | None = Field(None, description="Directory for per-session transcripts "
                                                      "(masked); unset: none.")
    syslog: SyslogSpec | None = Field(None, description="Also send every record to syslog/"
                                                        "journald; fail-closed like the file.")


def _open_private(path: Path, mode: str, encoding: str | None) -> Any:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "a" in mode else os.O_TRUNC),
                 0o600)
    return os.fdopen(fd, mode, encoding=encoding)


class _Handler(logging.handlers.RotatingFileHandler):
    """Rotating, 0600, and it remembers a failed write instead of printing a traceback."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.failure: str | None = None
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8",
                         delay=True)

    def _open(self) -> Any:
        return _open_private(Path(self.baseFilename), self.mode, self.encoding)

    def handleError(self, record: logging.LogRecord) -> None:
        import sys
        exc = sys.exc_info()[1]
        self.failure = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        if self.stream is not None:     # reopen on the next write: the file may come back
            try:
                self.stream.close()
            except OSError:
                pass
            self.stream = None  # type: ignore[assignment]


class _Syslog(logging.handlers.SysLogHandler):
    """SysLogHandler that remembers a failed send instead of printing a traceback."""

    failure: str | None = None

    def handleError(self, record: logging.LogRecord) -> None:
        import sys
        exc = sys.exc_info()[1]
        self.failure = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _syslog_handler(spec: SyslogSpec) -> _Syslog:
    """Connect now (OSError if the socket or the host is not there)."""
    address: str | tuple[str, int] = spec.address
    socktype = None
    if not spec.address.startswith("/"):
        host, _, port = spec.address.rpartition(":")
        if not host or not port.isdigit():
            raise OSError(f"syslog address {spec.address!r} is neither a socket path nor "
                          "HOST:PORT")
        address = (host.strip("[]"), int(port))
        socktype = socket.SOCK_STREAM if spec.protocol == "tcp" else socket.SOCK_DGRAM
    handler = _Syslog(address=address, facility=spec.facility, socktype=socktype)
    if isinstance(address, str):
        # SysLogHandler ignores a socket it cannot reach (like openlog()); we fail closed
        try:
            handler.socket.getpeername()
        except (OSError, AttributeError):
            handler.close()
            raise OSError(f"cannot connect to the socket {address}") from None
    handler.ident = f"{spec.tag}: "
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


class AuditLog:
    """The audit log of one process (shared by every session of a manager). Thread-safe."""

    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int = 10_000_000,
                 backups: int = 5, on_error: str = "refuse",
                 transcripts: str | os.PathLike[str] | None = None,
                 syslog: SyslogSpec | None = None) -> None:
        self.path = Path(path).expanduser()
        self.fail_closed = on_error == "refuse"
        self.transcripts = Path(transcripts).expanduser() if transcripts else None
        self._lock = threading.Lock()
        self._last_failure: str | None = None         # the last record that was not written
        self._transcript_failure: str | None = None
        self._logger = logging.Logger(f"phonehome_jump.audit[{self.path}]")  # outside the tree
        self._logger.propagate = False
        self._handler = _Handler(self.path, max_bytes, backups)
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        self._logger.addHandler(self._handler)
        self.syslog = syslog
        self._syslog: _Syslog | None = None
        # the chain's last link as this process wrote it, and the file it is in (inode, size)
        self._link: tuple[int, str] | None = None
        self._mark: tuple[int, int] | None = None

    @classmethod
    def from_spec(cls, spec: AuditSpec, path: str | None = None) -> AuditLog:
        return cls(path or spec.path, max_bytes=spec.max_bytes, backups=spec.backups,
                   on_error=spec.on_error, transcripts=spec.transcripts, syslog=spec.syslog)

    # -- records ----------------------------------------------------------------------
    def record(self, event: str, **fields: Any) -> None:
        """Write one record; raises AuditError (fail closed) if it could not be written."""
        data = {"event": event, **{k: v for k, v in fields.items() if v is not None}}
        with self._lock:
            failure = self._write(data)
        if failure:
            self._failed(failure)

    def _write(self, data: dict[str, Any]) -> str | None:
        """Emit one masked, chained JSON line (lock held); returns why it failed, or None."""
        stamp = datetime.fromtimestamp(time.time(), timezone.utc).isoformat(timespec="milliseconds")
        record = REDACTOR.mask_data({"time": stamp, **data})
        failure = self._connect_syslog()
        if failure is not None:
            self._last_failure = failure
            return failure
        with self._file_lock():
            seq, prev = self._last_link()
            sealed = seal(record, seq + 1, prev)
            line = json.dumps(sealed, ensure_ascii=False, default=str)
            self._handler.failure = None
            if self._syslog is not None:
                self._syslog.failure = None
            self._logger.info(line)
            failure = self._handler.failure
            if failure is None and self._syslog is not None and self._syslog.failure:
                failure = f"syslog {self.syslog.address if self.syslog else ''}: {self._syslog.failure}"
                self._drop_syslog()             # reconnect on the next record
            if self._handler.failure is None:   # in the file: the chain goes on from it
                self._link, self._mark = (seq + 1, sealed["hash"]), self._stat()
        self._last_failure = failure
        return failure

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_size

    def _last_link(self) -> tuple[int, str]:
        """The chain's last link: this process's own, unless another wrote or rotated since."""
        if self._link is not None and self._mark is not None and self._stat() == self._mark:
            return self._link
        return last_link(self.path) if self.path.parent.exists() else (0, GENESIS)

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        """Processes sharing the log take turns, so each record names the true last one."""
        if self.path.exists() and not self.path.is_file():
            yield                               # a device or FIFO: no chain to keep in order
            return
        try:
            # the log's directory is the lock: no extra file, and it outlives rotation
            fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            yield                               # the write fails too, and says why
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)                        # releases the lock

    def _connect_syslog(self) -> str | None:
        if self.syslog is None or self._syslog is not None:
            return None
        try:
            self._syslog = _syslog_handler(self.syslog)
        except OSError as exc:
            return f"syslog {self.syslog.address}: {exc.strerror or exc}"
        self._logger.addHandler(self._syslog)
        return None

    def _drop_syslog(self) -> None:
        if self._syslog is not None:
            self._logger.removeHandler(self._syslog)
            self._syslog.close()
            self._syslog = None

    def check(self) -> None:
        """Before an action: refuse it if the log (or the transcripts) cannot be written.

        Opening is not enough after a failed write (a full disk opens fine): then a probe
        record must be written before anything else may run.
        """
        with self._lock:
            failure = None
            try:
                if self._handler.stream is None:     # first use, or closed after a failure
                    self._handler.stream = self._handler._open()
            except OSError as exc:
                failure = exc.strerror or str(exc)
            if failure is None and self.syslog is not None and self._syslog is None:
                failure = self._connect_syslog()
            if failure is None and self._last_failure is not None:
                failure = self._write({"event": "audit_check",
                                       "note": f"writing again after: {self._last_failure}"})
        if failure:
            self._failed(failure)
        if self.transcripts is not None:
            try:
                self.transcripts.mkdir(mode=0o700, parents=True, exist_ok=True)
                if self._transcript_failure is not None:
                    with _open_private(self.transcripts / ".writable", "a", "utf-8"):
                        pass
                    self._transcript_failure = None
            except OSError as exc:
                self._failed(exc.strerror or str(exc), f"the transcripts directory "
                                                       f"{self.transcripts}")

    def _failed(self, why: str, what: str | None = None) -> None:
        what = what or f"the audit log {self.path}"
        if self.fail_closed:
            raise AuditError(f"cannot write {what}: {why}", where="audit log",
                             hint="fix the path or its permissions (or free disk space); "
                                  "commands are refused until it can be written "
                                  "(audit.on_error: continue would only warn)")
        log.warning("cannot write %s: %s (continuing: audit.on_error is continue)", what, why)

    # -- transcripts ------------------------------------------------------------------
    def transcript(self, session_id: str, text: str) -> None:
        """Append masked ``text`` to the session's transcript (if transcripts are on).

        Called after the action: a failure only warns here, and the next check() refuses.
        """
        if self.transcripts is None:
            return
        path = self.transcripts / f"{session_id}.log"
        try:
            self.transcripts.mkdir(mode=0o700, parents=True, exist_ok=True)
            with _open_private(path, "a", "utf-8") as fh:
                fh.write(REDACTOR.mask(text))
        except OSError as exc:
            self._transcript_failure = exc.strerror or str(exc)
            log.warning("cannot write the transcript %s: %s", path, self._transcript_failure)

    def close(self) -> None:
        """Close the file; a later record reopens it (the MCP lifespan may start again)."""
        with self._lock:
            self._handler.close()
            self._drop_syslog()
