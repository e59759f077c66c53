"""A workflow step's output: bounded in its result, whole only for what needs it, linear prompt
matching (pure logic: a scripted manager that reads and pages like a session)."""

from __future__ import annotations

import json

import pytest

from phonehome_jump import workflow as wfmod
from phonehome_jump.inventory import Inventory
from phonehome_jump.output import CommandResult
from phonehome_jump.workflow import (PROMPT_WINDOW, STEP_KEEP, StepResult, Workflow, _bounded,
                                     _Received, junit_xml, run_workflow)

INV = Inventory.from_text("hosts:\n  h1: {host: 10.0.0.1}\n", "inv.yaml")


def lines(n: int) -> str:
    return "".join(f"{i}\n" for i in range(1, n + 1))


def marker(a: int, b: int) -> str:
    return f"\n[… {b - a} characters omitted ({a}–{b}) …]\n"


# ----------------------------------------------------------------------------- the pieces

def test_bounded_keeps_small_text_and_cuts_the_middle_of_a_long_one_with_its_offsets():
    exact = "x" * (2 * STEP_KEEP)
    assert _bounded("") == ("", False, None) and _bounded(exact) == (exact, False, None)
    text = lines(40_000)
    out, truncated, omitted = _bounded(text)
    assert truncated and omitted == (STEP_KEEP, len(text) - STEP_KEEP)
    assert out == text[:STEP_KEEP] + marker(*omitted) + text[-STEP_KEEP:]


def test_received_keeps_the_pieces_only_while_they_are_the_whole_output_and_fit():
    rx = _Received(limit=100)
    rx.add("a" * 60)
    rx.add("")
    rx.add("b" * 40)
    assert rx.kept and rx.text() == "a" * 60 + "b" * 40 and rx.reads == 3
    rx.add("c")                                   # 101 > limit: the session has it all
    assert not rx.kept and rx.pieces == [] and rx.size == 0
    rx.add("d")                                   # and they stay dropped
    assert not rx.kept and rx.pieces == []
    cut = _Received(limit=10**6)
    cut.add("head … tail", truncated=True)        # a read that came back as head and tail
    assert not cut.kept and cut.pieces == []


def test_received_keeps_a_bounded_window_since_the_last_answer():
    rx = _Received(limit=10**9)
    rx.add("Password: ")
    assert rx.since_answer() == "Password: "
    rx.answered()
    assert rx.since_answer() == ""
    rx.add("ok\n")
    assert rx.since_answer() == "ok\n" and rx.tail == "Password: ok\n"
    for _ in range(50):                          # 5 MB of chatter after the answer
        rx.add(("y" * 99 + "\n") * 1000)
    rx.add("Continue? ")
    since = rx.since_answer()
    assert len(rx.tail) == PROMPT_WINDOW and len(since) <= PROMPT_WINDOW
    # the window was cut mid-line: it starts at a line, so ^ cannot match mid-line
    assert since.startswith("y" * 99 + "\n") and since.endswith("\nContinue? ")
    assert rx.size == 5_000_000 + len("Password: ok\nContinue? ")   # everything kept: fits


# ----------------------------------------------------------------------------- steps

