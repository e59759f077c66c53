"""The output buffer: exact slices at any size, bounded memory, secrets masked across cuts."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap

import pytest

from phonehome_jump.output import KEEP, OutputBuffer, _Run
from phonehome_jump.redact import REDACTOR, Redactor

SECRET = "canary-output-3f9d2c71"


def fill(buf: OutputBuffer, text: str, rnd: random.Random) -> None:
    i = 0
    while i < len(text):
        n = rnd.randint(1, 9000)
        buf.append(text[i:i + n])
        i += n


def test_slices_are_exact_in_memory_and_spilled():
    rnd = random.Random(7)
    text = "".join(f"{i} é€😀\n" for i in range(60_000))     # multi-byte characters too
    buf = OutputBuffer(memory=100_000)
    fill(buf, text, rnd)
    assert buf.length == len(text) and buf.spilled > len(text) - 100_000 - KEEP
    assert buf.text() == text
    for _ in range(300):
        a = rnd.randrange(len(text))
        b = a + rnd.randrange(40_000)
        assert buf.slice(a, b) == text[a:b]
    assert buf.slice(len(text) - 5, len(text) + 100) == text[-5:] and buf.slice(10, 5) == ""
    buf.close()


def test_memory_stays_bounded():
    buf = OutputBuffer(memory=100_000)
    for _ in range(2_000):
        buf.append("x" * 1_000 + "\n")
        assert buf.length - buf.spilled <= 100_000 + 1_001
    assert buf.length == 2_002_000 and buf.slice(2_001_999, 2_002_000) == "\n"


def test_truncate_within_kept_text_after_a_spill():
    buf = OutputBuffer(memory=70_000)
    text = "".join(f"{i}\n" for i in range(40_000))
    fill(buf, text, random.Random(1))
    cut = len(text) - 4_000               # a prompt that began in an earlier chunk
    buf.truncate(cut)
    assert buf.length == cut and buf.text() == text[:cut]


def test_mask_slice_equals_masking_the_whole_text_at_every_boundary():
    r = Redactor()
    r.add("hunter22")
    r.add("aaa")                          # overlaps itself: every overlapping occurrence masked
    rnd = random.Random(3)
    alphabet = ["hunter22", "hunt", "er22", "a", "aa", "x", "\n"]
    text = "".join(rnd.choice(alphabet) for _ in range(3_000))
    whole = r.mask_slice(text)
    assert "hunter22" not in whole and "aaa" not in whole and len(whole) == len(text)
    ctx = r.longest - 1
    for _ in range(500):
        a = rnd.randrange(len(text))
        b = min(len(text), a + rnd.randrange(1, 200))
        lo = max(0, a - ctx)
        assert r.mask_slice(text[lo:b + ctx], a - lo, b - lo) == whole[a:b]


def test_pending_holds_back_a_possible_secret_start():
    r = Redactor()
    r.add("hunter22")
    assert r.pending("output hunt") == 4 and r.pending("output hunter2") == 7
    assert r.pending("output h") == 1 and r.pending("output x") == 0
    assert r.pending("hunter22") == 0          # complete: masked, nothing to hold


def test_secrets_never_reach_the_spill_file_even_across_the_cut():
    REDACTOR.add(SECRET)
    rnd = random.Random(5)
    pieces = []
    for i in range(4_000):
        pieces.append(f"line {i} " + ("x" * rnd.randrange(0, 120)))
        pieces.append(SECRET if i % 7 == 0 else "-")
        pieces.append("\n")
    text = "".join(pieces)
    run = _Run("cmd", 0.0, memory=70_000)
    fill(run.out, text, rnd)
    assert run.out.spilled > 0
    run.out._file.seek(0)
    on_disk = run.out._file.read()
    assert SECRET.encode() not in on_disk and b"canary" not in on_disk
    expected = text.replace(SECRET, "*" * len(SECRET))
    got = "".join(run.masked(a, min(a + 16_000, run.length)) for a in range(0, run.length, 16_000))
    assert got == expected
    for _ in range(200):                     # any page, wherever it starts
        a = rnd.randrange(run.length)
        b = a + rnd.randrange(1, 20_000)
        assert run.masked(a, b) == expected[a:b]
    run.out.close()


def test_a_disk_that_fails_loses_a_named_range_not_the_process(tmp_path):
    """A spill file that cannot grow (RLIMIT_FSIZE: a real EFBIG from the kernel) leaves an
    honest gap: reads outside it work, a read into it is a clear error."""
    script = textwrap.dedent("""
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
        from phonehome_jump.errors import SessionError
        from phonehome_jump.output import OutputBuffer
        buf = OutputBuffer(memory=70_000)
        for i in range(100_000):
            buf.append(f"{i}\\n")
        text = "".join(f"{i}\\n" for i in range(100_000))
        lo, hi = buf._lost
        assert 0 < lo < hi <= buf.spilled < buf.length, buf._lost
        assert buf.slice(0, lo) == text[:lo]
        assert buf.slice(hi, buf.length) == text[hi:]
        try:
            buf.slice(lo, lo + 10)
        except SessionError as exc:
            assert "lost" in str(exc) and str(lo) in str(exc), exc
            print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=tmp_path, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


def test_reading_spilled_output_after_close_is_a_clear_error():
    from phonehome_jump.errors import SessionError
    buf = OutputBuffer(memory=70_000)
    for i in range(50_000):
        buf.append(f"{i}\n")
    assert buf.slice(0, 6) == "0\n1\n2\n"
    buf.close()
    with pytest.raises(SessionError, match="session was closed"):
        buf.slice(0, 6)
    assert buf.slice(buf.length - 6, buf.length) == "49999\n"     # the newest part is in memory


def test_a_bad_memory_setting_is_refused_by_name(monkeypatch):
    from phonehome_jump.errors import SessionError
    from phonehome_jump.output import ENV_MEMORY, default_memory

    monkeypatch.setenv(ENV_MEMORY, "lots")
    with pytest.raises(SessionError, match=ENV_MEMORY):
        default_memory()
    monkeypatch.setenv(ENV_MEMORY, "8_000_000")
    assert default_memory() == 8_000_000
    monkeypatch.setenv(ENV_MEMORY, "10")          # below the floor: the floor
    assert default_memory() == 4 * KEEP
