"""The audit log's hash chain: each record names the hash of the one before it.

Every record carries ``seq`` (1, 2, 3, … over the life of the log), ``prev`` (the ``hash``
of the record before it; :data:`GENESIS` for the first) and ``hash``: SHA-256 over the
record's canonical JSON (sorted keys, no spaces, ``hash`` left out). The chain runs on
across rotation: the first record of a new file names the last record of the rotated one.

:func:`verify` checks a log and its rotated files (``PATH.N`` … ``PATH.1``, ``PATH``, oldest
first) and reports the first record that is edited (its hash does not match), missing (``seq``
skips and ``prev`` does not match), reordered (an earlier ``seq`` comes later) or unchained.

What this shows, and what not: anyone who edits, removes or reorders records without
rewriting every later record is caught. Someone who can write the file can also rewrite the
whole chain from the edit on; against that, ship the records elsewhere as they are written
(the syslog sink) and compare. Records removed from the very start of the oldest file left
(where rotation drops files) cannot be told from rotation.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GENESIS = "0" * 64
TAIL_BYTES = 1 << 16         # the last record is searched for in this many bytes at the end

#: ``audit verify`` exit codes
OK, TAMPERED, UNREADABLE = 0, 1, 2


def canonical(record: dict[str, Any]) -> bytes:
    return json.dumps({k: v for k, v in record.items() if k != "hash"}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False,
                      default=str).encode("utf-8", "surrogatepass")


def digest(record: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(record)).hexdigest()


def seal(record: dict[str, Any], seq: int, prev: str) -> dict[str, Any]:
    """``record`` with ``seq``, ``prev`` and its ``hash`` (last, so a line ends with it)."""
    chained = {**record, "seq": seq, "prev": prev}
    chained["hash"] = digest(chained)
    return chained


def files(path: Path) -> list[Path]:
    """The log and its rotated files that exist, oldest first."""
    rotated = []
    n = 1
    while Path(f"{path}.{n}").exists():
        rotated.append(Path(f"{path}.{n}"))
        n += 1
    return [*reversed(rotated), *([path] if path.exists() else [])]


def last_link(path: Path) -> tuple[int, str]:
    """(seq, hash) of the newest chained record in the log or its newest rotated file;
    (0, GENESIS) when there is none yet."""
    for candidate in (path, Path(f"{path}.1")):
        if not candidate.is_file():             # /dev/full, a FIFO: nothing to read back
            continue
        try:
            with open(candidate, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - TAIL_BYTES))
                tail = fh.read()
        except OSError:
            continue
        for line in reversed(tail.splitlines()):
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("hash"), str) \
                    and isinstance(rec.get("seq"), int):
                return rec["seq"], rec["hash"]
    return 0, GENESIS


@dataclass
class Report:
    """What :func:`verify` found: ``ok``, or the first problem and where it is."""

    files: list[str] = field(default_factory=list)
    records: int = 0
    unchained: int = 0               # records from before the chain (no hash), at the start
    first_seq: int | None = None
    last_seq: int | None = None
    problem: str | None = None       # None: intact
    where: str | None = None         # file:line of the first bad record
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def exit_code(self) -> int:
        return OK if self.ok else TAMPERED

    def text(self) -> str:
        if self.problem:
            return f"{self.where}: {self.problem}"
        span = (f"records {self.first_seq}–{self.last_seq}" if self.first_seq is not None
                else "no chained records")
        lines = [f"ok: {self.records} records in {len(self.files)} file(s), {span}, chain intact"]
        return "\n".join(lines + self.notes)


class Unreadable(Exception):
    """The log cannot be read at all (missing, not a file, no permission)."""


def verify(path: str | os.PathLike[str]) -> Report:
    """Check the chain of ``path`` and its rotated files; :class:`Unreadable` if none exists."""
    path = Path(path).expanduser()
    paths = files(path)
    if not paths:
        raise Unreadable(f"no audit log at {path} (nor {path}.1)")
    report = Report(files=[str(p) for p in paths])
    rows: list[tuple[str, dict[str, Any] | None, str]] = []     # (where, record, raw)
    for p in paths:
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise Unreadable(f"cannot read {p}: {exc.strerror or exc}") from None
        for n, raw in enumerate(data.splitlines(), 1):
            where = f"{p}:{n}"
            try:
                rec = json.loads(raw)
            except ValueError:
                rec = None
            rows.append((where, rec if isinstance(rec, dict) else None,
                         raw.decode("utf-8", "replace")))
    seqs_after: dict[int, str] = {}
    for where, rec, _ in rows:
        if rec is not None and isinstance(rec.get("seq"), int):
            seqs_after.setdefault(rec["seq"], where)
    prev_hash: str | None = None
    prev_seq: int | None = None
    for i, (where, rec, raw) in enumerate(rows):
        report.records += 1
        if rec is None:
            return _bad(report, where, "not a JSON record (edited, or a torn write)")
        if "hash" not in rec:
            if prev_hash is None:                # from before chaining was on
                report.unchained += 1
                continue
            return _bad(report, where, "record without a hash inside the chain (inserted)")
        seq, prev, claimed = rec.get("seq"), rec.get("prev"), rec.get("hash")
        if not isinstance(seq, int) or not isinstance(prev, str) or not isinstance(claimed, str):
            return _bad(report, where, "seq, prev or hash is missing or of the wrong type (edited)")
        if digest(rec) != claimed:
            return _bad(report, where, f"record {seq} was edited: its hash does not match "
                                       "its content")
        if prev_hash is None:
            report.first_seq = seq
            if prev != GENESIS:
                report.notes.append(f"note: the chain starts at record {seq} (older records "
                                    "were rotated away; their removal cannot be checked)")
        else:
            if seq != (prev_seq or 0) + 1:
                expected = (prev_seq or 0) + 1
                if seq < expected:
                    return _bad(report, where, f"record {seq} comes after record {prev_seq}: "
                                               "records were reordered or repeated")
                later = seqs_after.get(expected)
                if later is not None and later != where and _after(rows, i, later):
                    return _bad(report, where, f"record {seq} comes where record {expected} "
                                               f"belongs (that one is at {later}): records were "
                                               "reordered")
                gap = f"{expected}" if seq == expected + 1 else f"{expected}–{seq - 1}"
                return _bad(report, where, f"record(s) {gap} missing before record {seq} "
                                           "(deleted)")
            if prev != prev_hash:
                return _bad(report, where, f"record {seq} does not follow record {prev_seq} "
                                           "(its prev hash differs): a record was replaced")
        prev_hash, prev_seq = claimed, seq
        report.last_seq = seq
    if report.unchained:
        report.notes.append(f"note: {report.unchained} record(s) at the start carry no hash "
                            "(written before the chain was on); they are not checked")
    return report


def _after(rows: list[tuple[str, Any, str]], i: int, where: str) -> bool:
    return any(w == where for w, _, _ in rows[i + 1:])


def _bad(report: Report, where: str, problem: str) -> Report:
    report.problem, report.where = problem, where
    return report
