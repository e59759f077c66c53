"""Live workflow progress rendered into a real terminal emulator (pyte), not read as text."""

from __future__ import annotations

import io
import random
import re
from types import SimpleNamespace as NS

import pyte
import pytest
from rich.console import Console

from phonehome_jump.cli_progress import WorkflowProgress
from phonehome_jump.cli_terminal import _screen_class

STEPS = 3


def events(hosts: list[str], seed: int = 7):
    """host_start, steps and host_end for every host, interleaved as parallel runs are."""
    rng = random.Random(seed)
    queues = {}
    for i, h in enumerate(hosts):
        fail = i % 9 == 4
        seq = [NS(kind="host_start", host=h, total_steps=STEPS, step=None, result=None)]
        steps = []
        for n in range(1, STEPS + 1):
            status = "failed" if fail and n == 2 else "passed"
            step = NS(index=n, status=status, name=f"check {n} of a rather long step name "
                      "that does not fit in eighty columns at all", message=None, duration=0.5)
            steps.append(step)
            seq.append(NS(kind="step", host=h, total_steps=STEPS, step=step, result=None))
        seq.append(NS(kind="host_end", host=h, total_steps=STEPS, step=None,
                      result=NS(status="failed" if fail else "passed", duration=1.5,
                                steps=steps, error=None)))
        queues[h] = seq
    active: list[str] = []
    waiting = list(hosts)
    while waiting or active:
        while waiting and len(active) < 10:
            active.append(waiting.pop(0))
        h = rng.choice(active)
        yield queues[h].pop(0)
        if not queues[h]:
            active.remove(h)


# the shell's own emulator class: it counts lines scrolled off the top (they would stay in
# the terminal's scrollback)
Screen, _ = _screen_class()


def tty(text: str) -> str:
    """What the terminal receives: the tty driver turns "\n" into "\r\n" (ONLCR)."""
    return text.replace("\n", "\r\n")


def render(hosts: list[str], cols: int = 80, rows: int = 24, every: int = 1):
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=cols, height=rows,
                      color_system=None, highlight=False, markup=False, emoji=False)
    screen = Screen(cols, rows)
    stream = pyte.Stream(screen)
    seen_views = 0
    # no timer: redraw after every `every`-th event, so intermediate states are checked
    with WorkflowProgress(hosts, out, console=console, refresh_per_second=0) as progress:
        for i, e in enumerate(events(hosts)):
            progress(e)
            if i % every:
                continue
            progress.live.refresh()
            stream.feed(tty(out.getvalue()))
            out.seek(0)
            out.truncate()
            seen_views += 1
            # at every moment: one summary line, and no host listed twice
            text = "\n".join(screen.display)
            assert text.count(" hosts: ") == 1, text
            names = re.findall(r"^(h-\d+) ", text, re.M)
            assert len(names) == len(set(names)), text
    stream.feed(tty(out.getvalue()))
    return screen, out


@pytest.mark.parametrize("n,every", [(6, 1), (40, 1), (200, 5)])
def test_live_view_leaves_nothing_stale_in_80x24(n, every):
    hosts = [f"h-{i:03d}" for i in range(n)]
    screen, _ = render(hosts, every=every)
    display = [line.rstrip() for line in screen.display]
    shown = [line for line in display if line]
    failed = [h for i, h in enumerate(hosts) if i % 9 == 4]
    assert shown[0].startswith(f"{n} hosts: {n - len(failed)} passed, {len(failed)} failed, "
                               "0 running, 0 waiting")
    # the final view: only failed hosts (nothing still "running"), each once, within 24 rows
    assert len(shown) <= 23
    body = shown[1:]
    assert not any("running" in line and not line.startswith("…") for line in body)
    listed = [line.split()[0] for line in body if not line.startswith("…")]
    assert set(listed) <= set(failed) and len(listed) == len(set(listed))
    if len(failed) > len(listed):
        assert body[-1] == f"… and {len(failed) - len(listed)} more failed"
    # nothing ever scrolled off: no stale copies in the scrollback either
    assert screen.scrolled == 0
    assert all(len(line) <= 80 for line in display)


def test_not_a_terminal_prints_timestamped_lines():
    out = io.StringIO()
    hosts = ["a", "b"]
    with WorkflowProgress(hosts, out) as progress:
        for e in events(hosts):
            progress(e)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 * (STEPS + 2)
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d [ab]: ", line) for line in lines)


def test_redraws_are_timed_not_per_event():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=80, height=24, color_system=None)
    hosts = [f"h-{i:03d}" for i in range(200)]
    with WorkflowProgress(hosts, out, console=console, refresh_per_second=4) as progress:
        for e in events(hosts):         # 1000 events at once: a few redraws, not 1000
            progress(e)
    assert len(out.getvalue()) < 20_000
    assert "200 hosts: 178 passed, 22 failed, 0 running, 0 waiting" in out.getvalue()
