"""Streaming masking of exec/terminal output (pure logic)."""

from __future__ import annotations

import pytest

from phonehome_jump.direct import StreamMasker
from phonehome_jump.redact import REDACTOR

SECRET = "s3cr3t-Canary-42"


@pytest.fixture(autouse=True)
def secret():
    REDACTOR.add(SECRET)


@pytest.mark.parametrize("cut", range(1, 40))
def test_a_secret_split_anywhere_is_masked(cut):
    stream = f"before {SECRET} after\n".encode()
    m = StreamMasker()
    out = m.feed(stream[:cut]) + m.feed(stream[cut:]) + m.flush()
    assert out == b"before " + b"*" * len(SECRET) + b" after\n"


def test_text_that_begins_no_secret_passes_at_once():
    m = StreamMasker()
    assert m.feed(b"ls -l\r\n") == b"ls -l\r\n" and not m.pending
    assert m.feed(b"x s3c") == b"x " and m.pending          # might begin the secret
    assert m.feed(b"ond\n") == b"s3cond\n" and not m.pending


def test_bytes_that_are_not_utf8_pass_unchanged():
    m = StreamMasker()
    data = bytes(range(256)) * 3
    assert m.feed(data[:100]) + m.feed(data[100:]) + m.flush() == data


def test_without_secrets_bytes_pass_untouched_and_a_later_secret_is_still_masked(monkeypatch):
    from phonehome_jump import direct
    from phonehome_jump.redact import Redactor

    fresh = Redactor()
    monkeypatch.setattr(direct, "REDACTOR", fresh)
    m = StreamMasker()
    data = "é".encode() + bytes(range(256))
    first, rest = data[:1], data[1:]             # a character cut in two, then binary
    assert m.feed(first) is first and not m.pending      # the very bytes, not a copy
    later = "Canary-9-later"
    fresh.add(later)
    out = m.feed(rest) + m.feed(f" {later}\n".encode()) + m.flush()
    assert first + out == data + b" " + b"*" * len(later) + b"\n"