class PagingManager:
    """Reads like a session: each read delivers the next ``chunk`` characters (head and tail
    past ``cap``), ``offset=`` pages ``cap`` characters. ``print N`` prints N numbered lines;
    ``ask N`` prints them, then ``Password: ``, and ``ok`` once answered."""

    cap = 16_000

    def __init__(self, output_memory: int = 4_000_000, chunk: int = 10_000) -> None:
        self.inventory, self.output_memory, self.chunk = INV, output_memory, chunk
        self.text, self.delivered, self.waiting = "", 0, False
        self.sent: list[str] = []
        self.paged = 0                            # characters served by offset reads
        self.open_ids: dict[str, str] = {}

    def open(self, host, *, owner=None, actor=None):
        from types import SimpleNamespace
        self.open_ids["s1"] = host
        return SimpleNamespace(id="s1")

    def close(self, sid, *, owner=None):
        self.open_ids.pop(sid)

    def record(self, *a, **k):
        pass

    def command(self, sid, command, *, owner=None, wait=20.0, until=None, confirm=False):
        kind, n = command.split()
        self.text, self.delivered = lines(int(n)) + ("Password: " if kind == "ask" else ""), 0
        self.waiting = kind == "ask"
        return self.read(sid)

    def read(self, sid, *, owner=None, wait=0.0, until=None, offset=None):
        total = len(self.text)
        if offset is not None:
            a = min(offset, total)
            b = min(a + self.cap, total)
            self.paged += b - a
            return CommandResult(None, self.text[a:b], 0, False, "/", 0.0, offset=a, total=total,
                                 next_offset=b, truncated=b < total)
        a = self.delivered
        b = self.delivered = min(total, a + self.chunk)
        running = b < total or self.waiting
        piece, omitted = self.text[a:b], None
        if b - a > self.cap:
            half = self.cap // 2
            omitted = (a + half, b - half)
            piece = self.text[a:a + half] + "[… omitted …]" + self.text[b - half:b]
        return CommandResult(None, piece, None if running else 0, running, "/", 0.0, offset=a,
                             total=total, next_offset=b, truncated=omitted is not None,
                             omitted=omitted)

    def send(self, sid, text="", *, owner=None, newline=True, control=None, secret=False,
             confirm=False):
        self.sent.append(text)
        if self.waiting:
            self.text += "\nok\n"
            self.waiting = False


def run_steps(steps: str, m: PagingManager) -> list[StepResult]:
    wf = Workflow.from_text(f"name: t\ntargets: {{hosts: [h1]}}\nsteps:\n{steps}", "t.yaml")
    r = run_workflow(wf, manager=m)
    assert not m.open_ids
    json.loads(json.dumps(r.to_dict()))           # the report stays valid
    junit_xml(r)
    return r.hosts["h1"].steps


def test_small_outputs_are_whole_and_unchanged():
    m = PagingManager()
    [s] = run_steps("  - run: print 3000\n    assert: {regex: '^1500$'}\n", m)
    assert (s.status, s.output, s.truncated, s.omitted) == ("passed", lines(3000), False, None)
    assert m.paged == 0                            # the reads had it all: no paging
    assert s.to_dict()["omitted"] is None and s.to_dict()["truncated"] is False


@pytest.mark.parametrize("chunk", [10_000, 50_000])   # whole reads / head-and-tail reads
def test_an_assert_within_output_memory_sees_the_whole_output_the_result_keeps_head_and_tail(
        chunk):
    m = PagingManager(output_memory=1_000_000, chunk=chunk)
    text = lines(100_000)                         # 588,895 characters
    [s] = run_steps("  - run: print 100000\n    assert: {regex: '^50000$'}\n"
                    "    capture: {name: n, regex: '^(5000\\d)$'}\n", m)
    assert (s.status, s.message, s.captured) == ("passed", None, {"n": "50000"})
    assert s.output == text[:STEP_KEEP] + marker(STEP_KEEP, len(text) - STEP_KEEP) + text[-STEP_KEEP:]
    assert s.truncated and s.omitted == (STEP_KEEP, len(text) - STEP_KEEP)
    assert s.to_dict()["omitted"] == [STEP_KEEP, len(text) - STEP_KEEP]


def test_past_output_memory_a_step_without_checks_passes_and_its_output_is_never_joined():
    m = PagingManager(output_memory=100_000, chunk=50_000)
    text = lines(100_000)
    [s] = run_steps("  - run: print 100000\n", m)
    assert (s.status, s.exit_status, s.message) == ("passed", 0, None)
    assert s.output == text[:STEP_KEEP] + marker(STEP_KEEP, len(text) - STEP_KEEP) + text[-STEP_KEEP:]
    # only the head and the tail were read back (pages of `cap` around each end), not the rest
    assert m.paged <= 2 * STEP_KEEP + 3 * m.cap, m.paged


