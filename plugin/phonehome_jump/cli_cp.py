"""``phonehome-jump cp SRC DEST``: scp-like file copies through the inventory's chains.

One side is ``HOST:PATH`` (an inventory host), the other a local path, as with scp. Shows a
progress bar (rich) on a terminal for files over 1 MiB; prints one summary line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from .errors import SessionError

_BAR_FROM = 1 << 20


def add_cp_command(commands: argparse._SubParsersAction, common: argparse.ArgumentParser,
                   manager: Callable[[argparse.Namespace], Any]) -> None:
    p = commands.add_parser(
        "cp", parents=[common], help="copy a file to or from a host through its chain",
        description="Copy one file between this machine and an inventory host, like scp: "
                    "`cp FILE HOST:PATH` uploads, `cp HOST:PATH FILE` downloads. SFTP where the "
                    "host offers it, else SCP; the SHA-256 is verified; mode and mtime are kept; "
                    "the inventory's policy (files: upload/download/paths) and audit apply.")
    p.add_argument("src", metavar="SRC")
    p.add_argument("dest", metavar="DEST")
    p.add_argument("--resume", action="store_true",
                   help="continue a partial copy left by an interrupted run (if its bytes match)")
    p.add_argument("--no-preserve", dest="preserve", action="store_false",
                   help="do not copy the mode bits and modification time")
    p.add_argument("--confirm", action="store_true",
                   help="confirm a copy the policy marks `confirm`")
    p.set_defaults(func=lambda args: cmd_cp(args, manager))


def _split(spec: str) -> tuple[str | None, str]:
    """``HOST:PATH`` -> (HOST, PATH); a local path (with / before any :) -> (None, path)."""
    head, sep, tail = spec.partition(":")
    if sep and head and "/" not in head:
        return head, tail or "."
    return None, spec


def cmd_cp(args: argparse.Namespace, manager_for: Callable[[argparse.Namespace], Any]) -> int:
    (src_host, src), (dst_host, dst) = _split(args.src), _split(args.dest)
    if (src_host is None) == (dst_host is None):
        raise SessionError("exactly one of SRC and DEST must be HOST:PATH", where="cp",
                           hint="upload: cp FILE HOST:PATH; download: cp HOST:PATH FILE")
    manager = manager_for(args)
    try:
        with _progress(args.src) as progress:
            kw = dict(confirm=args.confirm, resume=args.resume, preserve=args.preserve,
                      progress=progress)
            if dst_host is not None:
                res = manager.upload(dst_host, src, dst, **kw)
            else:
                res = manager.download(src_host, src, dst, **kw)
    finally:
        manager.shutdown()
    rate = res.bytes / res.duration / 1e6 if res.duration else 0.0
    host = dst_host or src_host
    print(f"{res.local} {'->' if res.direction == 'upload' else '<-'} {host}:{res.remote}: "
          f"{res.bytes:,} bytes in {res.duration:.2f}s ({rate:.1f} MB/s), sha256 "
          f"{res.sha256[:16]}…, {res.protocol}"
          + (f", resumed at {res.resumed_from:,}" if res.resumed_from else ""), file=sys.stderr)
    return 0


class _progress:
    """A rich progress bar on a terminal for large files; nothing otherwise."""

    def __init__(self, label: str) -> None:
        self.label, self.bar, self.task = label, None, None

    def __enter__(self) -> Callable[[int, int], None]:
        return self.update

    def update(self, done: int, total: int) -> None:
        if self.bar is None:
            if total < _BAR_FROM or not sys.stderr.isatty():
                return
            from rich.progress import (BarColumn, DownloadColumn, Progress, TimeRemainingColumn,
                                       TransferSpeedColumn)
            self.bar = Progress("{task.description}", BarColumn(), DownloadColumn(),
                                TransferSpeedColumn(), TimeRemainingColumn(), transient=True)
            self.bar.start()
            self.task = self.bar.add_task(self.label, total=total)
        self.bar.update(self.task, completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
