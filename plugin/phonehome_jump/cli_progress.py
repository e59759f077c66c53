"""Workflow progress for ``phonehome-jump workflow run``.

On a terminal: a bounded live view drawn by rich (counts, then the running and the failed
hosts, as many as fit; each line cut to the width), so it stays correct at any width and
host count and never leaves stale lines behind. Otherwise (cron, systemd, a pipe): one
timestamped line per event.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, TextIO

from .redact import mask


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class WorkflowProgress:
    """The ``on_event`` callback of :func:`workflow.run_workflow`; use it as a context manager."""

    def __init__(self, hosts: list[str], stream: TextIO, *, console: Any = None,
                 refresh_per_second: float = 4) -> None:
        self.stream, self.hosts = stream, hosts
        self.tty = console is not None or (_isatty(stream) and os.environ.get("TERM") != "dumb")
        self.state: dict[str, str] = {h: "waiting" for h in hosts}
        self.line: dict[str, str] = {}
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self.live: Any = None
        if self.tty:
            from rich.console import Console   # only a terminal needs rich
            from rich.live import Live

            self.console = console or Console(file=stream, highlight=False, markup=False,
                                              emoji=False)
            # redrawn a few times a second from the current state, however many events
            # arrive: the bytes written depend on the run's duration, not on its host count
            self.live = Live(console=self.console, get_renderable=self.view,
                             auto_refresh=refresh_per_second > 0,
                             refresh_per_second=refresh_per_second or 4, transient=False,
                             vertical_overflow="crop", redirect_stdout=False,
                             redirect_stderr=False)

    def __enter__(self) -> "WorkflowProgress":
        if self.live is not None:
            self.live.start(refresh=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.stop()            # draws the final state once more

    def __call__(self, e: Any) -> None:
        if e.kind == "host_start":
            line, state = f"started ({e.total_steps} steps)", "running"
        elif e.kind == "step":
            s = e.step
            line = (f"step {s.index}/{e.total_steps} {s.status}: {s.name}"
                    + (f" ({s.message})" if s.message else "") + f" {s.duration:.2f}s")
            state = "running"
        else:
            r = e.result
            failed = [s.index for s in r.steps if s.status == "failed"]
            line = (f"{r.status.upper()} in {r.duration:.2f}s"
                    + (f", failed step {', '.join(map(str, failed))}" if failed else "")
                    + (f": {r.error.splitlines()[0]}" if r.error else ""))
            state = "failed" if r.status == "failed" else "passed"
        line = mask(line)           # a step's name is its command line, which may hold a secret
        if not self.tty:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            print(f"{stamp} {e.host}: {line}", file=self.stream, flush=True)
            return
        with self._lock:
            self.state[e.host], self.line[e.host] = state, line

    def view(self) -> Any:
        """Counts, then running and failed hosts, bounded by the terminal's height and width."""
        from rich.console import Group
        from rich.text import Text

        with self._lock:
            return Group(*(Text(line, no_wrap=True, overflow="ellipsis")
                           for line in self._lines(self.console.size.height)))

    def _lines(self, height: int) -> list[str]:
        counts = {k: 0 for k in ("waiting", "running", "passed", "failed")}
        for s in self.state.values():
            counts[s] += 1
        width = max((len(h) for h in self.hosts), default=0)
        head = (f"{len(self.hosts)} hosts: {counts['passed']} passed, {counts['failed']} failed, "
                f"{counts['running']} running, {counts['waiting']} waiting  "
                f"({time.monotonic() - self.started:.0f}s)")
        rows = max(height - 1, 2)                           # one row spare for the cursor
        running = [h for h in self.hosts if self.state[h] == "running"]
        failed = [h for h in self.hosts if self.state[h] == "failed"]
        lines = [head]
        room = rows - 1
        # failed hosts are what a person must see; running ones fill what is left
        budget_failed = min(len(failed), max(room // 2, room - len(running)))
        budget_running = min(len(running), room - budget_failed)
        for names, budget, label in ((failed, budget_failed, "failed"),
                                     (running, budget_running, "running")):
            if not names:
                continue
            shown = names[:budget] if budget >= len(names) else names[:max(budget - 1, 0)]
            lines += [f"{h:<{width}}  {self.line.get(h, '')}" for h in shown]
            if len(shown) < len(names) and budget > 0:
                lines.append(f"… and {len(names) - len(shown)} more {label}")
        return lines[:rows]
