"""The sentinel framing's wrapping of commands (pure logic; the shells are in the lab)."""

from __future__ import annotations

import pytest

from phonehome_jump.errors import SessionError
from phonehome_jump.framing import SentinelFramer


def _canonical() -> SentinelFramer:
    f = SentinelFramer()
    f.canonical, f.where = True, "host 'h'"
    return f


def test_a_raw_terminal_takes_any_single_line_as_it_is():
    f = SentinelFramer()
    assert f.wrap("echo " + "x" * 20000) == "echo " + "x" * 20000 + "\n"
    assert f.wrap("echo a\x15b\n") == "echo a\x15b\n"


def test_a_canonical_terminal_gets_long_first_lines_as_a_here_document():
    f = _canonical()
    assert f.wrap("echo short") == "echo short\n"
    cmd = "echo " + "x" * (SentinelFramer.CANON_DIRECT - 4)      # 1,001 bytes
    wrapped = f.wrap(cmd)
    first, body = wrapped.split("\n", 1)
    assert len(first) < 100 and body.startswith(cmd + "\n")
    assert max(len(line) for line in wrapped.split("\n")) == len(cmd)
    # the limit counts bytes, as the shell reads them
    assert f.wrap("é" * 400) == "é" * 400 + "\n"
    assert f.wrap("é" * 501).count("\n") == 4


def test_a_canonical_terminal_refuses_what_it_would_cut_or_edit():
    f = _canonical()
    assert f.wrap("x" * SentinelFramer.CANON_LINE).count("\n") == 4
    with pytest.raises(SessionError, match=f"has {SentinelFramer.CANON_LINE + 1} bytes") as err:
        f.wrap("x" * (SentinelFramer.CANON_LINE + 1))
    assert str(err.value).startswith("host 'h': ")
    for key, name in (("\x7f", "Backspace"), ("\x15", "Ctrl-U"), ("\x04", "Ctrl-D")):
        with pytest.raises(SessionError, match=name):
            f.wrap(f"echo a{key}b")
    f.check_typed("y" * SentinelFramer.CANON_DIRECT + "\n")
    with pytest.raises(SessionError, match="more than 1000 bytes"):
        f.check_typed("ok\n" + "y" * (SentinelFramer.CANON_DIRECT + 1))
    SentinelFramer().check_typed("y" * 20000)      # a raw terminal: no limit