def test_a_step_without_checks_holds_no_more_than_its_result_whatever_output_memory(
        monkeypatch):
    sizes: list[int] = []

    class Watched(_Received):
        def add(self, text: str, truncated: bool = False) -> None:
            super().add(text, truncated)
            sizes.append(self.size)

    monkeypatch.setattr(wfmod, "_Received", Watched)
    m = PagingManager(output_memory=4_000_000)    # whole reads, far below output_memory
    text = lines(100_000)
    [s] = run_steps("  - run: print 100000\n", m)
    assert s.status == "passed" and max(sizes) <= 2 * STEP_KEEP
    assert s.output == text[:STEP_KEEP] + marker(STEP_KEEP, len(text) - STEP_KEEP) + text[-STEP_KEEP:]
    assert m.paged <= 2 * STEP_KEEP + 3 * m.cap, m.paged


@pytest.mark.parametrize("check, uses", [
    ("assert: {regex: '^1$'}", "assert"),
    ("capture: n", "capture"),
    ("assert: {not_regex: x}\n    capture: n", "assert, capture"),
])
def test_past_output_memory_a_step_that_looks_into_its_output_fails_saying_why(check, uses):
    m = PagingManager(output_memory=100_000, chunk=50_000)
    text = lines(100_000)
    [s] = run_steps(f"  - name: big one\n    run: print 100000\n    {check}\n", m)
    assert (s.status, s.exit_status, s.captured) == ("failed", 0, {})
    assert s.message == (
        f"step 1 (big one): its output is {len(text):,} characters, more than output_memory "
        f"(100,000); {uses} would need all of it in memory, so the step was not checked (try: "
        "filter the output on the host, e.g. `... | grep PATTERN` or `... | tail -n 100`, or "
        "raise output_memory / $PHONEHOME_JUMP_OUTPUT_MEMORY)")
    assert s.truncated and s.output.endswith(text[-STEP_KEEP:])
    assert m.paged <= 2 * STEP_KEEP + 3 * m.cap, m.paged


def test_an_exit_status_failure_is_reported_before_the_size():
    m = PagingManager(output_memory=100_000, chunk=50_000)
    [s] = run_steps("  - run: print 100000\n    expect_exit: 3\n    assert: {regex: x}\n", m)
    assert s.message == "exit status 0, expected 3"


def test_a_prompt_after_megabytes_of_output_is_answered_matching_only_a_bounded_window(
        monkeypatch):
    searched: list[int] = []
    real = wfmod.compile_safe

    def spy(pattern, **kw):
        compiled = real(pattern, **kw)

        class Spy:
            def search(self, text):
                searched.append(len(text))
                return compiled.search(text)
        return Spy()

    monkeypatch.setattr(wfmod, "compile_safe", spy)
    m = PagingManager(output_memory=1_000_000)
    text = lines(400_000) + "Password: \nok\n"    # 2.7 MB in 10,000-character reads
    [s] = run_steps("  - run: ask 400000\n    answer: [{prompt: 'Password: $', text: pw}]\n", m)
    assert (s.status, m.sent) == ("passed", ["pw"])
    assert len(searched) > 250 and max(searched) <= PROMPT_WINDOW, max(searched)
    assert s.output == text[:STEP_KEEP] + marker(STEP_KEEP, len(text) - STEP_KEEP) + text[-STEP_KEEP:]


def test_the_mcp_result_cuts_a_long_step_further_and_says_what_the_report_keeps():
    from phonehome_jump.workflow_mcp import MAX_STEP_OUTPUT, _capped

    text = "a" * MAX_STEP_OUTPUT + "b" * 10
    assert _capped(text[:MAX_STEP_OUTPUT]) == text[:MAX_STEP_OUTPUT]
    half = MAX_STEP_OUTPUT // 2
    assert _capped(text) == (text[:half] + "\n[… 10 characters of this step's result omitted; "
                             "the CLI's --report keeps up to 65,536 characters of each end of "
                             "its output …]\n" + text[-half:])
